import numpy as np
import pytest
import torch
from torch import nn

from harness.errors import HarnessError
from harness.learn.evaluation import Evaluation, evaluate, predict_logits
from harness.learn.models import build_model
from harness.scoring.metric import logit_scaled_confidence


pytestmark = pytest.mark.usefixtures("one_thread")


class PixelLogits(nn.Module):
    """Logits read from the first pixel row, so accuracies and confidences are known exactly."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)  # shows whether evaluation ran in eval mode

    def forward(self, x):
        self.bn(x[:, :1])
        return x[:, 0, 0, :4]


def split(logits, labels):
    logits = np.asarray(logits, dtype=np.float32)
    images = np.zeros((len(logits), 1, 4, 4), dtype=np.float32)
    images[:, 0, 0, :] = logits
    return {"image": images, "age_group": np.asarray(labels, dtype=np.int64)}


RNG = np.random.default_rng(0)
FORGET = split(RNG.normal(size=(13, 4)), RNG.integers(0, 4, 13))
RETAIN = split(np.eye(4)[[0, 1, 2, 3, 0]], [0, 1, 2, 0, 1])  # 3 of 5 right
TEST = split(np.eye(4)[[2, 2, 2, 2]], [2, 2, 2, 1])  # 3 of 4 right
FORGET_IMAGES = {"image": RNG.normal(size=(9, 3, 16, 16)).astype(np.float32), "age_group": np.arange(9) % 4}


@pytest.mark.parametrize("batch_size", [256, 4, 1], ids=["one-batch", "partial-last", "batch-of-one"])
def test_evaluate_confidences_and_accuracies_are_exact(batch_size):
    ev = evaluate(PixelLogits(), forget=FORGET, retain=RETAIN, test=TEST, device="cpu", batch_size=batch_size)
    assert isinstance(ev, Evaluation)
    expected = logit_scaled_confidence(FORGET["image"][:, 0, 0, :], FORGET["age_group"])
    assert ev.forget_confs.dtype == np.float64 and ev.forget_confs.shape == (13,)
    np.testing.assert_array_equal(ev.forget_confs, expected)
    assert (ev.retain_acc, ev.test_acc) == (3 / 5, 3 / 4)
    assert ev.forget_acc == float(np.mean(FORGET["image"][:, 0, 0, :].argmax(1) == FORGET["age_group"]))


def test_evaluate_keeps_the_test_sets_cross_entropy_per_example_for_the_simple_mia():
    ev = evaluate(PixelLogits(), forget=FORGET, retain=RETAIN, test=TEST, device="cpu")
    z = TEST["image"][:, 0, 0, :].astype(np.float64)
    cross_entropy = np.logaddexp.reduce(z, axis=1) - z[np.arange(4), TEST["age_group"]]
    assert ev.test_losses.dtype == np.float64 and ev.test_losses.shape == (4,)
    np.testing.assert_allclose(ev.test_losses, cross_entropy, rtol=1e-6)


@pytest.mark.parametrize("training", [True, False], ids=["train-mode", "eval-mode"])
def test_evaluate_uses_eval_mode_and_restores_the_mode(training):
    model = PixelLogits().train(training)
    evaluate(model, forget=FORGET, retain=RETAIN, test=TEST, device="cpu")
    assert model.training is training
    assert model.bn.num_batches_tracked.item() == 0  # running stats untouched


def test_evaluate_matches_a_plain_forward_on_a_real_model():
    torch.manual_seed(0)
    model = build_model("small-cnn", num_classes=4)
    forget = FORGET_IMAGES
    ev = evaluate(model, forget=forget, retain=forget, test=forget, device="cpu", batch_size=4)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(forget["image"])).numpy()
    np.testing.assert_allclose(ev.forget_confs, logit_scaled_confidence(logits, forget["age_group"]), rtol=1e-5, atol=1e-5)
    assert ev.retain_acc == ev.test_acc == ev.forget_acc == float(np.mean(logits.argmax(1) == forget["age_group"]))


def test_predict_logits_keeps_order():
    logits = predict_logits(PixelLogits(), FORGET["image"], device="cpu", batch_size=5)
    np.testing.assert_array_equal(logits, FORGET["image"][:, 0, 0, :])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"retain": {"image": RETAIN["image"], "age_group": RETAIN["age_group"][:2]}}, "got 5 images but 2 labels"),
        ({"test": {"image": TEST["image"][:, 0], "age_group": TEST["age_group"]}}, r"images \[n, C, H, W\]"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
    ids=["label-count", "3d-images", "zero-batch"],
)
def test_evaluate_rejects_bad_input(kwargs, match):
    args = {"forget": FORGET, "retain": RETAIN, "test": TEST, "batch_size": 256} | kwargs
    with pytest.raises(HarnessError, match=match):
        evaluate(PixelLogits(), device="cpu", **args)


def test_evaluate_leaves_a_trainable_model_in_the_default_layout():
    model = build_model("small-cnn", num_classes=4)
    evaluate(model, forget=FORGET_IMAGES, retain=FORGET_IMAGES, test=FORGET_IMAGES, device="cpu")
    weight = model.features[0].weight
    assert not weight.is_inference() and weight.is_contiguous()
    model.train()(torch.from_numpy(FORGET_IMAGES["image"])).sum().backward()
    assert weight.grad is not None
