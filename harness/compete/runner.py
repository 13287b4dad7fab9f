"""One competition end to end.

task -> original model -> N references (cached) -> time cap -> each submission's N sandboxed runs
-> trusted evaluation of each run -> store (committed per run) -> score -> leaderboard.

Every stage is resumable: the original, the references and the time-cap measurement are cached
by content hash, and finished runs are found in the store, so a killed runner picks up where it
stopped without redoing or losing anything.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import torch

from harness import __version__
from harness.compete.baselines import BASELINES, baseline_path
from harness.compete.budget_probe import write_probe
from harness.compete.executors import EXECUTORS, Executor, UnitFailure, borrowed, make_executor
from harness.compete.references import References, measure_retrain_time, train_references
from harness.compete.timing import Timings
from harness.compete.units import (
    RunSubmission,
    TrainOriginal,
    drop_node_data,
    labelled,
    run_submission,
    share_evaluation_sets,
    train_original,
)
from harness.config import Config, check_config, resolve_device
from harness.data.loaders import class_weights as compute_class_weights
from harness.data.task import Task, build_task
from harness.errors import HarnessError, SubmissionError
from harness.learn.models import ModelSpec, load_checkpoint, save_weights
from harness.learn.training import hardware_description, hardware_identity, init_model, timing_threads
from harness.results.lock import writer_lock
from harness.results.store import LEADERBOARDS, Store, file_version
from harness.sandbox import WorkerSpec, resolve_backend
from harness.sandbox.backends import remove_stale
from harness.timefmt import seconds_text
from harness.sandbox.protocol import PROTOCOL_VERSION
from harness.scoring.scores import METRIC_VERSION, TEST_LOSSES_EXTRA, Score, record_entry_score, reference_noise_floor, score_run_records, select_runs
from harness.statuses import Status

ORACLE_SEED_OFFSET = 100_000  # the oracle's models never share a seed with the references
BASELINE_PREFIX = "baseline:"  # a baseline's team; no submission file may take it
DRY_RUNS_DIR = "dry-runs"  # runs/<name>/dry-runs/: dry runs' own store, apart from the competition's
DRY_RUN_LOGS = "logs"  # runs/<name>/dry-runs/logs/<team>/run_<i>.log: kept, unlike the units' work folders
UNCHANGED_RUNS = "unchanged_runs"  # extra: run indices whose weights came back equal to the original's


@dataclass(frozen=True)
class Entry:
    """One thing to score: a participant's file, a baseline, or the retrain oracle."""

    team: str
    path: Path
    kind: str  # "submission" | "baseline" | "oracle"
    exempt: bool  # outside the time cap; scored and listed, never ranked

    @property
    def version(self) -> str:
        return file_version(self.path)


@dataclass
class Prepared:
    """Everything a submission is scored against, for one leaderboard."""

    cfg: Config
    leaderboard: str
    device: str
    task: Task
    run_dir: Path
    original_path: Path
    references: References
    time_cap_s: float
    time_cap_basis: dict
    noise_floor: float | None


def run_seeds(cfg: Config, leaderboard: str, n_runs: int) -> list[int]:
    """The same per-run seeds for every submission, so they are compared on equal terms."""
    base = cfg.seed * 1_000_003 + (0 if leaderboard == "public" else 500_000) + 7_000
    return [base + i for i in range(n_runs)]


def board_task(cfg: Config, leaderboard: str) -> Task:
    """A leaderboard's task: the same train/val/test on both boards; the private one forgets a set
    disjoint from the public one (harness.data.splits.draw_private_forget) or fails naming the key."""
    if leaderboard not in LEADERBOARDS:
        raise HarnessError(f"unknown leaderboard {leaderboard!r}; use one of {', '.join(LEADERBOARDS)}")
    return build_task(cfg.task, board=leaderboard)


def forget_overlap(public: Task, private: Task) -> dict:
    """How the two boards' forget sets relate: their sizes and the images they share (none, by construction)."""
    ids = {board: set(task.arrays("forget")["image_id"]) for board, task in (("public", public), ("private", private))}
    shared = sorted(ids["public"] & ids["private"])
    if shared:
        raise HarnessError(
            f"the public and private forget sets share {len(shared)} images (e.g. {shared[0]!r}); "
            "set task.forget.private_index_file to images outside the public forget set"
        )
    return {"public": len(ids["public"]), "private": len(ids["private"]), "shared": 0}


def baseline_team(name: str) -> str:
    return f"{BASELINE_PREFIX}{name}"


def discover_entries(
    cfg: Config,
    *,
    submissions_dir: str | Path | None = None,
    baselines: tuple[str, ...] | None = None,
    all_baselines: bool = False,
) -> list[Entry]:
    """Every entry to score, teams unique across baselines, the oracle and submissions."""
    entries: list[Entry] = []
    names = BASELINES.names() if all_baselines else (cfg.submissions.baselines if baselines is None else baselines)
    for name in names:
        kind = "oracle" if name in cfg.submissions.reference_baselines else "baseline"
        entries.append(Entry(team=baseline_team(name), path=baseline_path(name), kind=kind, exempt=kind == "oracle"))
    folder = submissions_dir if submissions_dir is not None else cfg.submissions.dir
    if folder is not None:
        folder = Path(folder)
        if submissions_dir is not None and not folder.is_dir():
            raise SubmissionError(f"submissions folder {folder} does not exist; pass a folder of .py files")
        if folder.is_dir():
            for path in sorted(folder.glob("*.py")):
                if path.name.startswith("_"):
                    continue
                if path.stem.startswith(BASELINE_PREFIX):
                    raise SubmissionError(
                        f"submission file {path} is named like a baseline's team {path.stem!r}; rename the file "
                        f"(a team name must not start with {BASELINE_PREFIX!r})"
                    )
                entries.append(Entry(team=path.stem, path=path, kind="submission", exempt=False))
    seen: set[str] = set()
    for entry in entries:
        if entry.team in seen:
            raise SubmissionError(f"team {entry.team!r} is listed twice; list each baseline once in submissions.baselines")
        seen.add(entry.team)
    return entries


