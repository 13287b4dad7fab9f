"""The runner's units of work: train the original, train references, run a submission's runs.

Each unit is a frozen dataclass of plain values and `Shared` handles, run by a module-level
function on whichever executor and node take it; it returns plain arrays and dicts and never
writes the results store. A unit sets its own torch threads and seeds, so the same unit gives
the same result on the local pool and on Ray. Each also returns how its time was spent
(`timings`, by harness.compete.timing's parts), measured where each part starts and stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.compete.executors import Executor, Shared, fetch
from harness.config import RecipeConfig, SandboxConfig
from harness.data.loaders import save_split
from harness.learn.evaluation import evaluate
from harness.learn.models import ModelSpec, build_model, load_weights
from harness.learn.training import hardware_description, init_model, torch_threads, train_many, train_model, train_plain, warm_up_plain
from harness.sandbox import fsguard
from harness.sandbox.outcomes import one_line
from harness.statuses import Status

if TYPE_CHECKING:
    from harness.data.task import Task


def _process_age() -> float:
    """Seconds since the kernel started this process (0 where /proc is missing)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


# This worker process's start (spawn, interpreter, torch, this module), reported by its first unit.
# The local pool imports this module as each worker starts; a Ray worker imports it with its first
# unit, so a Ray worker started ahead of work counts its wait too.
_start_cost = [_process_age()]


def _process_start() -> float:
    """The start cost on this process's first unit; 0 on later ones."""
    cost, _start_cost[0] = _start_cost[0], 0.0
    return cost


@dataclass(frozen=True)
class TrainOriginal:
    """The original model, trained by the recipe on the train split."""

    spec: ModelSpec
    recipe: RecipeConfig
    seed: int
    device: str
    threads: int
    train: Shared  # {"image", "age_group"} of the train split
    class_weights: tuple[float, ...]


def train_original(unit: TrainOriginal) -> dict[str, Any]:
    """{"state": {name: array}, "seconds": training wall time, "timings"}."""
    process = _process_start()
    start = time.perf_counter()
    train = fetch(unit.train)
    handoff = time.perf_counter() - start
    with torch_threads(unit.threads):
        model = init_model(unit.spec, unit.seed)
        seconds = train_model(model, train, unit.recipe, class_weights=np.asarray(unit.class_weights),
                              seed=unit.seed, device=unit.device)
    state = {key: value.detach().cpu().numpy() for key, value in model.state_dict().items()}
    return {"state": state, "seconds": seconds, "timings": {"training": seconds, "handoff": handoff, "process": process}}


@dataclass(frozen=True)
class TrainReferences:
    """Reference models `indices` (seeds alongside), retrained on retain and evaluated where trained.

    `path`: "plain" trains one model alone through a DataLoader (its time is a time-cap
    measurement); "loop" trains the models one after another; "vmap" as one ensemble (GPUs).
    """

    spec: ModelSpec
    recipe: RecipeConfig
    indices: tuple[int, ...]
    seeds: tuple[int, ...]
    path: str
    label: str  # the path recorded with each model ("processes" for one-model units on a pool)
    device: str
    threads: int
    retain: Shared  # the retain split (all keys: the plain recipe reads it through a loader)
    evaluation: Shared  # {"forget", "retain", "test"}: {"image", "age_group"} each
    class_weights: tuple[float, ...]
    vmap_chunk: int = 64


def train_references(unit: TrainReferences) -> dict[str, Any]:
    """{"models": [one record per index: confs, accuracies, train_seconds, seed, path, solo, hardware],
    "timings"}."""
    process = _process_start()
    start = time.perf_counter()
    retain, sets = fetch(unit.retain), fetch(unit.evaluation)
    handoff = time.perf_counter() - start
    weights = np.asarray(unit.class_weights)
    hardware = solo_hardware(unit.device) if unit.path == "plain" else hardware_description(unit.device)
    models: list[dict[str, Any]] = []
    evaluation_s = 0.0

    def record(index: int, seed: int, model: torch.nn.Module, seconds: float, solo: bool) -> None:
        nonlocal evaluation_s
        start = time.perf_counter()
        ev = evaluate(model, forget=sets["forget"], retain=sets["retain"], test=sets["test"], device=unit.device)
        evaluation_s += time.perf_counter() - start
        models.append({
            "index": index, "confs": ev.forget_confs, "retain_acc": ev.retain_acc, "test_acc": ev.test_acc,
            "forget_acc": ev.forget_acc, "train_seconds": seconds, "seed": seed, "path": unit.label,
            "solo": solo, "hardware": hardware,
        })

    with torch_threads(unit.threads), _pinned(unit.device, unit.threads):
        if unit.path == "plain":
            warm_up_plain(build_model(unit.spec.name, num_classes=unit.spec.num_classes, in_channels=unit.spec.in_channels),
                          retain, unit.recipe, device=unit.device)  # the cap's basis must not pay torch's one-off costs
            for index, seed in zip(unit.indices, unit.seeds):
                model = init_model(unit.spec, seed)
                seconds = train_plain(model, retain, unit.recipe, class_weights=weights, seed=seed, device=unit.device)
                record(index, seed, model, seconds, True)
        else:
            model = build_model(unit.spec.name, num_classes=unit.spec.num_classes, in_channels=unit.spec.in_channels)
            for result in train_many(unit.spec, retain, unit.recipe, seeds=list(unit.seeds), class_weights=weights,
                                     device=unit.device, path=unit.path, vmap_chunk=unit.vmap_chunk):
                model.load_state_dict(result.state_dict)
                record(unit.indices[result.index], result.seed, model, result.seconds, False)
    training = sum(m["train_seconds"] for m in models)
    return {"models": models, "timings": {"training": training, "evaluation": evaluation_s, "handoff": handoff, "process": process}}


