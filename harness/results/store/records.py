"""What the store hands back: frozen records that also read like rows (`run.status` or
`run["status"]`), and the conversions from a database row to each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.statuses import Status


class _Record:
    """Records read as attributes (`run.status`) or, like database rows, by key (`run["status"]`)."""

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


@dataclass(frozen=True)
class SubmissionRecord(_Record):
    id: int
    team: str
    name: str
    path: str
    version: str  # sha256 of the file, first 16 hex digits
    kind: str  # submission | baseline | oracle
    exempt: bool  # the retrain oracle: scored and listed, flagged, never ranked
    added_at: str


@dataclass(frozen=True)
class RunRecord(_Record):
    id: int
    submission_id: int
    leaderboard: str
    run_index: int
    seed: int
    status: Status
    reason: str
    seconds: float | None
    peak_mem_mb: float | None
    log: str
    retain_acc: float | None
    test_acc: float | None
    forget_acc: float | None
    confs_file: str | None  # relative to the store's directory
    recorded_at: str
    protocol: int  # the run protocol it was executed and timed under (harness.sandbox.protocol)


@dataclass(frozen=True)
class SupersededRun(_Record):
    """A run row replaced by a newer one, kept as history (its confidences are not kept)."""

    id: int  # its id in `runs` when it was current
    submission_id: int
    leaderboard: str
    run_index: int
    seed: int
    status: Status
    reason: str
    seconds: float | None
    peak_mem_mb: float | None
    log: str
    retain_acc: float | None
    test_acc: float | None
    forget_acc: float | None
    protocol: int
    recorded_at: str
    superseded_at: str
    cause: str  # why it was replaced, one line


@dataclass(frozen=True)
class ReferenceRecord(_Record):
    id: int
    leaderboard: str
    cache_key: str
    n_models: int
    confs_file: str
    retain_acc: np.ndarray  # [N]
    test_acc: np.ndarray
    forget_acc: np.ndarray
    train_seconds: np.ndarray  # [N]; empty when not known (imported references)
    path_used: str
    recorded_at: str


@dataclass(frozen=True)
class ScoreRecord(_Record):
    id: int
    submission_id: int
    leaderboard: str
    status: Status
    reason: str
    final_score: float | None
    forget_quality: float | None
    ci_low: float | None
    ci_high: float | None
    retain_ratio: float | None
    test_ratio: float | None
    retain_acc: float | None
    test_acc: float | None
    forget_acc: float | None
    noise_floor: float | None
    n_models: int | None
    n_runs: int | None
    n_ok: int | None
    median_run_s: float | None
    worst_run_s: float | None
    time_cap_s: float | None
    metric_version: str | None
    arrays_file: str | None
    scored_at: str


@dataclass(frozen=True)
class CompetitionInfo(_Record):
    name: str | None
    config: dict[str, Any] | None
    config_hash: str | None
    code_version: str | None
    seeds: dict[str, Any] | None
    time_caps: dict[str, dict[str, Any]]  # per leaderboard: median_retrain_s, hardware, fraction, time_cap_s, ...
    private_revealed: bool
    schema_version: int
    created_at: str | None


def submission_record(r: dict[str, Any]) -> SubmissionRecord:
    return SubmissionRecord(**{**r, "exempt": bool(r["exempt"])})


def run_record(r: dict[str, Any]) -> RunRecord:
    return RunRecord(**{**r, "status": Status(r["status"])})


def superseded_record(r: dict[str, Any]) -> SupersededRun:
    return SupersededRun(**{**r, "status": Status(r["status"])})


def score_record(r: dict[str, Any]) -> ScoreRecord:
    return ScoreRecord(**{**r, "status": Status(r["status"])})
