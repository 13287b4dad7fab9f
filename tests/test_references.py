import dataclasses
import json

import numpy as np
import pytest
import torch

import harness.compete.references as references_module
from harness.compete.references import (
    References,
    export_references,
    import_references,
    load_references,
    measure_retrain_time,
    references_meta,
    train_references,
)
from harness.compete.units import solo_hardware
from harness.config import ForgetConfig, ModelConfig, RecipeConfig, ReferencesConfig, TaskConfig
from harness.data.task import build_task
from harness.errors import HarnessError
from harness.learn.training import hardware_description

TASK = build_task(TaskConfig(options={"n_persons": 30, "images_per_person": [4, 6]}, forget=ForgetConfig(by="person", count=3)))
MODEL = ModelConfig(name="small-cnn")
RECIPE = RecipeConfig(epochs=1, lr=1e-3, weight_decay=0.0, batch_size=32)
REFS = ReferencesConfig(n_models=3, seed=100, training_path="loop", solo_first=1)


pytestmark = pytest.mark.usefixtures("one_thread")


def train(cache_dir, **changes):
    refs_cfg = dataclasses.replace(REFS, **changes)
    return train_references(TASK, model_cfg=MODEL, recipe=RECIPE, refs_cfg=refs_cfg, device="cpu",
                            cache_dir=cache_dir, progress=False)


def model_files(cache_dir):
    return {p.name: p.stat().st_mtime_ns for p in (cache_dir / "references").glob("*/model_*.npz")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    torch.set_num_threads(1)
    return cache_dir, train(cache_dir)


def test_train_references_shapes_seeds_and_flags(trained):
    _, refs = trained
    n_forget = len(TASK.arrays("forget")["age_group"])
    assert isinstance(refs, References)
    assert refs.confs.shape == (3, n_forget) and refs.confs.dtype == np.float64
    for acc in (refs.retain_acc, refs.test_acc, refs.forget_acc):
        assert acc.shape == (3,) and np.all((acc >= 0) & (acc <= 1))
    assert np.all(refs.train_seconds > 0)
    assert refs.seeds.tolist() == [100, 101, 102]
    assert refs.solo.tolist() == [True, False, False]
    assert refs.paths.tolist() == ["plain", "loop", "loop"] and refs.path_used == "plain+loop"
    # the solo model's time serves the cap: it says it was timed pinned beside busy slots, as runs are
    assert refs.hardware.tolist() == [solo_hardware("cpu"), hardware_description("cpu"), hardware_description("cpu")]
    assert not np.array_equal(refs.confs[0], refs.confs[1])  # each model its own seed


def test_train_references_rerun_loads_the_cache(trained):
    cache_dir, refs = trained
    before = model_files(cache_dir)
    again = train(cache_dir)
    assert model_files(cache_dir) == before
    np.testing.assert_array_equal(again.confs, refs.confs)
    np.testing.assert_array_equal(again.train_seconds, refs.train_seconds)


def test_train_references_resumes_only_missing_models(tmp_path, trained):
    _, refs = trained
    first = train(tmp_path)
    folder = tmp_path / "references" / first.cache_key
    (folder / "model_00001.npz").unlink()
    kept = (folder / "model_00002.npz").stat().st_mtime_ns
    again = train(tmp_path)
    assert (folder / "model_00002.npz").stat().st_mtime_ns == kept
    np.testing.assert_array_equal(again.confs, refs.confs)  # the retrained model is the same model


def test_train_references_more_models_reuse_the_first(trained, tmp_path):
    cache_dir, refs = trained
    target = tmp_path / "cache"
    target.mkdir()
    import_references(export_references(refs, tmp_path / "refs.npz"), target)
    before = model_files(target)
    more = train(target, n_models=4)
    after = model_files(target)
    assert {name: after[name] for name in before} == before and len(after) == 4
    np.testing.assert_array_equal(more.confs[:3], refs.confs)
    assert more.seeds.tolist() == [100, 101, 102, 103]


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"refs_cfg": dataclasses.replace(REFS, n_models=8, training_path="vmap", workers=3)}, True),
        ({"refs_cfg": dataclasses.replace(REFS, seed=7)}, False),
        ({"recipe": dataclasses.replace(RECIPE, epochs=2)}, False),
        ({"model_cfg": ModelConfig(name="resnet18")}, False),
        ({"model_cfg": dataclasses.replace(MODEL, checkpoint="original.pth")}, True),
    ],
    ids=["n-and-path", "seed", "recipe", "model", "checkpoint"],
)
def test_references_meta_key_tracks_what_changes_training(change, same):
    args = {"model_cfg": MODEL, "recipe": RECIPE, "refs_cfg": REFS} | change
    base = references_meta(TASK, model_cfg=MODEL, recipe=RECIPE, refs_cfg=REFS, device="cpu")
    other = references_meta(TASK, device="cpu", **args)
    assert (other["cache_key"] == base["cache_key"]) is same


def test_references_meta_key_tracks_device_type_but_portable_key_does_not():
    cpu = references_meta(TASK, model_cfg=MODEL, recipe=RECIPE, refs_cfg=REFS, device="cpu")
    cuda = references_meta(TASK, model_cfg=MODEL, recipe=RECIPE, refs_cfg=REFS, device="cuda:0")
    assert cpu["cache_key"] != cuda["cache_key"] and cpu["portable_key"] == cuda["portable_key"]


def test_export_then_import_round_trips(trained, tmp_path):
    _, refs = trained
    path = export_references(refs, tmp_path / "out" / "refs.npz")
    key = import_references(path, tmp_path / "cache")
    assert key == refs.cache_key
    loaded = load_references(tmp_path / "cache" / "references" / key)
    for field in ("confs", "retain_acc", "test_acc", "forget_acc", "train_seconds", "seeds", "paths", "solo", "hardware"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(refs, field))
    assert loaded.meta["imported_from"] == str(path)
    assert train(tmp_path / "cache").cache_key == key  # found, not retrained


