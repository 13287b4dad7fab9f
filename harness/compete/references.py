"""N reference models retrained on the retain set: trained once, cached, exported, imported.

Only what the metric needs is kept per model (forget-set confidences, retain/test/forget
accuracy, train seconds), never the weights. Each finished model is written to the cache at
once, so an interrupted run resumes where it stopped. The cache key hashes what changes the
training (task fingerprint, split, model, recipe, base seed, torch version, device type and
TRAINING_CODE_VERSION); model i always has seed `references.seed + i`, so raising N reuses the
models already trained and the key does not include N.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.compete.executors import Executor, UnitFailure, borrowed
from harness.compete.timing import Timings
from harness.compete.units import TrainReferences, share_evaluation_sets, solo_hardware
from harness.compete.units import train_references as train_reference_models
from harness.config import ExecutorConfig, ModelConfig, RecipeConfig, ReferencesConfig, check_section
from harness.data.loaders import class_weights
from harness.errors import HarnessError
from harness.learn.models import ModelSpec
from harness.learn.training import (
    TRAINING_PATHS,
    choose_path,
    hardware_description,
    init_model,
    timing_threads,
    torch_threads,
    train_plain,
    warm_up_plain,
)

if TYPE_CHECKING:
    from harness.data.task import Task

TRAINING_CODE_VERSION = 1  # bump when training semantics change: cached references become stale
EXPORT_FORMAT = 1

# References field -> its key in a per-model cache file (an export file uses the field names)
_FIELDS = {
    "confs": "confs",
    "retain_acc": "retain_acc",
    "test_acc": "test_acc",
    "forget_acc": "forget_acc",
    "train_seconds": "train_seconds",
    "seeds": "seed",
    "paths": "path",
    "solo": "solo",
    "hardware": "hardware",
}
_PER_MODEL = tuple(_FIELDS.values())


@dataclass(frozen=True)
class References:
    cache_key: str
    confs: np.ndarray  # float64 [N, S] logit-scaled forget-set confidences
    retain_acc: np.ndarray  # float64 [N]
    test_acc: np.ndarray  # float64 [N]
    forget_acc: np.ndarray  # float64 [N]
    train_seconds: np.ndarray  # float64 [N] (vmap: a chunk's time shared among its members)
    seeds: np.ndarray  # int64 [N]
    paths: np.ndarray  # str [N]: the training path of each model (loop, processes, vmap)
    solo: np.ndarray  # bool [N]: trained alone with the plain recipe (a time-cap measurement)
    hardware: np.ndarray  # str [N]: where each model was trained
    meta: dict[str, Any]  # cache_key, portable_key and the inputs they hash

    @property
    def n_models(self) -> int:
        return len(self.seeds)

    @property
    def path_used(self) -> str:
        """The training paths used, in order of first use ("loop+processes" when solo models came first)."""
        return "+".join(dict.fromkeys(str(p) for p in self.paths))


def references_meta(
    task: Task, *, model_cfg: ModelConfig, recipe: RecipeConfig, refs_cfg: ReferencesConfig, device: str
) -> dict[str, Any]:
    """The inputs that change reference training, and their hashes (cache_key, portable_key).

    portable_key leaves out the torch version and device type: imported references that match
    it were trained the same way elsewhere (the organizers' GPUs) and stand in for local ones.
    """
    split = hashlib.sha256()
    for name in ("retain", "forget", "test"):
        split.update(f"{name}:".encode())
        split.update("\n".join(map(str, task.arrays(name)["image_id"])).encode())
    portable = {
        "training_code_version": TRAINING_CODE_VERSION,
        "task_fingerprint": task.fingerprint,
        "split": split.hexdigest()[:16],
        "model": {
            "name": model_cfg.name,
            "num_classes": model_cfg.num_classes,
            "in_channels": int(task.images.shape[1]),
        },
        "recipe": dataclasses.asdict(recipe),
        "seed": refs_cfg.seed,
    }
    inputs = {**portable, "torch": torch.__version__, "device_type": torch.device(device).type}
    return {"cache_key": _digest(inputs), "portable_key": _digest(portable), "inputs": inputs}


def train_references(
    task: Task,
    *,
    model_cfg: ModelConfig,
    recipe: RecipeConfig,
    refs_cfg: ReferencesConfig,
    device: str,
    cache_dir: str | Path,
    progress: bool = True,
    executor: Executor | None = None,
    timings: Timings | None = None,
) -> References:
    """The N = refs_cfg.n_models references: cached ones loaded, missing ones trained and cached.

    Model i trains on the retain set from seed refs_cfg.seed + i (init and batch order). The first
    refs_cfg.solo_first train one at a time by the plain loop, so their times can set the time cap
    (measure_retrain_time); the rest take refs_cfg.training_path. An imported set with the same
    portable key and at least N models is used instead when the local cache is incomplete.
    `timings` collects where the time went (harness.compete.timing).
    """
    timings = timings or Timings()
    check_section(refs_cfg, "references")
    n = refs_cfg.n_models
    meta = references_meta(task, model_cfg=model_cfg, recipe=recipe, refs_cfg=refs_cfg, device=device)
    forget = task.arrays("forget")
    folder = _sets_dir(cache_dir) / meta["cache_key"]
    records = _read_records(folder, range(n), n_forget=len(forget["age_group"]))
    if len(records) < n:
        imported = _imported_stand_in(cache_dir, meta, n)
        if imported is not None:
            return imported
    missing = [i for i in range(n) if i not in records]
    if missing:
        _write_meta(folder, meta)
        bar = _bar(progress, total=n, initial=len(records), desc=f"references on {device}")
        with bar, borrowed(executor, ExecutorConfig(workers=refs_cfg.workers)) as executor:
            for unit, result in run_reference_units(
                executor, task, missing, model_cfg=model_cfg, recipe=recipe, refs_cfg=refs_cfg, device=device,
                timings=timings,
            ):
                timings.merge(result["timings"])
                for model in result["models"]:
                    records[model["index"]] = {key: model[key] for key in _PER_MODEL}
                    with timings.measure("store"):
                        _write_record(folder, model["index"], records[model["index"]])
                    bar.update(1)
    return _assemble(meta, [records[i] for i in range(n)])


def run_reference_units(
    executor: Executor,
    task: Task,
    indices: list[int],
    *,
    model_cfg: ModelConfig,
    recipe: RecipeConfig,
    refs_cfg: ReferencesConfig,
    device: str,
    timings: Timings | None = None,
) -> Iterator[tuple[TrainReferences, dict[str, Any]]]:
    """Train reference models `indices` (seed refs_cfg.seed + i) on `executor`; yield each unit's result.

    Models below refs_cfg.solo_first train first, one model per unit by the plain loop (their times
    set the time cap): on CPUs side by side, each pinned to a slot's cores like a sandboxed run, with
    the rest beside them; on GPUs one at a time. The rest by refs_cfg.training_path: "processes" one model per unit
    (one-thread processes side by side: the fastest on CPUs), "vmap" a chunk of models per unit
    (the fastest on GPUs), "loop" all in one unit. A unit that fails raises: the metric needs all N.
    """
    timings = timings or Timings()
    retain = task.arrays("retain")
    spec = ModelSpec(model_cfg.name, model_cfg.num_classes, int(task.images.shape[1]))
    resources = executor.reference_resources(device)
    common = {
        "spec": spec,
        "recipe": recipe,
        "device": device,
        "threads": executor.unit_threads(resources),
        "retain": executor.share(f"retain-{task.fingerprint}", dict(retain)),  # full: the plain recipe reads it through a loader
        "evaluation": share_evaluation_sets(executor, task),
        "class_weights": tuple(float(w) for w in class_weights(retain["age_group"], model_cfg.num_classes)),
        "vmap_chunk": refs_cfg.vmap_chunk,
    }
    solo = [i for i in indices if i < refs_cfg.solo_first]
    rest = [i for i in indices if i >= refs_cfg.solo_first]
    path = refs_cfg.training_path
    if path == "auto":
        path = choose_path(device, n_models=len(rest))
    if path not in TRAINING_PATHS:
        raise HarnessError(f"references.training_path must be auto, loop, processes or vmap, got {path!r}")
    groups = {"processes": 1, "vmap": refs_cfg.vmap_chunk, "loop": max(1, len(rest))}[path]
    solo_threads = {"threads": timing_threads(device)}  # the time cap's basis: the sandbox's thread count
    solo_units = [TrainReferences(indices=(i,), seeds=(refs_cfg.seed + i,), path="plain", label="plain",
                                  **{**common, **solo_threads}) for i in solo]
    rest_units = [
        TrainReferences(indices=tuple(chunk), seeds=tuple(refs_cfg.seed + i for i in chunk),
                        path="loop" if path == "processes" else path, label=path, **common)
        for chunk in (rest[j:j + groups] for j in range(0, len(rest), groups))
    ]
    if torch.device(device).type == "cpu":
        # as runs are scored: each unit pinned to its slot's cores, every other slot busy (the solo
        # retrains first, side by side, then the rest beside them)
        batches = [[*solo_units, *rest_units]]
    else:  # a GPU is a unit's whole device: a solo retrain has it alone, as a run has
        batches = [[unit] for unit in solo_units] + [rest_units]
    for batch in batches:
        start = time.perf_counter()
        outcomes = executor.submit_all(train_reference_models, batch, resources=resources)
        if len(batch) == 1 and batch[0].path == "plain":  # a solo retrain on a GPU: the other slots wait
            outcomes = list(outcomes)
            timings.add("alone", (time.perf_counter() - start) * (executor.slots(resources) - 1))
        for unit, result in outcomes:
            if isinstance(result, UnitFailure):
                raise HarnessError(f"training reference models {list(unit.indices)} failed ({result.kind}): {result.message}")
            yield unit, result


def measure_retrain_time(
    task: Task,
    *,
    model_cfg: ModelConfig,
    recipe: RecipeConfig,
    device: str,
    n: int = 3,
    seed: int = 0,
    references: References | None = None,
) -> tuple[float, list[float], str]:
    """The time cap's basis: median wall time of retraining one model alone on retain, by the loop.

    Reuses the solo-trained references measured on this hardware (same CPU/GPU, cores and torch
    threads) and trains only the rest, with seeds seed + i. Returns (median, times, hardware).
    """
    if n < 1:
        raise HarnessError(f"time_cap.solo_retrains must be >= 1, got {n}")
    hardware = solo_hardware(device)
    times: list[float] = []
    if references is not None:
        times = [float(t) for t, s, h in zip(references.train_seconds, references.solo, references.hardware) if s and h == hardware]
        times = times[:n]
    if len(times) < n:  # too few solo references (imported ones): timed here, alone
        hardware = f"{hardware_description(device)}, {n - len(times)} of {n} timed alone in the driver"
        retain = task.arrays("retain")
        spec = ModelSpec(model_cfg.name, model_cfg.num_classes, int(task.images.shape[1]))
        weights = class_weights(retain["age_group"], model_cfg.num_classes)
        with torch_threads(timing_threads(device)):
            warm_up_plain(init_model(spec, seed), retain, recipe, device=device)
        for i in range(len(times), n):
            model = init_model(spec, seed + i)
            with torch_threads(timing_threads(device)):
                times.append(train_plain(model, retain, recipe, class_weights=weights, seed=seed + i, device=device))
    return float(np.median(times)), times, hardware


def load_references(path: str | Path) -> References:
    """References from a cache folder (references/<key>/) or a file written by export_references."""
    path = Path(path)
    if path.is_dir():
        meta = _read_meta(path)
        indices = sorted(int(p.stem.split("_")[1]) for p in path.glob("model_*.npz"))
        if indices != list(range(len(indices))) or not indices:
            raise HarnessError(
                f"reference folder {path} holds models {indices[:5]}..., not 0..N-1; rerun training to complete it"
            )
        return _assemble(meta, [_read_record(_model_file(path, i)) for i in indices])
    if not path.is_file():
        raise HarnessError(f"references {path} do not exist; pass a cache folder or an exported .npz file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as exc:
        raise HarnessError(f"references file {path} is not an export of export_references ({exc})") from None
    if meta.get("export_format") != EXPORT_FORMAT:
        raise HarnessError(
            f"references file {path} has export format {meta.get('export_format')!r}; this harness reads "
            f"{EXPORT_FORMAT}; export it again with this version"
        )
    missing = [field for field in _FIELDS if field not in arrays]
    if missing:
        raise HarnessError(f"references file {path} lacks arrays {missing}; export it again")
    n = len(arrays["seeds"])
    records = [{key: arrays[field][i] for field, key in _FIELDS.items()} for i in range(n)]
    return _assemble(meta, records)


def export_references(refs_or_dir: References | str | Path, path: str | Path) -> Path:
    """One .npz file with every array and the metadata (hashes), for organizers to ship."""
    refs = refs_or_dir if isinstance(refs_or_dir, References) else load_references(refs_or_dir)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {key: value for key, value in refs.meta.items() if key != "imported_from"}
    arrays = {field: getattr(refs, field) for field in _FIELDS}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps({**meta, "export_format": EXPORT_FORMAT})), **arrays)
    os.replace(tmp, path)
    return path


def import_references(path: str | Path, cache_dir: str | Path) -> str:
    """Unpack an exported file into the cache, where train_references finds it; returns its key."""
    refs = load_references(path)
    inputs = refs.meta.get("inputs", {})
    if refs.meta.get("cache_key") != _digest(inputs):
        raise HarnessError(
            f"references file {path}: its metadata does not hash to its key {refs.meta.get('cache_key')!r}; "
            "the file was altered; export it again"
        )
    folder = _sets_dir(cache_dir) / refs.cache_key
    _write_meta(folder, {**{k: v for k, v in refs.meta.items() if k != "export_format"}, "imported_from": str(path)})
    for i in range(refs.n_models):
        _write_record(folder, i, _record_of(refs, i))
    return refs.cache_key


def _imported_stand_in(cache_dir: str | Path, meta: dict[str, Any], n: int) -> References | None:
    for meta_file in sorted(_sets_dir(cache_dir).glob("*/meta.json")):
        try:
            other = _read_meta(meta_file.parent)
        except HarnessError:
            continue
        if other.get("imported_from") and other.get("portable_key") == meta["portable_key"]:
            try:
                refs = load_references(meta_file.parent)
            except HarnessError:
                continue
            if refs.n_models >= n:
                print(
                    f"using imported references {refs.cache_key} (from {other['imported_from']}, trained with "
                    f"torch {other['inputs']['torch']} on {other['inputs']['device_type']})",
                    file=sys.stderr,
                )
                return _assemble(refs.meta, [_record_of(refs, i) for i in range(n)])
    return None


def _assemble(meta: dict[str, Any], records: list[dict[str, Any]]) -> References:
    widths = {np.asarray(r["confs"]).shape for r in records}
    if len(widths) != 1:
        raise HarnessError(f"reference models disagree on the forget-set size {sorted(widths)}; clear the cache folder")
    return References(
        cache_key=meta["cache_key"],
        confs=np.stack([np.asarray(r["confs"], dtype=np.float64) for r in records]),
        retain_acc=np.array([r["retain_acc"] for r in records], dtype=np.float64),
        test_acc=np.array([r["test_acc"] for r in records], dtype=np.float64),
        forget_acc=np.array([r["forget_acc"] for r in records], dtype=np.float64),
        train_seconds=np.array([r["train_seconds"] for r in records], dtype=np.float64),
        seeds=np.array([r["seed"] for r in records], dtype=np.int64),
        paths=np.array([str(r["path"]) for r in records]),
        solo=np.array([r["solo"] for r in records], dtype=bool),
        hardware=np.array([str(r["hardware"]) for r in records]),
        meta=meta,
    )


def _record_of(refs: References, i: int) -> dict[str, Any]:
    return {key: getattr(refs, field)[i] for field, key in _FIELDS.items()}


def _sets_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "references"


def _model_file(folder: Path, i: int) -> Path:
    return folder / f"model_{i:05d}.npz"


def _read_records(folder: Path, indices: Iterable[int], *, n_forget: int) -> dict[int, dict[str, Any]]:
    """The cached models among `indices`; a file that cannot be read or has the wrong width is retrained."""
    records = {}
    for i in indices:
        file = _model_file(folder, i)
        if not file.exists():
            continue
        try:
            record = _read_record(file)
        except HarnessError:
            continue
        if np.asarray(record["confs"]).shape == (n_forget,):
            records[i] = record
    return records


def _read_record(file: Path) -> dict[str, Any]:
    try:
        with np.load(file, allow_pickle=False) as data:
            return {key: data[key][()] if data[key].ndim == 0 else data[key] for key in _PER_MODEL}
    except (OSError, ValueError, KeyError) as exc:
        raise HarnessError(f"cached reference {file} cannot be read ({exc}); delete it to retrain") from None


def _write_record(folder: Path, i: int, record: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    file = _model_file(folder, i)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **{key: np.asarray(record[key]) for key in _PER_MODEL})
    os.replace(tmp, file)


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".meta.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, folder / "meta.json")


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"reference folder {folder} has no readable meta.json ({exc}); rerun training") from None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _bar(enabled: bool, *, total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="model", disable=not enabled, file=sys.stderr)
