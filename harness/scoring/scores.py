"""From per-run measurements to one score: the metric applied to a submission's runs.

`score_runs` is pure: arrays in, a `Score` out. `select_runs` picks the runs a score rests on,
and `record_entry_score` scores an entry from the store with them: the runner calls it after a
submission's runs, `rescore` again from stored confidences after a metric fix, so the two use
the same runs and give the same score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.scoring import metric
from harness.statuses import Status

METRIC_VERSION = 1  # bump when the metric's numbers change, so stored scores can be told apart


@dataclass(frozen=True)
class Score:
    final_score: float
    forget_quality: float
    ci_low: float
    ci_high: float
    retain_acc: float
    test_acc: float
    forget_acc: float
    retain_ratio: float
    test_ratio: float
    noise_floor: float | None
    n_models: int
    example_eps: np.ndarray = field(repr=False)
    example_points: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("example_eps")
        out.pop("example_points")
        return out


def score_runs(
    unlearned_confs: np.ndarray,
    retrained_confs: np.ndarray,
    *,
    unlearned_accs: dict[str, np.ndarray],
    retrained_accs: dict[str, np.ndarray],
    noise_floor: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Score:
    """Score N unlearned runs against N retrained references (the official N-vs-N comparison).

    When more references than runs exist, the first len(runs) references are used, so both
    distributions are estimated from the same number of models as the organizers did.
    """
    unlearned_confs = np.asarray(unlearned_confs, dtype=np.float64)
    retrained_confs = np.asarray(retrained_confs, dtype=np.float64)
    n = unlearned_confs.shape[0]
    if retrained_confs.shape[0] > n:
        retrained_confs = retrained_confs[:n]
    eps = metric.epsilons(unlearned_confs, retrained_confs)
    points = metric.example_points(eps, n)
    f = float(points.mean())
    ra_u, ta_u, fa_u = (float(np.mean(unlearned_accs[k])) for k in ("retain", "test", "forget"))
    ra_r, ta_r = (float(np.mean(retrained_accs[k][:n])) for k in ("retain", "test"))
    retain_ratio, test_ratio = metric.utility_ratios(ra_u, ra_r, ta_u, ta_r)
    low, high = metric.bootstrap_ci_from_points(points, n_boot=n_boot, seed=seed, accuracy_factor=retain_ratio * test_ratio)
    return Score(
        final_score=metric.final_score(f, retain_acc_unlearned=ra_u, retain_acc_retrained=ra_r,
                                       test_acc_unlearned=ta_u, test_acc_retrained=ta_r),
        forget_quality=f,
        ci_low=float(low),
        ci_high=float(high),
        retain_acc=ra_u,
        test_acc=ta_u,
        forget_acc=fa_u,
        retain_ratio=retain_ratio,
        test_ratio=test_ratio,
        noise_floor=noise_floor,
        n_models=n,
        example_eps=eps,
        example_points=points,
    )


def score_run_records(runs, unlearned_confs: np.ndarray, retrained_confs: np.ndarray, retrained, *,
                      noise_floor: float | None) -> Score:
    """`score_runs` for stored runs: each run record's accuracies, in order, against a reference
    set's (anything with retain_acc/test_acc/forget_acc arrays: References, a store record)."""
    keys = ("retain", "test", "forget")
    return score_runs(
        unlearned_confs,
        retrained_confs,
        unlearned_accs={k: np.array([r[f"{k}_acc"] for r in runs]) for k in keys},
        retrained_accs={k: np.asarray(getattr(retrained, f"{k}_acc")) for k in keys},
        noise_floor=noise_floor,
    )


def reference_noise_floor(retrained_confs: np.ndarray) -> float | None:
    """F of one half of the references against the other: a perfect unlearner's F at N/2."""
    n = retrained_confs.shape[0] // 2
    if n < 4:  # below 4 models a side the metric has no bucket beyond the first
        return None
    return float(metric.noise_floor(retrained_confs[:n], retrained_confs[n : 2 * n]))


@dataclass(frozen=True)
class RunSelection:
    """The runs a score rests on: run indices 0..n_runs-1, whatever else is stored."""

    runs: list  # run records, by run index
    failed: list  # those whose status is not ok
    missing: list[int]  # indices below n_runs with no stored run

    @property
    def complete(self) -> bool:
        return not self.failed and not self.missing