def solo_hardware(device: str) -> str:
    """Where and how a solo retrain was timed: the cap reuses only times taken as runs are scored."""
    where = hardware_description(device)
    return f"{where}, pinned beside busy slots" if torch.device(device).type == "cpu" else where


@contextlib.contextmanager
def _pinned(device: str, threads: int) -> Iterator[None]:
    """On CPUs, hold a sandbox slot and its cores (harness.sandbox.limits) while training, so a
    solo retrain timed for the cap sits on its own cores beside busy neighbours, as a scored run does."""
    if torch.device(device).type != "cpu" or not hasattr(os, "sched_setaffinity"):
        yield
        return
    from harness.sandbox.limits import acquire_uid, cores_for

    before = os.sched_getaffinity(0)
    with acquire_uid(SandboxConfig().first_uid) as slot:
        os.sched_setaffinity(0, set(cores_for(slot.index, threads)))
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)


@dataclass(frozen=True)
class RunSubmission:
    """Runs `run_indices` (seeds alongside) of one submission in one sandboxed worker, then the
    trusted evaluation of each run's weights, on the node that ran them."""

    team: str
    source: bytes  # the submission file
    original: Shared  # the original's safetensors bytes
    data: Shared  # {"retain", "forget", "val"}: full split arrays, as the sandbox reads them
    evaluation: Shared  # {"forget", "retain", "test"}: {"image", "age_group"} each
    data_key: str  # names the data on the node, so each node writes it once
    spec: Any  # harness.sandbox.WorkerSpec with these runs' seeds
    run_indices: tuple[int, ...]
    backend: str
    limits: SandboxConfig
    grace_s: float
    device: str
    threads: int
    work_root: str | None = None  # None: the node's temp folder
    over_cap: float | None = None  # a participant's dry run only: runs past the cap finish up to this x cap
    tag: Any = None  # the caller's label, to match the unit's result to its entry


def run_submission(unit: RunSubmission) -> dict[str, Any]:
    """{"runs": [one record per run, keyed as Store.record_run's arguments: run_index, seed, status,
    reason, seconds, peak_mem_mb, log and, when ok, confs and the accuracies], "timings"}.

    A submission's own failure is a run's status, never an exception; an exception here is the
    harness's or the node's (no sandbox, no disk) and leaves no partial result.
    """
    process = _process_start()
    start = time.perf_counter()
    root = _node_root(unit.work_root)
    data_dir = root / "data" / unit.data_key
    if not (data_dir / "val.npz").exists():  # once per node: the same key is the same data
        data_dir.mkdir(parents=True, exist_ok=True)
        for split, arrays in fetch(unit.data).items():
            save_split(data_dir / f"{split}.npz", arrays)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{_safe(unit.team)}-", dir=root))
    try:
        result = _run_in(work, data_dir, unit, start)
    finally:
        cleanup = time.perf_counter()
        try:
            fsguard.remove(work)  # bounded and iterative: whatever a run left there, however deep
        except OSError:
            pass
    result["timings"]["cleanup"] = time.perf_counter() - cleanup
    result["timings"]["process"] = process
    return result


def drop_node_data(where: tuple[str | None, str]) -> None:
    """Remove the splits run_submission saved on this node under `(work_root, data_key)`; run on
    every node once an entry list is scored, so a cluster's disks do not fill over competitions."""
    work_root, data_key = where
    shutil.rmtree(_node_root(work_root) / "data" / data_key, ignore_errors=True)