def prepare(
    cfg: Config,
    *,
    leaderboard: str = "public",
    executor: Executor | None = None,
    timings: Timings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    task: Task | None = None,
    base: Prepared | None = None,
) -> Prepared:
    """Build the task, the original model, the references and the time cap (all cached); the
    training runs as units on `executor` (a local pool by cfg.executor when None).

    `task`: the board's task when already built (board_task). `base`: another board of the same
    competition (the public one): its original model and time cap are this board's too, so a file
    is never held to two caps measured apart, nor scored against two originals.
    """
    with borrowed(executor, cfg.executor) as executor:
        return _prepare(cfg, leaderboard, executor, timings or Timings(), progress, log, task, base)


def _prepare(cfg: Config, leaderboard: str, executor: Executor, timings: Timings, progress: bool,
             log: Callable[[str], None], task: Task | None, base: Prepared | None) -> Prepared:
    device = units_device(cfg)
    run_dir = cfg.run_dir
    cache_dir = cfg.cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    if task is None:
        with timings.measure("task"):
            task = board_task(cfg, leaderboard)
    log(f"task ({leaderboard}): {task.description}")

    refs_cfg = cfg.references
    if base is None:
        original_path = _original(cfg, task, device=device, cache_dir=cache_dir, executor=executor, timings=timings, log=log)
    else:
        if list(base.task.arrays("train")["image_id"]) != list(task.arrays("train")["image_id"]):
            raise HarnessError(f"the {leaderboard} board's train split differs from the {base.leaderboard} board's; "
                               "both boards must share train, val and test")
        original_path = base.original_path
        refs_cfg = replace(refs_cfg, solo_first=0)  # the cap is measured once per competition, on the base board

    refs = train_references(
        task,
        model_cfg=cfg.model,
        recipe=cfg.recipe,
        refs_cfg=refs_cfg,
        device=device,
        cache_dir=cache_dir,
        progress=progress,
        executor=executor,
        timings=timings,
    )
    if base is None:
        provisional = Prepared(cfg=cfg, leaderboard=leaderboard, device=device, task=task, run_dir=run_dir,
                               original_path=original_path, references=refs, time_cap_s=0.0, time_cap_basis={},
                               noise_floor=None)
        time_cap_s, basis = _time_cap(cfg, task, device=device, cache_dir=cache_dir, refs=refs, log=log,
                                      noise=lambda n: _noise_run_times(provisional, executor, n))
    else:
        time_cap_s, basis = base.time_cap_s, {**base.time_cap_basis, "measured_for": base.leaderboard}
        log(f"time cap: {seconds_text(time_cap_s)} per run, the {base.leaderboard} board's (one cap per competition)")
    return Prepared(
        cfg=cfg,
        leaderboard=leaderboard,
        device=device,
        task=task,
        run_dir=run_dir,
        original_path=original_path,
        references=refs,
        time_cap_s=time_cap_s,
        time_cap_basis=basis,
        noise_floor=reference_noise_floor(refs.confs),
    )


def units_device(cfg: Config) -> str:
    """Where units compute: the driver's choice, or CUDA when remote units (Ray's) ask for GPUs the driver may lack."""
    if cfg.device == "auto" and EXECUTORS.get(cfg.executor.kind).remote and cfg.executor.gpus_per_unit > 0:
        return "cuda"
    return resolve_device(cfg.device)


