"""The SQLite results store: one file per competition, large arrays in .npy/.npz files beside it.

Layout (the directory is the store file's parent, `runs/<name>/` by default)::

    results.sqlite                 the database (WAL mode: -wal/-shm files sit beside it while open)
    arrays/run_<id>.npy            float64 [S]: forget-set confidences of one run (runs.id)
    arrays/reference_<id>.npy      float64 [N, S]: confidences of the N reference models
    arrays/score_<id>.npz          per-example `eps` [S] and `points` [S] of one score (scores.id)

The database names every array file (a path relative to the store's directory), so a run
directory can be moved or copied as a whole.

Durability: every write is one short transaction. An array is written to a temporary file and
renamed into place *before* the row that points to it is committed, so a process killed at any
moment leaves whole rows whose files exist; at worst an unreferenced array file is left behind.
Row ids never repeat (AUTOINCREMENT), so a replaced row's file is never overwritten in place.
A new store file is built beside its path and linked into place whole.

Resume and idempotence:
- `add_submission` is idempotent: the same file (same sha256) for the same team returns the
  existing id; a changed file is a new version, old ones kept.
- A run is recorded once: `record_run` for a (submission, leaderboard, run_index) that is already
  stored raises `DuplicateRunError` unless `replace=True` (for a deliberate re-run, e.g. after a
  `worker_died`). A resumed runner asks `finished_runs(...)` and runs only what is missing.
- `record_score` and `record_references` overwrite (rescoring replaces scores only; runs stay).
- A replaced run is kept as history: `record_run(..., replace=True, cause=...)` moves the old row
  (without its confidences file) to `superseded_runs` with why it was replaced (a sandbox_error run
  again, a run of an older run protocol, a rerun an organizer asked for).
- Each run stores the run protocol (`harness.sandbox.protocol.PROTOCOL_VERSION`) it was executed
  and timed under; rows written before the protocol was recorded are protocol 1.
- `extras` holds per-entry diagnostics by (submission, leaderboard, name) as JSON: later features
  add names there without a schema change (`put_extra`, `get_extra`, `extras`); rescoring keeps them.

Schema versions (harness.results.schema): a store records its schema version in `meta`. Every schema change bumps
SCHEMA_VERSION and adds a migration to `MIGRATIONS` (from version v to v + 1). Opening an older
store migrates it in place, in one transaction (all steps or none); a new store is the first
schema with every migration applied, so new and migrated stores are the same.

A file that is not a results store (empty, truncated or damaged, another SQLite database, other
bytes) is refused with `NotAStoreError` before anything is written to it or from it.

What the runner calls, in order::

    with harness.results.lock.writer_lock(run_dir):                # one writer per folder, for the whole write
    store = Store(run_dir / "results.sqlite")             # creates it, or opens, checks and migrates it
    store.record_competition(config=cfg.to_dict(), config_hash=cfg.hash(), code_version=..., seeds=...)
    store.record_time_cap(basis, leaderboard=lb)           # dict: median_retrain_s, hardware, time_cap_s, ...
    store.record_references(leaderboard=lb, cache_key=..., confs=..., retain_acc=..., ...)
    sid = store.add_submission(path, team=..., kind=..., exempt=...)
    todo = set(range(n_runs)) - store.finished_runs(sid, lb)
    store.record_run(sid, leaderboard=lb, run_index=i, seed=..., status=..., confs=..., ...)  # per run, at once
    harness.scoring.scores.record_entry_score(store, sid, leaderboard=lb, n_runs=..., ...)  # runs 0..n_runs-1 -> record_score
    harness.results.leaderboard.write_leaderboard(store, run_dir)  # reads the store only

Reading: `submissions()`, `runs(sid, lb)`, `all_runs()`, `load_confs(run)`, `references(lb)`,
`reference_confs(lb)`, `score(sid, lb)`, `scores(lb)`, `score_arrays(sid, lb)`, `competition()`.
Records are frozen dataclasses that also read like rows (`run.status` or `run["status"]`);
`status` fields are `harness.statuses.Status`, a str Enum, so `run.status == "ok"` holds.

Modules, one concern each: `base` (the file, the connection, transactions, array files),
`records` (the records), `competition`, `submissions`, `runs`, `references`, `scores`, `extras`
(each concern's writes and queries, a mixin of `Store`). A new concern is a module with a
`StoreBase` subclass, added to `Store`'s bases.
"""

from __future__ import annotations

from harness.results.store.base import ARRAYS_DIR, DEFAULT_LOG_CAP, KINDS, LEADERBOARDS, REASON_LIMIT, StoreBase
from harness.results.store.competition import CompetitionRecords
from harness.results.store.extras import ExtraRecords
from harness.results.store.records import (
    CompetitionInfo,
    ReferenceRecord,
    RunRecord,
    ScoreRecord,
    SubmissionRecord,
    SupersededRun,
)
from harness.results.store.references import ReferenceRecords
from harness.results.store.runs import DuplicateRunError, RunRecords, cap_log
from harness.results.store.scores import ScoreRecords
from harness.results.store.submissions import SubmissionRecords, file_version

__all__ = [
    "ARRAYS_DIR", "DEFAULT_LOG_CAP", "KINDS", "LEADERBOARDS", "REASON_LIMIT", "CompetitionInfo", "DuplicateRunError",
    "ReferenceRecord", "RunRecord", "ScoreRecord", "Store", "SubmissionRecord", "SupersededRun", "cap_log", "file_version",
]  # fmt: skip


class Store(CompetitionRecords, SubmissionRecords, RunRecords, ReferenceRecords, ScoreRecords, ExtraRecords, StoreBase):
    """A competition's results. Thread-safe within a process; several processes may read while one writes."""