def select_runs(runs, n_runs: int) -> RunSelection:
    """Every entry is scored on the same run indices (the same seeds): 0..n_runs-1. Runs beyond
    them (an earlier, larger n_runs) are kept in the store and never scored."""
    chosen = sorted((r for r in runs if r["run_index"] < n_runs), key=lambda r: r["run_index"])
    have = {r["run_index"] for r in chosen}
    return RunSelection(
        runs=chosen,
        failed=[r for r in chosen if r["status"] != Status.OK.value],
        missing=[i for i in range(n_runs) if i not in have],
    )


def record_entry_score(store, submission_id: int, *, leaderboard: str, n_runs: int, references: Any,
                       reference_confs: np.ndarray, noise_floor: float | None, time_cap_s: float | None,
                       timings: Any = None) -> tuple[str, str | None, Score | None, list[float]]:
    """Score an entry from its stored runs (`select_runs`) and record the score; a failed or
    missing run is the entry's failure. Returns (status, reason, score or None, run times)."""
    import contextlib

    measure = timings.measure if timings is not None else (lambda part: contextlib.nullcontext())
    with measure("store"):
        chosen = select_runs(store.runs(submission_id, leaderboard), n_runs)
    times = [float(r["seconds"]) for r in chosen.runs if r["seconds"] is not None]
    common = {"median_run_s": float(np.median(times)) if times else None, "worst_run_s": max(times) if times else None,
              "time_cap_s": time_cap_s, "metric_version": METRIC_VERSION, "n_runs": n_runs}
    if not chosen.complete:
        first = chosen.failed[0] if chosen.failed else None
        status = Status.parse(first["status"]).value if first else Status.WORKER_DIED.value
        have = len(chosen.runs)
        reason = f"run {first['run_index']}: {first['reason']}" if first else f"only {have} of {n_runs} runs came back"
        with measure("store"):
            store.record_score(submission_id, leaderboard=leaderboard, status=status, reason=reason,
                               n_ok=have - len(chosen.failed), **common)
        return status, reason, None, times
    with measure("store"):
        confs = np.stack([store.load_confs(r) for r in chosen.runs])
    with measure("metric"):
        score = score_run_records(chosen.runs, confs, reference_confs, references, noise_floor=noise_floor)
    with measure("store"):
        store.record_score(submission_id, leaderboard=leaderboard, status=Status.OK.value, reason="", score=score,
                           n_ok=len(chosen.runs), **common)
    with measure("metric"):
        lens_values = entry_lenses(store, submission_id, leaderboard=leaderboard, runs=chosen.runs, unlearned_confs=confs,
                                   retrained_confs=reference_confs)
    with measure("store"):
        store.put_extra(submission_id, leaderboard=leaderboard, name=LENSES_EXTRA, value=lens_values)
    return Status.OK.value, None, score, times


LENSES_EXTRA = "lenses"  # the store's extra holding every lens of an entry (harness.scoring.lenses)
TEST_LOSSES_EXTRA = "test_losses"  # extra: {run index: the run's test-set losses}, for the simple MIA


def entry_lenses(store, submission_id: int, *, leaderboard: str, runs, unlearned_confs: np.ndarray,
                 retrained_confs: np.ndarray) -> dict:
    """Every registered lens of a scored entry, beside its score (never inside it): the runs'
    confidences against the same first N references the score used, and each run's stored
    test-set losses where the trusted evaluation kept them (`TEST_LOSSES_EXTRA`)."""
    from harness.scoring import lenses

    n = unlearned_confs.shape[0]
    stored = store.get_extra(submission_id, leaderboard=leaderboard, name=TEST_LOSSES_EXTRA, default={}) or {}
    per_run = [stored.get(str(r["run_index"])) for r in runs]
    test_losses = None
    if per_run and all(v is not None for v in per_run) and len({len(v) for v in per_run}) == 1:
        test_losses = np.asarray(per_run, dtype=np.float64)
    inputs = lenses.LensInputs(unlearned=np.asarray(unlearned_confs, dtype=np.float64),
                               retrained=np.asarray(retrained_confs, dtype=np.float64)[:n], test_losses=test_losses)
    return lenses.compute_lenses(inputs)
