import dataclasses
import random

import numpy as np
import pytest
import torch
from torch import nn

from harness.config import RecipeConfig
from harness.errors import HarnessError
from harness.learn.models import ModelSpec
from harness.learn.training import (
    choose_path,
    hardware_description,
    init_model,
    split_seed,
    train_many,
    train_model,
)

SPEC = ModelSpec("small-cnn", num_classes=4, in_channels=3)
RECIPE = RecipeConfig(epochs=2, lr=1e-3, weight_decay=1e-4, batch_size=32)
WEIGHTS = np.array([1.0, 0.5, 2.0, 1.0], dtype=np.float32)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_arrays(n=150, *, size=8, seed=0):
    """Labels readable from the image's mean brightness, so a few epochs learn them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.normal(size=(n, 3, size, size)) * 0.5 + labels[:, None, None, None]
    return {"image": images.astype(np.float32), "age_group": labels.astype(np.int64)}


ARRAYS = make_arrays()


def trained(seed, recipe=RECIPE, arrays=ARRAYS, weights=WEIGHTS):
    model = init_model(SPEC, seed)
    train_model(model, arrays, recipe, class_weights=weights, seed=seed, device="cpu")
    return model


def accuracy(model, arrays):
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(arrays["image"]))
    return float((out.argmax(1).numpy() == arrays["age_group"]).mean())


def max_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_split_seed_is_deterministic_and_distinct():
    a, b = split_seed(7), split_seed(7)
    assert a == b
    assert a.torch != a.data
    assert split_seed(8) != a


@pytest.mark.parametrize("seed", [-1, 1.5, True], ids=["negative", "float", "bool"])
def test_split_seed_rejects_non_seeds(seed):
    with pytest.raises(HarnessError, match="seed must be a non-negative integer"):
        split_seed(seed)


def test_init_model_leaves_the_callers_generators_as_they_were():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    first = draw()
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    init_model(SPEC, 7)
    assert draw() == first


def test_init_model_depends_only_on_seed():
    a, b, c = init_model(SPEC, 1), init_model(SPEC, 1), init_model(SPEC, 2)
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_train_model_is_deterministic_for_a_seed():
    assert max_diff(trained(5).state_dict(), trained(5).state_dict()) == 0.0


def test_train_model_data_order_follows_the_seed():
    """Same init, different training seed: the batch order differs, so do the weights."""
    a, b = init_model(SPEC, 1), init_model(SPEC, 1)
    train_model(a, ARRAYS, RECIPE, class_weights=WEIGHTS, seed=1, device="cpu")
    train_model(b, ARRAYS, RECIPE, class_weights=WEIGHTS, seed=2, device="cpu")
    assert max_diff(a.state_dict(), b.state_dict()) > 0


def test_train_model_learns_and_returns_seconds():
    model = init_model(SPEC, 0)
    before = accuracy(model, ARRAYS)
    seconds = train_model(model, ARRAYS, dataclasses.replace(RECIPE, epochs=4), class_weights=WEIGHTS, seed=0, device="cpu")
    assert seconds > 0
    assert not model.training
    assert model.features[0].weight.is_contiguous()  # back in the default layout after channels-last training
    assert accuracy(model, ARRAYS) > max(before, 0.6)


@pytest.mark.parametrize(
    "recipe",
    [
        dataclasses.replace(RECIPE, optimizer="sgd", lr=0.05, scheduler="none"),
        dataclasses.replace(RECIPE, class_weighted=False),
    ],
    ids=["sgd-no-scheduler", "unweighted"],
)
def test_train_model_recipe_knobs(recipe):
    model = init_model(SPEC, 0)
    train_model(model, ARRAYS, recipe, class_weights=None if not recipe.class_weighted else WEIGHTS, seed=0, device="cpu")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def test_train_model_skips_a_trailing_batch_of_one():
    """BatchNorm cannot train on one example; 65 examples at batch 32 leave one over."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    train_model(model, make_arrays(65), RECIPE, class_weights=WEIGHTS, seed=0, device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arrays": {"image": ARRAYS["image"]}}, "need keys 'image' and 'age_group'"),
        ({"arrays": {"image": ARRAYS["image"][:, 0], "age_group": ARRAYS["age_group"]}}, r"images \[n, C, H, W\]"),
        ({"class_weights": None}, "recipe.class_weighted is true but no class_weights"),
        ({"recipe": dataclasses.replace(RECIPE, epochs=0)}, "recipe needs epochs >= 1"),
        ({"seed": -3}, "seed must be a non-negative integer"),
    ],
    ids=["missing-labels", "3d-images", "no-class-weights", "zero-epochs", "negative-seed"],
)
def test_train_model_rejects_bad_input(kwargs, match):
    args = {"arrays": ARRAYS, "recipe": RECIPE, "class_weights": WEIGHTS, "seed": 0} | kwargs
    with pytest.raises(HarnessError, match=match):
        train_model(init_model(SPEC, 0), args["arrays"], args["recipe"], class_weights=args["class_weights"],
                    seed=args["seed"], device="cpu")


@pytest.mark.parametrize(
    ("device", "n_models", "cores", "path"),
    [("cuda", 8, 2, "vmap"), ("cpu", 8, 2, "processes"), ("cpu", 8, 1, "loop"), ("cuda", 1, 16, "loop")],
    ids=["cuda", "multi-core-cpu", "one-core-cpu", "one-model"],
)
def test_choose_path_by_device(device, n_models, cores, path):
    assert choose_path(device, n_models=n_models, cores=cores) == path


