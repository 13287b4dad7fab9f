"""The bundled baselines (baselines/*.py), the example submission, and harness.compete.baselines."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.compete.baselines import BASELINES, baseline_path
from harness.data.loaders import make_loader
from harness.errors import HarnessError
from harness.learn.models import validate_state_dict

NAMES = [
    "do_nothing",
    "finetune",
    "gradient_ascent",
    "kl_contrastive",
    "neggrad_plus",
    "prune_reinit",
    "random_labels",
    "retrain",
    "rum",
    "salun",
    "scrub",
]
EXAMPLE = Path(__file__).resolve().parent.parent / "submissions" / "example_submission.py"
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]
NUM_CLASSES = 10
SIGNATURE = ["net", "retain_loader", "forget_loader", "val_loader"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_submission_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arrays(n: int, *, rng: np.random.Generator, prototypes: np.ndarray) -> dict[str, np.ndarray]:
    """SplitArrays-like data: each class a noisy copy of its prototype, 0-255 pixels as the organizers fed them."""
    labels = rng.integers(0, NUM_CLASSES, n)
    images = np.clip(128 + 40 * prototypes[labels] + rng.normal(0, 40, (n, 3, 16, 16)), 0, 255)
    return {
        "image": images.astype(np.float32),
        "image_id": np.array([f"img{i}" for i in range(n)]),
        "age_group": labels.astype(np.int64),
        "age": (labels * 8 + rng.integers(0, 8, n)).astype(np.int64),
        "person_id": np.array([f"p{i // 4}" for i in range(n)]),
    }


def _loader(arrays, *, batch_format: str = "dict", seed: int = 0):
    return make_loader(arrays, batch_size=64, shuffle=True, batch_format=batch_format, seed=seed)


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(16), nn.Linear(16, NUM_CLASSES),
    )


@pytest.fixture(scope="module")
def task():
    """321 retain / 65 forget / 60 val examples and an original model trained on retain + forget.

    Retain and forget end in a batch of one example, on which the model's BatchNorm1d cannot train.
    """
    rng = np.random.default_rng(0)
    colours = rng.normal(0, 1.0, (NUM_CLASSES, 3, 1, 1))
    prototypes = colours + np.kron(rng.normal(0, 0.5, (NUM_CLASSES, 3, 4, 4)), np.ones((4, 4)))
    splits = {name: _arrays(n, rng=rng, prototypes=prototypes) for name, n in
              (("retain", 321), ("forget", 65), ("val", 60))}
    torch.manual_seed(0)
    net = _tiny_cnn()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    images = torch.from_numpy(np.concatenate([splits["retain"]["image"], splits["forget"]["image"]]))
    labels = torch.from_numpy(np.concatenate([splits["retain"]["age_group"], splits["forget"]["age_group"]]))
    for _ in range(15):
        for idx in torch.randperm(len(labels)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(net(images[idx]), labels[idx]).backward()
            optimizer.step()
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():  # exact BatchNorm statistics of the train set, so eval-mode losses are settled
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        net(images)
        for m in norms:
            m.momentum = 0.1
    return splits, net


def _run(path: Path, task, *, device: str = "cpu", batch_format: str = "dict", seed: int = 0):
    """Call unlearning() as the worker does: a fresh copy of the original on `device`, in train mode."""
    splits, original = task
    net = copy.deepcopy(original).to(device).train()
    loaders = [_loader(splits[name], batch_format=batch_format, seed=seed) for name in ("retain", "forget", "val")]
    torch.manual_seed(seed)
    returned = _load(path).unlearning(net, *loaders)
    return returned if isinstance(returned, nn.Module) else net


def _forget_loss(net: nn.Module, splits) -> float:
    net = copy.deepcopy(net).cpu().eval()
    with torch.no_grad():
        images = torch.from_numpy(splits["forget"]["image"])
        return F.cross_entropy(net(images), torch.from_numpy(splits["forget"]["age_group"])).item()


def test_baselines_registers_every_file():
    assert BASELINES.names() == NAMES
    assert all(baseline_path(name).is_file() for name in NAMES)


def test_baseline_path_unknown_name_suggests_closest():
    with pytest.raises(HarnessError, match=r"unknown baseline 'neggrad'; did you mean 'neggrad_plus'\? available: "):
        baseline_path("neggrad")


@pytest.mark.parametrize("name", NAMES)
def test_baseline_documents_source_and_hyperparameters(name):
    module = _load(baseline_path(name))
    assert list(inspect.signature(module.unlearning).parameters) == SIGNATURE
    doc = module.__doc__ or ""
    assert "Source:" in doc and "Hyperparameters:" in doc and "Cost:" in doc
    constants = [key for key, value in vars(module).items() if re.fullmatch(r"[A-Z][A-Z0-9_]*", key)
                 and isinstance(value, (int, float, tuple))]
    assert [key for key in constants if key not in doc] == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_unlearning_returns_finite_weights_of_the_same_model(name, device, task):
    _, original = task
    net = _run(baseline_path(name), task, device=device)
    assert next(net.parameters()).device.type == device
    state = {key: value.cpu() for key, value in net.state_dict().items()}
    assert validate_state_dict(original, state) is None
    same = all(torch.equal(state[key], value) for key, value in original.state_dict().items())
    assert same == (name == "do_nothing")


@pytest.mark.parametrize("name", [n for n in NAMES if n != "retrain"])
def test_unlearning_accepts_tuple_batches(name, task):
    _, original = task
    net = _run(baseline_path(name), task, batch_format="tuple")
    assert validate_state_dict(original, {k: v.cpu() for k, v in net.state_dict().items()}) is None


def test_gradient_ascent_raises_forget_loss(task):
    splits, original = task
    net = _run(baseline_path("gradient_ascent"), task)
    assert _forget_loss(net, splits) > _forget_loss(original, splits) + 1e-3


def test_retrain_ignores_the_original_weights(task):
    splits, original = task
    scrambled = copy.deepcopy(original)
    with torch.no_grad():
        for value in scrambled.state_dict().values():
            if value.is_floating_point():
                value.add_(1.0)
    a = _run(baseline_path("retrain"), task)
    b = _run(baseline_path("retrain"), (splits, scrambled))
    assert all(torch.equal(a.state_dict()[key], value) for key, value in b.state_dict().items())


def test_salun_leaves_unsalient_weights_unchanged(task):
    _, original = task
    net = _run(baseline_path("salun"), task)
    before = torch.cat([p.detach().flatten() for p in original.parameters()])
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    unchanged = (before == after).float().mean().item()
    assert unchanged >= 1 - _load(baseline_path("salun")).MASK_RATIO - 1e-3


def test_prune_reinit_keeps_only_the_largest_weights(task, monkeypatch):
    _, original = task
    module = _load(baseline_path("prune_reinit"))
    monkeypatch.setattr(module, "EPOCHS", 0)
    net = copy.deepcopy(original)
    module.unlearning(net, *[_loader(task[0][name]) for name in ("retain", "forget", "val")])
    after_by_name = dict(net.named_parameters())  # prune.remove re-registers weights, so order changes
    for name, before in original.named_parameters():
        after = after_by_name[name]
        if name.endswith("weight") and before.dim() > 1:
            kept = before == after
            assert kept.sum().item() == before.numel() - round(module.PRUNE_AMOUNT * before.numel())
            assert before.abs()[kept].min() >= before.abs()[~kept].max()
        else:
            assert torch.equal(before, after)


def test_example_submission_fine_tunes_in_place(task):
    module = _load(EXAMPLE)
    assert list(inspect.signature(module.unlearning).parameters) == SIGNATURE
    _, original = task
    net = _run(EXAMPLE, task)
    state = net.state_dict()
    assert validate_state_dict(original, state) is None
    assert not all(torch.equal(state[key], value) for key, value in original.state_dict().items())