def _node_root(work_root: str | None) -> Path:
    return Path(work_root) if work_root else Path(tempfile.gettempdir()) / "unlearning-harness"


def _run_in(work: Path, data_dir: Path, unit: RunSubmission, start: float) -> dict[str, Any]:
    from harness.sandbox import run_worker

    inbox, outbox = work / "inbox", work / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    work.chmod(0o755)  # a sandbox that drops to its own uid reads the inbox through it
    (inbox / "submission.py").write_bytes(unit.source)
    (inbox / "original.safetensors").write_bytes(fetch(unit.original))
    for split in ("retain", "forget", "val"):
        _link_or_copy(data_dir / f"{split}.npz", inbox / f"{split}.npz")
    (inbox / "spec.json").write_text(unit.spec.to_json())
    sets = fetch(unit.evaluation)
    model = build_model(unit.spec.model, num_classes=unit.spec.num_classes, in_channels=unit.spec.in_channels)
    timings = {"handoff": time.perf_counter() - start, "sandbox": 0.0, "submission": 0.0, "evaluation": 0.0}
    runs: dict[int, dict[str, Any]] = {}

    def finish(result) -> None:
        run = {
            "run_index": unit.run_indices[result.index], "seed": result.seed, "status": Status.parse(result.status).value,
            "reason": result.reason or "", "seconds": result.seconds, "peak_mem_mb": result.peak_mem_mb,
            "log": result.log or "",
            "unchanged": bool(result.unchanged),  # not a store column: the runner keeps it as an extra
        }
        timings["submission"] += result.seconds or 0.0
        over = run["status"] == Status.TIMEOUT.value and result.weights_path is not None  # within a dry run's allowance
        if run["status"] == Status.OK.value or over:
            with torch_threads(unit.threads):
                measured = _evaluate_run(model, result.weights_path, sets, unit.device, timings)
            if not (over and "status" in measured):  # an over-cap run stays the organizers' timeout
                run.update(measured)
        runs[result.index] = run

    # on a GPU each run is evaluated as it lands (its weights deleted at once); on CPUs only after
    # the worker is done, so evaluation never takes a core from a timed run
    during = torch.device(unit.device).type != "cpu"
    sandbox_start = time.perf_counter()
    with torch_threads(1):  # the host side only waits while the worker runs
        results = run_worker(inbox, outbox, n_runs=len(unit.run_indices), time_cap_s=unit.spec.time_cap_s,
                             backend=unit.backend, limits=unit.limits, device=unit.device, grace_s=unit.grace_s,
                             on_run=finish if during else None, over_cap=unit.over_cap)
    sandbox_wall = time.perf_counter() - sandbox_start - (timings["evaluation"] if during else 0.0)
    for result in results:
        if result.index not in runs:
            finish(result)
    timings["sandbox"] = sandbox_wall - timings["submission"]  # the worker's start and per-run set-up
    return {"runs": [runs[i] for i in sorted(runs)], "timings": timings}


def _evaluate_run(model: torch.nn.Module, weights_path: Path | None, sets: dict, device: str, timings: dict) -> dict[str, Any]:
    """A run's confidences and accuracies, or bad_weights when it reported success without weights."""
    if weights_path is None:
        return {"status": Status.BAD_WEIGHTS.value, "reason": "the run reported success but returned no weights file"}
    start = time.perf_counter()
    try:
        load_weights(model, weights_path)
        ev = evaluate(model, forget=sets["forget"], retain=sets["retain"], test=sets["test"], device=device)
    except (ValueError, RuntimeError) as exc:  # weights that pass validation yet break evaluation: this run's, never the unit's
        return {"status": Status.BAD_WEIGHTS.value, "reason": one_line(f"the trusted evaluation failed on these weights: {exc}")}
    finally:
        timings["evaluation"] += time.perf_counter() - start
        Path(weights_path).unlink(missing_ok=True)
    return {"confs": ev.forget_confs, "retain_acc": ev.retain_acc, "test_acc": ev.test_acc, "forget_acc": ev.forget_acc,
            "test_losses": ev.test_losses}


def share_evaluation_sets(executor: Executor, task: Task) -> Shared:
    """The forget, retain and test sets as evaluation reads them, shared once per task."""
    sets = {name: labelled(task.arrays(name)) for name in ("forget", "retain", "test")}
    return executor.share(f"evaluation-{task.fingerprint}", sets)


def labelled(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Only what training and evaluation read, so less travels to workers."""
    return {"image": np.ascontiguousarray(arrays["image"]), "age_group": np.asarray(arrays["age_group"])}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40] or "entry"