def test_hardware_description_names_cpu_and_threads():
    text = hardware_description("cpu")
    assert "cores" in text and "torch 1 threads" in text


SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def loop_states():
    """Trained with one thread, as a process of the pool is: thread count changes float rounding."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [trained(seed).state_dict() for seed in SEEDS]
    finally:
        torch.set_num_threads(threads)


def by_index(results):
    return sorted(results, key=lambda r: r.index)


def test_train_many_loop_matches_train_model(loop_states):
    results = by_index(train_many(SPEC, ARRAYS, RECIPE, seeds=SEEDS, class_weights=WEIGHTS, device="cpu", path="loop"))
    assert [(r.index, r.seed, r.path) for r in results] == [(0, 11, "loop"), (1, 12, "loop"), (2, 13, "loop")]
    assert all(max_diff(r.state_dict, s) == 0.0 for r, s in zip(results, loop_states))


def test_train_many_processes_equal_one_thread_loop(loop_states):
    results = by_index(train_many(SPEC, ARRAYS, RECIPE, seeds=SEEDS, class_weights=WEIGHTS, device="cpu",
                                  path="processes", workers=2))
    assert [r.path for r in results] == ["processes"] * 3
    assert all(max_diff(r.state_dict, s) == 0.0 for r, s in zip(results, loop_states))


@pytest.mark.parametrize("chunk", [3, 2], ids=["one-chunk", "chunked"])
def test_train_many_vmap_members_match_loop(loop_states, chunk):
    """Each member trains on its own init and batch order: the loop's model up to float rounding."""
    results = by_index(train_many(SPEC, ARRAYS, RECIPE, seeds=SEEDS, class_weights=WEIGHTS, device="cpu",
                                  path="vmap", vmap_chunk=chunk))
    assert [(r.index, r.seed, r.path) for r in results] == [(0, 11, "vmap"), (1, 12, "vmap"), (2, 13, "vmap")]
    for result, state in zip(results, loop_states):
        assert result.state_dict.keys() == state.keys()
        assert result.state_dict["features.1.num_batches_tracked"].item() == state["features.1.num_batches_tracked"].item()
        assert max_diff(result.state_dict, state) < 1e-4


def test_train_many_vmap_unweighted_matches_loop():
    recipe = dataclasses.replace(RECIPE, class_weighted=False, epochs=1)
    (result,) = train_many(SPEC, ARRAYS, recipe, seeds=[4], class_weights=None, device="cpu", path="vmap")
    assert max_diff(result.state_dict, trained(4, recipe, weights=None).state_dict()) < 1e-4


def test_train_many_auto_records_the_path():
    (result,) = train_many(SPEC, ARRAYS, dataclasses.replace(RECIPE, epochs=1), seeds=[0], class_weights=WEIGHTS,
                           device="cpu")
    assert result.path == "loop"  # one model: nothing to run side by side


def test_train_many_no_seeds_yields_nothing():
    assert list(train_many(SPEC, ARRAYS, RECIPE, seeds=[], class_weights=WEIGHTS, device="cpu", path="vmap")) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"path": "threads"}, "training path must be 'auto' or one of loop, processes, vmap, got 'threads'"),
        ({"vmap_chunk": 0}, "vmap_chunk and workers must be >= 1"),
        ({"arrays": {"image": ARRAYS["image"][:1], "age_group": ARRAYS["age_group"][:1]}}, "with n >= 2"),
        ({"recipe": dataclasses.replace(RECIPE, optimizer="rmsprop")}, "recipe.optimizer must be 'adam' or 'sgd'"),
        ({"class_weights": None}, "recipe.class_weighted is true but no class_weights"),
    ],
    ids=["unknown-path", "zero-chunk", "one-example", "unknown-optimizer", "no-class-weights"],
)
def test_train_many_rejects_bad_input_before_training(kwargs, match):
    args = {"arrays": ARRAYS, "path": "processes", "vmap_chunk": 64, "recipe": RECIPE, "class_weights": WEIGHTS} | kwargs
    with pytest.raises(HarnessError, match=match):
        train_many(SPEC, args["arrays"], args["recipe"], seeds=[0, 1], class_weights=args["class_weights"],
                   device="cpu", path=args["path"], vmap_chunk=args["vmap_chunk"])


def count_parameters(model):
    return sum(p.numel() for p in model.parameters()), model.training


@pytest.mark.parametrize("path", ["loop", "vmap"])
def test_train_many_finish_runs_on_each_trained_model(path):
    results = list(train_many(SPEC, ARRAYS, dataclasses.replace(RECIPE, epochs=1), seeds=[1, 2], class_weights=WEIGHTS,
                              device="cpu", path=path, finish=count_parameters, keep_weights=False))
    expected = sum(p.numel() for p in SPEC().parameters())
    assert [r.output for r in results] == [(expected, False)] * 2
    assert all(r.state_dict is None for r in results)


def test_train_plain_runs_the_recipe_through_a_loader_deterministically():
    from harness.learn.models import build_model
    from harness.learn.training import train_plain

    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.normal(size=(70, 3, 16, 16)).astype(np.float32),
        "image_id": np.array([f"i{i}" for i in range(70)]),
        "age_group": rng.integers(0, 10, size=70),
        "age": rng.integers(0, 80, size=70),
        "person_id": np.array([f"p{i}" for i in range(70)]),
    }
    recipe = RecipeConfig(epochs=2, lr=1e-3, batch_size=32)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("small-cnn")
        seconds = train_plain(model, arrays, recipe, class_weights=torch.ones(10), seed=3, device="cpu")
        assert seconds > 0 and not model.training
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