def test_export_references_accepts_a_cache_folder(trained, tmp_path):
    cache_dir, refs = trained
    path = export_references(cache_dir / "references" / refs.cache_key, tmp_path / "refs.npz")
    np.testing.assert_array_equal(load_references(path).confs, refs.confs)


def test_import_references_stands_in_for_another_device(trained, tmp_path, monkeypatch):
    """Organizers' references (another torch/device) are used when the portable key matches."""
    _, refs = trained
    monkeypatch.setattr(references_module.torch, "__version__", "0.0-elsewhere")
    elsewhere = train(tmp_path / "elsewhere")
    monkeypatch.undo()
    path = export_references(elsewhere, tmp_path / "refs.npz")
    cache_dir = tmp_path / "cache"
    import_references(path, cache_dir)
    used = train(cache_dir)
    assert used.cache_key == elsewhere.cache_key != refs.cache_key
    assert len(model_files(cache_dir)) == 3  # nothing trained locally


def test_import_references_rejects_altered_metadata(trained, tmp_path):
    _, refs = trained
    path = export_references(refs, tmp_path / "refs.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    meta["inputs"]["seed"] = 5
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(HarnessError, match="does not hash to its key"):
        import_references(path, tmp_path / "cache")


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "do not exist"), (b"junk", "is not an export of export_references")],
    ids=["missing", "not-npz"],
)
def test_load_references_rejects_bad_files(tmp_path, content, match):
    path = tmp_path / "refs.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(HarnessError, match=match):
        load_references(path)


def test_train_references_needs_two_models(tmp_path):
    with pytest.raises(HarnessError, match=r"references.n_models must be at least 2 \(the metric compares two distributions\), got 1"):
        train(tmp_path, n_models=1)


def test_measure_retrain_time_reuses_solo_references(trained):
    _, refs = trained
    median, times, hardware = measure_retrain_time(TASK, model_cfg=MODEL, recipe=RECIPE, device="cpu", n=1,
                                                   seed=100, references=refs)
    assert times == [refs.train_seconds[0]] and median == times[0]
    assert hardware == solo_hardware("cpu")


def test_measure_retrain_time_ignores_solo_times_taken_alone(trained):
    """A solo model timed alone (an older harness) is not how runs are scored: it is timed again."""
    _, refs = trained
    alone = dataclasses.replace(refs, hardware=np.array([hardware_description("cpu")] * 3))
    _, times, hardware = measure_retrain_time(TASK, model_cfg=MODEL, recipe=RECIPE, device="cpu", n=1, references=alone)
    assert times[0] != refs.train_seconds[0] and "1 of 1 timed alone in the driver" in hardware


def test_measure_retrain_time_trains_what_is_missing(trained):
    _, refs = trained
    median, times, hardware = measure_retrain_time(TASK, model_cfg=MODEL, recipe=RECIPE, device="cpu", n=2, references=refs)
    assert "1 of 2 timed alone in the driver" in hardware
    assert len(times) == 2 and times[0] == refs.train_seconds[0] and times[1] > 0
    assert median == pytest.approx(np.median(times))


def test_measure_retrain_time_ignores_other_hardware(trained):
    _, refs = trained
    elsewhere = dataclasses.replace(refs, hardware=np.array(["another machine"] * 3))
    _, times, _ = measure_retrain_time(TASK, model_cfg=MODEL, recipe=RECIPE, device="cpu", n=1, references=elsewhere)
    assert times[0] != refs.train_seconds[0]


def test_train_references_processes_match_the_loop(trained, tmp_path):
    """Workers train and evaluate with one thread, as the loop did here: the same numbers."""
    _, refs = trained
    pooled = train(tmp_path, training_path="processes", workers=2)
    assert pooled.paths.tolist() == ["plain", "processes", "processes"] and pooled.path_used == "plain+processes"
    np.testing.assert_array_equal(pooled.confs, refs.confs)
    np.testing.assert_array_equal(pooled.retain_acc, refs.retain_acc)


def test_train_references_vmap_units_train_chunks(trained, tmp_path):
    """The GPU path, here on the CPU: vmap chunks of two models per unit, each model recorded once
    and as good as the loop's (vmap sums float operations in another order: close, not equal)."""
    _, refs = trained
    chunked = train(tmp_path, training_path="vmap", vmap_chunk=2, n_models=4)
    assert chunked.paths.tolist() == ["plain", "vmap", "vmap", "vmap"]
    assert chunked.seeds.tolist() == [100, 101, 102, 103]
    np.testing.assert_allclose(chunked.confs[:3], refs.confs, atol=0.05)


def test_train_references_on_a_given_executor_reuses_its_pool(trained, tmp_path):
    from harness.compete.executors import make_executor
    from harness.config import ExecutorConfig

    _, refs = trained
    with make_executor(ExecutorConfig(workers=2)) as executor:
        first = train_references(TASK, model_cfg=MODEL, recipe=RECIPE, refs_cfg=dataclasses.replace(REFS, training_path="processes"),
                                 device="cpu", cache_dir=tmp_path, progress=False, executor=executor)
        pool = executor._pool
        oracle = train_references(TASK, model_cfg=MODEL, recipe=RECIPE,
                                  refs_cfg=dataclasses.replace(REFS, training_path="processes", seed=900, solo_first=0),
                                  device="cpu", cache_dir=tmp_path, progress=False, executor=executor)
        assert executor._pool is pool  # one pool for every unit of a competition
    np.testing.assert_array_equal(first.confs, refs.confs)
    assert oracle.seeds.tolist() == [900, 901, 902]