def _original(cfg: Config, task: Task, *, device: str, cache_dir: Path, executor: Executor, timings: Timings, log) -> Path:
    """The provided checkpoint, validated, or the recipe's model trained on train (cached)."""
    spec = ModelSpec(cfg.model.name, cfg.model.num_classes, int(task.images.shape[1]))
    model = init_model(spec, cfg.seed)  # a seeded init: the same config gives the same original
    if cfg.model.checkpoint:
        load_checkpoint(model, cfg.model.checkpoint)
        key = file_version(Path(cfg.model.checkpoint))
    else:
        key = hashlib.sha256(
            json.dumps(
                [task.fingerprint, cfg.model.__dict__, cfg.recipe.__dict__, cfg.seed, torch.__version__, device.split(":")[0]],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:16]
    path = cache_dir / f"original-{key}.safetensors"
    if path.exists():
        return path
    if not cfg.model.checkpoint:
        log(f"training the original model ({cfg.model.name}, {cfg.recipe.epochs} epochs) on {device}")
        train = task.arrays("train")
        resources = executor.default_resources(device)
        unit = TrainOriginal(
            spec=spec, recipe=cfg.recipe, seed=cfg.seed, device=device,
            threads=timing_threads(device),  # one thread on CPUs: bitwise reproducible
            train=executor.share(f"train-{task.fingerprint}", labelled(train)),
            class_weights=tuple(float(w) for w in compute_class_weights(train["age_group"], cfg.model.num_classes)),
        )
        start = time.perf_counter()
        [(_, result)] = executor.submit_all(train_original, [unit], resources=resources)
        timings.add("alone", (time.perf_counter() - start) * (executor.slots(resources) - 1))
        if isinstance(result, UnitFailure):
            raise HarnessError(f"training the original model failed ({result.kind}): {result.message}")
        timings.merge(result["timings"])
        model.load_state_dict({key: torch.from_numpy(value) for key, value in result["state"].items()})
    save_weights(model, path)
    return path


def time_cap_file(cache_dir: Path, refs_key: str, identity: dict) -> Path:
    """Where a measured cap is cached: by what the retrains trained (the references' key: task,
    model, recipe, torch, device type) and by the hardware they ran on (CPU model, cores, CPU set,
    torch threads, accelerator)."""
    hardware = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"time-cap-{refs_key}-{hardware}.json"




def _time_cap(cfg: Config, task: Task, *, device: str, cache_dir: Path, refs: References, log,
              noise: Callable[[int], list[float]] | None = None) -> tuple[float, dict]:
    """The cap: the budget's share of the median solo retrain, widened by the p99 spread of a fixed
    submission's run times (both measured under scoring's conditions, cached per hardware).
    `noise(n)`: n run times of the fixed submission, timed as scoring times runs."""
    if cfg.time_cap.seconds is not None:
        return float(cfg.time_cap.seconds), {"fixed_s": cfg.time_cap.seconds, "time_cap_s": float(cfg.time_cap.seconds)}
    identity = hardware_identity(device)
    basis_path = time_cap_file(cache_dir, refs.cache_key, identity)
    if basis_path.exists():
        basis, how = json.loads(basis_path.read_text()), "cached"
    else:
        elsewhere = sorted(p for p in cache_dir.glob(f"time-cap-{refs.cache_key}*.json") if p != basis_path)
        if elsewhere:
            log(f"time cap: {len(elsewhere)} cap(s) cached for this task on other hardware (e.g. {_measured_on(elsewhere[0])}) "
                f"are not used here; measuring on {hardware_description(device)}")
        median, times, hardware = measure_retrain_time(
            task, model_cfg=cfg.model, recipe=cfg.recipe, seed=cfg.references.seed, device=device,
            n=cfg.time_cap.solo_retrains, references=refs,
        )
        basis, how = {"median_retrain_s": median, "retrain_times_s": times, "hardware": hardware,
                      "hardware_identity": identity}, "measured now"
        basis_path.write_text(json.dumps(basis))
    n_noise, share = cfg.time_cap.noise_runs, cfg.time_cap.share(cfg.recipe.epochs)
    probe = f"a fine-tune of the budget's {share * cfg.recipe.epochs:g} retain epochs"
    if n_noise and noise is not None and (len(basis.get("noise_run_times_s", [])) < n_noise or basis.get("noise_probe") != probe):
        log(f"time cap: timing {n_noise} runs of {probe}, side by side, for the run-time noise")
        basis = {**basis, "noise_probe": probe, "noise_run_times_s": noise(n_noise)}
        basis_path.write_text(json.dumps(basis))
    # every stored probe time counts: scripts/budget_check.py --calibrate adds hundreds
    margin = timing_noise(basis.get("noise_run_times_s", []), cfg.submissions.n_runs) if n_noise else 0.0
    cap = share * basis["median_retrain_s"] * (1.0 + margin)
    budget = ("fraction" if cfg.time_cap.fraction is not None
              else f"{cfg.time_cap.budget_epochs:g} of the recipe's {cfg.recipe.epochs} epochs")
    basis = {**basis, "fraction": share, "budget": budget, "retain_epochs": share * cfg.recipe.epochs,
             "noise_p99": margin, "time_cap_s": cap}
    log(f"time cap: {seconds_text(cap)} per run = {share:.3g} ({budget}) x {seconds_text(basis['median_retrain_s'])} "
        f"(median solo retrain on {basis['hardware']}) x {1 + margin:.3f} (p99 of the slowest of "
        f"{cfg.submissions.n_runs} runs, from {len(basis.get('noise_run_times_s', []))} runs of {basis.get('noise_probe', 'no probe')}); {how}")
    return cap, basis


def timing_noise(run_times: list[float], n_runs: int = 1) -> float:
    """How much wider than a typical run the cap must be for an honest file to pass: the p99 of the
    slowest of its `n_runs` runs (a file is rejected by any one run past the cap, as on Kaggle),
    over the median, minus 1. From repeated runs of one fixed submission: a log-normal whose spread
    is their p90 over their median gives the quantile 0.99 ** (1 / n_runs) of one run, never below the sample's own p99;
    0 when fewer than two runs are known."""
    times = np.asarray([t for t in run_times if t is not None and t > 0], dtype=float)
    if times.size < 2:
        return 0.0
    # the upper tail decides a rejection; fast runs (an idle neighbour) would widen a symmetric
    # fit, so the log-normal's spread comes from the p90 over the median
    median = float(np.median(times))
    sigma = float(np.log(np.percentile(times, 90) / median)) / float(scipy.stats.norm.ppf(0.9))
    z = float(scipy.stats.norm.ppf(0.99 ** (1.0 / max(1, n_runs))))
    fitted = median * float(np.exp(max(0.0, sigma) * z))
    return max(0.0, max(fitted, float(np.percentile(times, 99))) / float(np.median(times)) - 1.0)


def _noise_run_times(prep: Prepared, executor: Executor, n: int) -> list[float]:
    """`n` runs of the budget-sized fine-tune (harness.compete.budget_probe), spread over every slot
    and sandboxed as scoring runs them (the caller's backend, falling back to a plain process where
    no sandbox exists: trusted code)."""
    cfg = prep.cfg
    epochs = cfg.time_cap.share(cfg.recipe.epochs) * cfg.recipe.epochs
    path = write_probe(cfg.cache_dir / "probes", epochs, cfg.recipe)
    entry = Entry(team=f"{BASELINE_PREFIX}budget-probe", path=path, kind="baseline", exempt=True)
    plan = _Plan(entry, -1, list(range(n)), {})
    slots = executor.slots(executor.default_resources(prep.device))
    backend = resolve_backend(prep.cfg.sandbox.backend, allow_unsafe_fallback=True)
    inputs = _shared_inputs(prep, executor)
    units = _submission_units(prep, 0, plan, executor, inputs, n_runs=n, per_unit=max(1, -(-n // slots)),
                              backend=backend, batch_format_override=None)
    times: list[float] = []
    try:
        for _, outcome in executor.submit_all(run_submission, units, resources=executor.default_resources(prep.device)):
            if isinstance(outcome, UnitFailure):
                raise HarnessError(f"timing the budget probe for the time cap failed ({outcome.kind}): {outcome.message}")
            for run in outcome["runs"]:
                if run["status"] != Status.OK.value:
                    raise HarnessError(f"timing the budget probe for the time cap: run {run['run_index']} "
                                       f"ended {run['status']} ({run['reason']}); the sandbox is not working here")
                times.append(float(run["seconds"]))
    finally:
        executor.on_every_node(drop_node_data, (units[0].work_root, inputs["data_key"]))
    return times


def _measured_on(path: Path) -> str:
    try:
        return str(json.loads(path.read_text()).get("hardware", "unnamed hardware"))
    except (OSError, ValueError, AttributeError):
        return f"unreadable {path.name}"


@dataclass(frozen=True)
class EntryResult:
    entry: Entry
    submission_id: int
    status: str
    reason: str | None
    score: Score | None
    run_times_s: list[float]
    unit_timings: tuple[dict, ...] = ()  # how each unit spent its time (units.run_submission)


def score_entries(
    prep: Prepared,
    entries: list[Entry],
    store: Store,
    *,
    executor: Executor,
    n_runs: int,
    backend: str,
    batch_format_override: str | None = None,
    rerun: Collection[str] = (),
    timings: Timings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    over_cap: float | None = None,
) -> list[EntryResult]:
    """Every entry's missing runs as units on `executor`, each run committed as its unit returns and
    each entry scored once all its units are back; results in the order of `entries`.

    An entry with a failed run is not run again (its failure is its result), except for runs the
    sandbox itself failed (sandbox_error) and runs stored under an older run protocol
    (PROTOCOL_VERSION), which run again (the latter with a note); one whose unit was lost to the
    infrastructure or raised gets a failed score and no run rows, so a rerun retries exactly the
    missing runs. The teams in `rerun` run all their runs again, on purpose (`unlearn run --rerun
    TEAM`, a dry run's --fresh). Every replaced run is kept in the store's `superseded_runs` with
    why it was replaced. `over_cap`: a participant's dry run's allowance past the cap (harness.sandbox
    .run_worker); organizers' runs never pass it.
    """
    timings = timings or Timings()
    results: dict[int, EntryResult] = {}
    plans: dict[int, _Plan] = {}
    for position, entry in enumerate(entries):
        try:
            sub_id = store.add_submission(entry.path, team=entry.team, kind=entry.kind, exempt=entry.exempt)
            retry, note = _runs_to_redo(store, entry, sub_id, prep.leaderboard, n_runs=n_runs, rerun=entry.team in rerun)
            stored = [r for r in store.runs(sub_id, prep.leaderboard) if r.run_index < n_runs]
            failed_before = [r for r in stored if r.run_index not in retry and r.status is not Status.OK]
            have = {r.run_index for r in stored}
            todo = [i for i in range(n_runs) if i in retry or i not in have]
            if note and not failed_before:
                log(note)
            if todo and not failed_before and entry.kind == "oracle":
                _oracle_runs(prep, store, sub_id, n_runs, todo, retry, executor=executor, timings=timings, progress=progress)
            elif todo and not failed_before:
                plans[position] = _Plan(entry, sub_id, todo, retry)
                continue
            results[position] = _score(prep, entry, store, sub_id, n_runs, timings)
        except Exception as exc:  # noqa: BLE001 - this entry's trouble is its row, never the others' end
            results[position] = _failed_entry(prep, entry, store, Status.SANDBOX_ERROR, _reason(exc))
        log(_one_line(results[position]))
    # each sandboxed worker costs a start (seconds): as few as keep every slot busy
    slots = executor.slots(executor.default_resources(prep.device))
    per_unit = prep.cfg.executor.runs_per_unit or max(1, -(-sum(len(p.todo) for p in plans.values()) // slots))
    units: list[RunSubmission] = []
    inputs = _shared_inputs(prep, executor) if plans else {}
    for position, plan in list(plans.items()):
        try:
            units += _submission_units(prep, position, plan, executor, inputs, n_runs=n_runs, per_unit=per_unit,
                                       backend=backend, batch_format_override=batch_format_override, over_cap=over_cap)
        except Exception as exc:  # noqa: BLE001 - as above
            del plans[position]
            results[position] = _failed_entry(prep, plan.entry, store, Status.SANDBOX_ERROR, _reason(exc))
            log(_one_line(results[position]))
    bar = _bar(progress, sum(len(plan.todo) for plan in plans.values()), f"runs ({prep.leaderboard})")
    try:
        for unit, outcome in executor.submit_all(run_submission, units, resources=executor.default_resources(prep.device)):
            plan = plans[unit.tag]
            plan.pending -= 1
            try:
                _take(store, prep, plan, unit, outcome, timings)
            except Exception as exc:  # noqa: BLE001 - as above
                plan.failure = plan.failure or (Status.SANDBOX_ERROR, _reason(exc))
            bar.update(len(unit.run_indices))
            if plan.pending == 0:
                try:
                    if plan.failure is not None:
                        results[unit.tag] = _failed_entry(prep, plan.entry, store, *plan.failure)
                    else:
                        results[unit.tag] = _score(prep, plan.entry, store, plan.sub_id, n_runs, timings)
                except Exception as exc:  # noqa: BLE001 - as above
                    results[unit.tag] = _failed_entry(prep, plan.entry, store, Status.SANDBOX_ERROR, _reason(exc))
                results[unit.tag] = replace(results[unit.tag], unit_timings=tuple(plan.timings))
                log(_one_line(results[unit.tag]))
    finally:
        bar.close()
        if units:
            executor.on_every_node(drop_node_data, (units[0].work_root, inputs["data_key"]))
    return [results[position] for position in range(len(entries))]


def _take(store: Store, prep: Prepared, plan: _Plan, unit: RunSubmission, outcome: Any, timings: Timings) -> None:
    """A returned unit: its runs committed, or its failure kept for its entry."""
    if isinstance(outcome, UnitFailure):
        status = Status.WORKER_DIED if outcome.kind == "lost" else Status.SANDBOX_ERROR
        plan.failure = plan.failure or (status, f"runs {_span(unit.run_indices)}: {outcome.message}")
        return
    plan.timings.append(outcome["timings"])
    timings.merge(outcome["timings"])
    unchanged = {run["run_index"] for run in outcome["runs"] if run.pop("unchanged", False) and run["status"] == Status.OK.value}
    test_losses = {run["run_index"]: run.pop("test_losses", None) for run in outcome["runs"]}  # an extra, not a column
    with timings.measure("store"):
        for run in outcome["runs"]:
            index = run["run_index"]
            store.record_run(plan.sub_id, leaderboard=prep.leaderboard, replace=index in plan.retry,
                             cause=plan.retry.get(index, "replaced"), **run)
        before = set(store.get_extra(plan.sub_id, leaderboard=prep.leaderboard, name=UNCHANGED_RUNS, default=[]))
        after = (before - set(unit.run_indices)) | unchanged
        if after != before:
            store.put_extra(plan.sub_id, leaderboard=prep.leaderboard, name=UNCHANGED_RUNS, value=sorted(after))
        stored = store.get_extra(plan.sub_id, leaderboard=prep.leaderboard, name=TEST_LOSSES_EXTRA, default={}) or {}
        losses = dict(stored)
        for index, values in test_losses.items():  # a run that came back again replaces its losses, or drops them
            losses.pop(str(index), None)
            if values is not None:
                losses[str(index)] = [float(v) for v in values]
        if losses != stored:
            store.put_extra(plan.sub_id, leaderboard=prep.leaderboard, name=TEST_LOSSES_EXTRA, value=losses)


def _runs_to_redo(store: Store, entry: Entry, sub_id: int, leaderboard: str, *, n_runs: int,
                  rerun: bool) -> tuple[dict[int, str], str | None]:
    """Stored runs (of the first n_runs) that run again, each with why, and a one-line note to
    print: a sandbox_error (the harness's failure, silently), an older run protocol (timed
    otherwise: never resumed silently), or a rerun the organizer asked for."""
    stored = [r for r in store.runs(sub_id, leaderboard) if r.run_index < n_runs]
    name = f"{entry.team} ({entry.kind}, {leaderboard})"
    if rerun:
        note = f"{name}: running its {len(stored)} stored run(s) again, as asked (--rerun); the old rows are kept as superseded"
        return {r.run_index: f"rerun asked for (--rerun {entry.team})" for r in stored}, note if stored else None
    redo = {r.run_index: "sandbox_error: the harness's failure, run again" for r in stored if r.status is Status.SANDBOX_ERROR}
    old = [r for r in stored if r.protocol < PROTOCOL_VERSION]
    if not old:
        return redo, None
    redo.update({r.run_index: f"run protocol {r.protocol} < {PROTOCOL_VERSION}: run again" for r in old})
    note = (f"{name}: {len(old)} stored run(s) were run under run protocol {min(r.protocol for r in old)} "
            f"(now {PROTOCOL_VERSION}), so they are not resumed: running them again")
    return redo, note


@dataclass
class _Plan:
    """An entry being run: its missing runs, units still out, and the first unit failure."""

    entry: Entry
    sub_id: int
    todo: list[int]
    retry: dict[int, str]  # stored runs re-recorded in place -> why (superseded_runs.cause)
    pending: int = 0
    failure: tuple[Status, str] | None = None
    timings: list[dict] = field(default_factory=list)


def _shared_inputs(prep: Prepared, executor: Executor) -> dict[str, Any]:
    """What every entry's units read, put where units fetch it once."""
    data_key = f"{prep.leaderboard}-{prep.task.fingerprint[:16]}"
    return {
        "original": executor.share(f"original-{file_version(prep.original_path)}", prep.original_path.read_bytes()),
        "data": executor.share(f"data-{data_key}", {split: prep.task.arrays(split) for split in ("retain", "forget", "val")}),
        "evaluation": share_evaluation_sets(executor, prep.task),
        "data_key": data_key,
    }


def _submission_units(prep: Prepared, position: int, plan: _Plan, executor: Executor, inputs: dict[str, Any], *,
                      n_runs: int, per_unit: int, backend: str, batch_format_override: str | None,
                      over_cap: float | None = None) -> list[RunSubmission]:
    """The entry's missing runs split into units of `per_unit` runs, each one sandboxed worker."""
    cfg, entry = prep.cfg, plan.entry
    seeds = run_seeds(cfg, prep.leaderboard, n_runs)
    resources = executor.default_resources(prep.device)
    common = {
        **inputs,
        "team": entry.team,
        "source": entry.path.read_bytes(),
        "backend": backend,
        "limits": cfg.sandbox,
        "grace_s": cfg.time_cap.grace_s,
        "device": prep.device,
        "threads": executor.unit_threads(resources),
        "work_root": None if executor.remote else str(prep.run_dir / "work"),
        "over_cap": None if entry.exempt else over_cap,
        "tag": position,
    }
    units = []
    for first in range(0, len(plan.todo), per_unit):
        indices = tuple(plan.todo[first:first + per_unit])
        spec = WorkerSpec(
            model=cfg.model.name,
            num_classes=cfg.model.num_classes,
            in_channels=int(prep.task.images.shape[1]),
            batch_size=cfg.task.batch_size,
            batch_format=cfg.task.batch_format,
            device=prep.device,
            seeds=tuple(seeds[i] for i in indices),
            time_cap_s=None if entry.exempt else prep.time_cap_s,
            source_name=Path(entry.path).name,
            batch_format_override=batch_format_override,
            deterministic=cfg.deterministic,
        )
        units.append(RunSubmission(spec=spec, run_indices=indices, **common))
    plan.pending = len(units)
    return units


def _oracle_runs(prep: Prepared, store: Store, sub_id: int, n_runs: int, todo: list[int], retry: dict[int, str], *,
                 executor: Executor, timings: Timings, progress: bool) -> None:
    """The retrain oracle: a second, independent set of models retrained on retain by the harness.

    Trained by the config's own recipe (trusted code, no sandbox), so it matches the references
    exactly but for the seeds; scored like a submission it is the calibration row.
    """
    cfg = prep.cfg
    seed = cfg.references.seed + ORACLE_SEED_OFFSET + (0 if prep.leaderboard == "public" else 500_000)
    refs_cfg = replace(cfg.references, n_models=n_runs, seed=seed, solo_first=0)
    cache_dir = cfg.cache_dir
    oracle = train_references(prep.task, model_cfg=cfg.model, recipe=cfg.recipe, refs_cfg=refs_cfg,
                              device=prep.device, cache_dir=cache_dir, progress=progress, executor=executor,
                              timings=timings)
    for i in todo:
        store.record_run(sub_id, leaderboard=prep.leaderboard, run_index=i, seed=int(oracle.seeds[i]), status=Status.OK.value,
                         reason="", seconds=float(oracle.train_seconds[i]), peak_mem_mb=None, log="",
                         retain_acc=float(oracle.retain_acc[i]), test_acc=float(oracle.test_acc[i]),
                         forget_acc=float(oracle.forget_acc[i]), confs=oracle.confs[i],
                         replace=i in retry, cause=retry.get(i, "replaced"))


def _failed_entry(prep: Prepared, entry: Entry, store: Store, status: Status, reason: str) -> EntryResult:
    sub_id = store.add_submission(entry.path, team=entry.team, kind=entry.kind, exempt=entry.exempt)
    store.record_score(sub_id, leaderboard=prep.leaderboard, status=status.value, reason=reason, metric_version=METRIC_VERSION)
    return EntryResult(entry, sub_id, status.value, reason, None, [])


def _reason(exc: Exception) -> str:
    if isinstance(exc, HarnessError):
        return str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _span(indices: tuple[int, ...]) -> str:
    return f"{indices[0]}..{indices[-1]}" if len(indices) > 1 else str(indices[0])


def _score(prep: Prepared, entry: Entry, store: Store, sub_id: int, n_runs: int, timings: Timings) -> EntryResult:
    """Score the entry on the runs `rescore` uses too (harness.scoring.scores.record_entry_score)."""
    status, reason, score, times = record_entry_score(
        store, sub_id, leaderboard=prep.leaderboard, n_runs=n_runs, references=prep.references,
        reference_confs=prep.references.confs, noise_floor=prep.noise_floor,
        time_cap_s=None if entry.exempt else prep.time_cap_s, timings=timings,
    )
    return EntryResult(entry, sub_id, status, reason, score, times)


def open_store(cfg: Config, *, allow_change: bool = False) -> Store:
    """The competition's store; results of a different config are refused."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.run_dir / "results.sqlite", log_cap=cfg.sandbox.log_bytes)
    store.record_competition(config=cfg.to_dict(), config_hash=cfg.hash(), code_version=__version__,
                             seeds={"seed": cfg.seed, "references": cfg.references.seed}, allow_change=allow_change)
    return store


def run_competition(
    cfg: Config,
    *,
    submissions_dir: str | Path | None = None,
    baselines: tuple[str, ...] | None = None,
    all_baselines: bool = False,
    leaderboards: tuple[str, ...] = ("public",),
    unsafe_no_sandbox: bool = False,
    rerun: tuple[str, ...] = (),
    timings: Timings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
):
    """Score every entry on every leaderboard, then write the leaderboards. Returns the public table.
    `rerun` names teams whose stored runs run again on purpose. The run folder's writer lock is
    held throughout. `timings` collects where the time went (harness.compete.timing)."""
    timings = timings or Timings()
    from harness.results.leaderboard import build_leaderboard, write_leaderboard

    check_config(cfg)  # a Config built in code was not checked at load
    backend = resolve_backend("none" if unsafe_no_sandbox else cfg.sandbox.backend, allow_unsafe_fallback=False)
    for left in remove_stale(backend):
        log(f"removed {left}, left by a runner that was killed")
    entries = discover_entries(cfg, submissions_dir=submissions_dir, baselines=baselines, all_baselines=all_baselines)
    _check_rerun(rerun, entries)
    with timings.measure("task"):  # every board's forget set before anything is trained or stored
        tasks = {leaderboard: board_task(cfg, leaderboard) for leaderboard in leaderboards}
    overlap = forget_overlap(tasks["public"], tasks["private"]) if {"public", "private"} <= set(tasks) else None
    if overlap:
        log(f"forget sets: public {overlap['public']} images, private {overlap['private']} images, disjoint (none shared)")
    with writer_lock(cfg.run_dir):  # from the first write on: a refused config leaves no folder behind
        store = open_store(cfg)
        if overlap:
            store.set_meta(forget_sets=overlap)
        with make_executor(cfg.executor) as executor:
            base = None
            for leaderboard in leaderboards:
                prep = prepare(cfg, leaderboard=leaderboard, executor=executor, timings=timings, progress=progress, log=log,
                               task=tasks[leaderboard], base=base)
                base = base or prep
                with timings.measure("store"):
                    _record_prepared(store, prep)
                score_entries(prep, entries, store, executor=executor, n_runs=cfg.submissions.n_runs, backend=backend,
                              rerun=frozenset(rerun), timings=timings, progress=progress, log=log)
        write_leaderboard(store, cfg.run_dir, publish_logs=cfg.leaderboard.publish_logs)
        return build_leaderboard(store, leaderboard="public")


def _check_rerun(rerun: tuple[str, ...], entries: list[Entry]) -> None:
    import difflib

    teams = [e.team for e in entries]
    for team in rerun:
        if team not in teams:
            close = difflib.get_close_matches(team, teams, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise HarnessError(f"--rerun {team!r}: no such entry in this competition; {hint}entries: {', '.join(teams)}")


def _record_prepared(store: Store, prep: Prepared) -> None:
    refs = prep.references
    store.record_references(
        leaderboard=prep.leaderboard,
        cache_key=refs.cache_key,
        confs=refs.confs,
        retain_acc=refs.retain_acc,
        test_acc=refs.test_acc,
        forget_acc=refs.forget_acc,
        train_seconds=refs.train_seconds,
        path_used=refs.path_used,
    )
    store.record_time_cap(prep.time_cap_basis, leaderboard=prep.leaderboard)
    store.set_meta(**{f"task_{prep.leaderboard}": prep.task.description})


def _bar(enabled: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", disable=not enabled or total == 0, file=sys.stderr)  # nothing to run: no bar


def _one_line(result: EntryResult) -> str:
    name = f"{result.entry.team} ({result.entry.kind})"
    if result.score is None:
        return f"{name}: {result.status}: {result.reason}"
    s = result.score
    return f"{name}: score {s.final_score:.4f} [{s.ci_low:.4f}, {s.ci_high:.4f}]  F {s.forget_quality:.4f}  RA {s.retain_ratio:.3f}  TA {s.test_ratio:.3f}"


def dry_run(
    submission: str | Path,
    cfg: Config,
    *,
    batch_format: str | None = None,
    unsafe_no_sandbox: bool = False,
    fresh: bool = False,
    executor: Executor | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    over_cap_allowance: float | None = None,
) -> dict:
    """One participant's file, scored as the organizers would at this config's N; one record.

    Reads the competition's cached task, original, references and time cap, and writes only its
    own store (runs/<name>/dry-runs/), never the competition's store, leaderboards or config hash.
    Its runs are stored under a key of everything that changes their outcome (dry_run_settings),
    so the same file with the same settings is served from the store, and says so; `fresh` runs
    them again. `executor`: units run there (a local pool by cfg.executor when None).
    `over_cap_allowance` (e.g. 3.0): runs past the cap go on up to that many caps; the verdict stays
    the organizers' `timeout`, and the record adds what the runs would have scored (`over_cap`).
    """
    if over_cap_allowance is not None and not over_cap_allowance > 1:
        raise HarnessError(f"the over-cap allowance must be above 1 (a multiple of the cap, e.g. 3x), got {over_cap_allowance:g}")
    path = Path(submission)
    if path.is_dir():
        raise SubmissionError(f"submission {path} is a directory; pass the path of one .py file in it that defines "
                              f"unlearning(), e.g. {path / 'my_method.py'}")
    if not path.is_file():
        raise SubmissionError(f"submission file {path} does not exist; pass the path of a .py file defining unlearning()")
    check_config(cfg)  # a Config built in code was not checked at load
    n_runs = cfg.submissions.n_runs
    backend = resolve_backend("none" if unsafe_no_sandbox else cfg.sandbox.backend, allow_unsafe_fallback=True)
    with writer_lock(cfg.run_dir / DRY_RUNS_DIR), borrowed(executor, cfg.executor) as executor:  # its own store's writer
        prep = prepare(cfg, executor=executor, progress=progress, log=log)
        settings = dry_run_settings(prep, path, backend=backend, batch_format=batch_format,
                                    threads=executor.unit_threads(executor.default_resources(prep.device)),
                                    over_cap=over_cap_allowance)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        prep = replace(prep, run_dir=cfg.run_dir / DRY_RUNS_DIR)  # its scratch too stays apart
        store = Store(prep.run_dir / "results.sqlite", log_cap=cfg.sandbox.log_bytes)
        store.set_meta(**{f"dry_run_{key}": settings})
        entry = Entry(team=f"{path.stem}@{key}", path=path, kind="submission", exempt=False)
        stored = [r for r in store.runs(store.add_submission(path, team=entry.team), prep.leaderboard)
                  if r.run_index < n_runs and r.status is not Status.SANDBOX_ERROR]
        if stored and fresh:
            log(f"dry run: --fresh: running all {n_runs} runs again; the {len(stored)} stored ones are replaced")
            stored = []
        elif stored:
            log(f"dry run: serving {len(stored)} of {n_runs} runs stored by an earlier dry run of this file with the "
                f"same settings (key {key}, last recorded {max(r.recorded_at for r in stored)}); "
                "pass --fresh to run them again")
        [result] = score_entries(prep, [entry], store, executor=executor, n_runs=n_runs, backend=backend,
                                 batch_format_override=batch_format, rerun={entry.team} if fresh else (),
                                 progress=progress, log=log, over_cap=over_cap_allowance)
        over = None if over_cap_allowance is None else over_cap_record(store, result, prep, over_cap_allowance)
        explained = explain_runs(store, result, prep, batch_format=batch_format)
    return {**dry_run_record(result, prep), **explained, "over_cap": over, "stored_runs": len(stored), "key": key,
            "store": str(store.path)}


def explain_runs(store: Store, result: EntryResult, prep: Prepared, *, batch_format: str | None) -> dict:
    """What a participant needs beside the reason: every run's full log kept as a file in the dry
    runs' folder (the units' work folders are deleted), the failed run's traceback tail, and a
    one-line hint for the common mistakes (CUDA on a machine without one, a batch indexed for the
    other BATCH_FORMAT, the original's weights returned unchanged)."""
    from harness.sandbox.hints import UNCHANGED_HINT, declared_batch_format, failure_hint, traceback_tail

    n_runs = prep.cfg.submissions.n_runs
    runs = [r for r in store.runs(result.submission_id, prep.leaderboard) if r.run_index < n_runs]
    folder = prep.run_dir / DRY_RUN_LOGS / result.entry.team
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("run_*.log"):
        stale.unlink()
    for run in runs:
        (folder / f"run_{run.run_index}.log").write_text(run.log or "")
    failed = next((r for r in runs if r.status is not Status.OK), None)
    unchanged = store.get_extra(result.submission_id, leaderboard=prep.leaderboard, name=UNCHANGED_RUNS, default=[])
    hint, tail = None, []
    if failed is not None:
        source = result.entry.path.read_text(errors="replace")
        batches = batch_format or declared_batch_format(source) or prep.cfg.task.batch_format
        hint = failure_hint(failed.log, device=prep.device, batch_format=batches)
        tail = traceback_tail(failed.log)
    elif unchanged:
        hint = UNCHANGED_HINT if len(unchanged) == len(runs) else f"{len(unchanged)} of {len(runs)} runs: {UNCHANGED_HINT}"
    shown = failed or (runs[0] if runs else None)
    return {
        "hint": hint,
        "traceback": tail,
        "log": str(folder / f"run_{shown.run_index}.log") if shown is not None else None,
        "logs_dir": str(folder),
        "unchanged_runs": list(unchanged),
    }


def over_cap_record(store: Store, result: EntryResult, prep: Prepared, allowance: float) -> dict:
    """What a dry run with an over-cap allowance adds: each run past the cap (by how much) and,
    when every run finished within the allowance, the score they would have earned; the
    verdict itself stays the organizers'."""
    n_runs, cap = prep.cfg.submissions.n_runs, prep.time_cap_s
    runs = select_runs(store.runs(result.submission_id, prep.leaderboard), n_runs).runs
    late = [{"run": r.run_index, "seconds": r.seconds, "over_s": r.seconds - cap, "ratio": r.seconds / cap}
            for r in runs if r.status is Status.TIMEOUT and r.seconds is not None]
    usable = [r for r in runs if r.status in (Status.OK, Status.TIMEOUT) and r.confs_file is not None]
    record = {"allowance": allowance, "time_cap_s": cap, "runs_over_cap": late, "would_score": None,
              "note": None}
    if len(usable) < n_runs:
        record["note"] = (f"{n_runs - len(usable)} of {n_runs} runs did not finish within {allowance:g}x the cap "
                          "(or failed otherwise): no score to show")
        return record
    confs = np.stack([store.load_confs(r) for r in usable])
    score = score_run_records(usable, confs, prep.references.confs, prep.references, noise_floor=prep.noise_floor)
    record["would_score"] = {"final_score": score.final_score, "forget_quality": score.forget_quality,
                             "ci_95": [score.ci_low, score.ci_high], "retain_ratio": score.retain_ratio,
                             "test_ratio": score.test_ratio}
    return record


def dry_run_settings(prep: Prepared, path: Path, *, backend: str, batch_format: str | None, threads: int,
                     over_cap: float | None = None) -> dict:
    """Everything that changes a dry run's outcome; its hash keys the stored runs, so a change to
    any (the file, an override, the original, the forget set, the cap...) never replays old runs."""
    cfg, n_runs = prep.cfg, prep.cfg.submissions.n_runs
    return {
        "file": file_version(path),
        "batch_format": {"config": cfg.task.batch_format, "override": batch_format},
        "batch_size": cfg.task.batch_size,
        "device": prep.device,
        "threads": threads,
        "backend": backend,
        "sandbox": asdict(cfg.sandbox),
        "seeds": run_seeds(cfg, prep.leaderboard, n_runs),
        "deterministic": cfg.deterministic,
        "protocol_version": PROTOCOL_VERSION,
        "code_version": __version__,
        "time_cap_s": prep.time_cap_s,
        "grace_s": cfg.time_cap.grace_s,
        "over_cap_allowance": over_cap,
        "model": [cfg.model.name, cfg.model.num_classes],
        "original": file_version(prep.original_path),
        "task": prep.task.fingerprint,  # the images and every split: the forget set among them
        "references": [prep.references.cache_key, prep.references.n_models],
    }


def dry_run_record(result: EntryResult, prep: Prepared) -> dict:
    s = result.score
    return {
        "submission": str(result.entry.path),
        "version": result.entry.version,
        "status": result.status,
        "error": result.reason,
        "final_score": s.final_score if s else None,
        "forget_quality": s.forget_quality if s else None,
        "ci_95": [s.ci_low, s.ci_high] if s else None,
        "retain_accuracy": s.retain_acc if s else None,
        "test_accuracy": s.test_acc if s else None,
        "forget_accuracy": s.forget_acc if s else None,
        "retain_ratio": s.retain_ratio if s else None,
        "test_ratio": s.test_ratio if s else None,
        "n_models": prep.cfg.submissions.n_runs,
        "noise_floor": prep.noise_floor,
        "noise_floor_note": (
            f"retrained models scored against other retrained models at N={prep.references.confs.shape[0] // 2}: "
            "what a perfect unlearner can expect (about 0.18-0.20 at any N); small N flatters imperfect "
            "unlearners, so expect a lower score at the organizers' N=512"
        ),
        "time_cap_s": prep.time_cap_s,
        "time_cap_basis": prep.time_cap_basis,
        "run_times_s": result.run_times_s,
        "device": prep.device,
        "task": prep.task.description,
    }
