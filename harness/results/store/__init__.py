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
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.results.schema import (
    check_integrity,
    check_store_file,
    create_schema,
    init_schema,
    not_a_store,
    now,
    put_meta,
)
from harness.sandbox.outcomes import one_line
from harness.sandbox.protocol import PROTOCOL_VERSION
from harness.statuses import Status

LEADERBOARDS = ("public", "private")
KINDS = ("submission", "baseline", "oracle")
DEFAULT_LOG_CAP = 64 * 1024  # characters of a run's log kept in the database
ARRAYS_DIR = "arrays"
REASON_LIMIT = 1000  # characters of a stored reason; the sandbox's own are shorter (outcomes.REASON_CHARS)

class DuplicateRunError(HarnessError):
    """A run that is already stored was recorded again without `replace=True`."""


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


def file_version(path: str | Path) -> str:
    """A submission's version: the first 16 hex digits of its file's sha256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class Store:
    """A competition's results. Thread-safe within a process; several processes may read while one writes."""

    def __init__(self, path: str | Path, *, create: bool = True, log_cap: int = DEFAULT_LOG_CAP) -> None:
        self.path = Path(path)
        self.root = self.path.parent
        self.log_cap = log_cap
        if not self.path.exists() and not create:
            raise HarnessError(
                f"results store {self.path} does not exist; run the competition first or pass its run directory"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        if not self.path.exists():
            self._create_file()
        check_store_file(self.path)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60.0)
        try:
            check_integrity(self._conn, self.path)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self._write() as conn:
                init_schema(conn, self.path)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise not_a_store(self.path, f"SQLite says: {exc}") from None
        except BaseException:
            self._conn.close()
            raise

    def _create_file(self) -> None:
        """A new store appears whole or not at all: built beside its path, then linked into place
        (never over another process's new store), so a runner killed while creating it leaves no
        empty file that the next run would have to refuse."""
        tmp = self.path.with_name(f".{self.path.name}.new-{os.getpid()}-{uuid.uuid4().hex}")
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                create_schema(conn, self.path)
                conn.execute("COMMIT")
            finally:
                conn.close()  # checkpoints: the whole store is in the main file now
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process created it first: use theirs
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                leftover.unlink(missing_ok=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; array files it created are removed if it fails."""
        with self._lock:
            self._new_files: list[Path] = []
            self._old_files: list[str] = []
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                for file in self._new_files:
                    file.unlink(missing_ok=True)
                raise
            for rel in self._old_files:  # superseded arrays, unreferenced once committed
                (self.root / rel).unlink(missing_ok=True)

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._conn.execute(sql, tuple(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    # -- arrays --------------------------------------------------------------------------------

    def _save_array(self, rel: str, data: np.ndarray | dict[str, np.ndarray]) -> None:
        """Write atomically (temporary file, fsync, rename); called inside `_write` before commit."""
        final = self.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}{final.suffix}")
        try:
            with open(tmp, "wb") as fh:
                if isinstance(data, dict):
                    np.savez(fh, **data)
                else:
                    np.save(fh, data, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        self._new_files.append(final)

    def load_array(self, rel: str) -> np.ndarray | dict[str, np.ndarray]:
        """An array file named by the database (.npy -> array, .npz -> dict of arrays)."""
        path = self.root / rel
        if not path.is_file():
            raise HarnessError(f"array file {path} named by {self.path} is missing; restore it or rerun that step")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        return np.load(path, allow_pickle=False)

    # -- competition metadata ----------------------------------------------------------------

    def set_meta(self, **values: Any) -> None:
        """Store JSON-serialisable facts by key, e.g. set_meta(task_public="..."), in one transaction."""
        with self._write() as conn:
            for key, value in values.items():
                put_meta(conn, key, value)

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def record_competition(
        self,
        *,
        config: dict[str, Any],
        config_hash: str,
        code_version: str,
        seeds: dict[str, Any] | None = None,
        allow_change: bool = False,
    ) -> None:
        """Record what produced these results; refuse to mix results of two configs unless allowed."""
        old = self.get_meta("config_hash")
        if old is not None and old != config_hash and not allow_change:
            raise HarnessError(
                f"{self.path} holds results for config hash {old} but this config hashes to {config_hash}; "
                "use another competition name or output dir, or allow the change explicitly"
            )
        with self._write() as conn:
            put_meta(conn, "config", config)
            put_meta(conn, "config_hash", config_hash)
            put_meta(conn, "code_version", code_version)
            put_meta(conn, "seeds", seeds)
            put_meta(conn, "name", config.get("name"))

    def record_time_cap(self, basis: dict[str, Any], *, leaderboard: str = "public") -> None:
        """The time cap and what it rests on: median_retrain_s, retrain_times_s, hardware, fraction, time_cap_s."""
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        if not isinstance(basis, dict):
            raise HarnessError(f"time cap basis must be a dict such as {{'time_cap_s': 12.0, ...}}, got {basis!r}")
        self.set_meta(**{f"time_cap_{leaderboard}": basis})

    def reveal_private(self, revealed: bool = True) -> None:
        """Mark the private leaderboard as revealed; only then is it written to the outputs."""
        self.set_meta(private_revealed=bool(revealed))

    @property
    def private_revealed(self) -> bool:
        return bool(self.get_meta("private_revealed", False))

    def competition(self) -> CompetitionInfo:
        meta = {r["key"]: json.loads(r["value"]) for r in self._read("SELECT key, value FROM meta")}
        config = meta.get("config")
        return CompetitionInfo(
            name=meta.get("name") or (config or {}).get("name"),
            config=config,
            config_hash=meta.get("config_hash"),
            code_version=meta.get("code_version"),
            seeds=meta.get("seeds"),
            time_caps={lb: meta[f"time_cap_{lb}"] for lb in LEADERBOARDS if isinstance(meta.get(f"time_cap_{lb}"), dict)},
            private_revealed=bool(meta.get("private_revealed", False)),
            schema_version=meta["schema_version"],
            created_at=meta.get("created_at"),
        )

    # -- submissions -------------------------------------------------------------------------

    def add_submission(
        self,
        path: str | Path,
        *,
        team: str,
        kind: str = "submission",
        exempt: bool = False,
        name: str | None = None,
        version: str | None = None,
    ) -> int:
        """The id of this file for this team: an existing one when the file is unchanged (idempotent).

        `version` defaults to `file_version(path)`; when given, it must equal it.
        """
        path = Path(path)
        if not path.is_file():
            raise HarnessError(f"submission file {path} does not exist; pass a .py file that defines unlearning()")
        _check_choice("kind", kind, KINDS)
        if not team:
            raise HarnessError(f"team must be a non-empty string, got {team!r}")
        actual = file_version(path)
        if version is not None and version != actual:
            raise HarnessError(
                f"submission {path} has version {actual} but version {version!r} was given; "
                "pass file_version(path) or leave version out"
            )
        version = actual
        with self._write() as conn:
            row = conn.execute("SELECT id FROM submissions WHERE team = ? AND version = ?", (team, version)).fetchone()
            if row is not None:
                return int(row[0])
            other = conn.execute("SELECT kind FROM submissions WHERE team = ? AND kind != ?", (team, kind)).fetchone()
            if other is not None:  # teams are unique across baselines, the oracle and submissions
                raise HarnessError(f"team {team!r} is already stored as kind {other[0]!r}, not {kind!r}; give this entry another team name")
            cur = conn.execute(
                "INSERT INTO submissions (team, name, path, version, kind, exempt, added_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (team, name or path.stem, str(path.resolve()), version, kind, int(bool(exempt)), now()),
            )
            return int(cur.lastrowid)

    def submission(self, submission_id: int) -> SubmissionRecord:
        rows = self._read("SELECT * FROM submissions WHERE id = ?", (submission_id,))
        if not rows:
            raise HarnessError(f"unknown submission id {submission_id} in {self.path}; add it with add_submission()")
        return _submission(rows[0])

    def submissions(self, *, latest_only: bool = False) -> list[SubmissionRecord]:
        """All submissions in the order added, or only each team's latest version."""
        subs = [_submission(r) for r in self._read("SELECT * FROM submissions ORDER BY id")]
        if not latest_only:
            return subs
        latest = {s.team: s for s in subs}  # later ids win
        return sorted(latest.values(), key=lambda s: s.id)

    # -- runs ----------------------------------------------------------------------------------

    def record_run(
        self,
        submission_id: int,
        *,
        leaderboard: str,
        run_index: int,
        seed: int,
        status: Status | str,
        reason: str = "",
        seconds: float | None = None,
        peak_mem_mb: float | None = None,
        log: str = "",
        retain_acc: float | None = None,
        test_acc: float | None = None,
        forget_acc: float | None = None,
        confs: np.ndarray | None = None,
        protocol: int = PROTOCOL_VERSION,
        replace: bool = False,
        cause: str = "replaced",
    ) -> int:
        """Commit one finished run (its forget-set confidences [S] file first).

        An ok run needs `confs` and the three accuracies; a failed run may have neither. With
        `replace=True` a stored run of that index moves to `superseded_runs`, with `cause`.
        """
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        status = Status.parse(status)
        if status is Status.OK and (confs is None or None in (retain_acc, test_acc, forget_acc)):
            raise HarnessError(
                f"run {run_index} of submission {submission_id} has status ok but lacks confs or an accuracy; "
                "pass all of confs, retain_acc, test_acc, forget_acc"
            )
        if confs is not None:
            confs = np.asarray(confs, dtype=np.float64)
            if confs.ndim != 1:
                raise HarnessError(
                    f"confs must be a 1-D array [S] (one confidence per forget example), got shape {confs.shape}"
                )
        with self._write() as conn:
            old = conn.execute(
                "SELECT id, confs_file FROM runs WHERE submission_id = ? AND leaderboard = ? AND run_index = ?",
                (submission_id, leaderboard, run_index),
            ).fetchone()
            if old is not None:
                if not replace:
                    raise DuplicateRunError(
                        f"run {run_index} of submission {submission_id} on the {leaderboard} leaderboard is already stored; "
                        "skip runs listed by finished_runs(), or pass replace=True to re-record it"
                    )
                conn.execute(
                    f"INSERT INTO superseded_runs ({_SUPERSEDED_COLUMNS}, superseded_at, cause)"
                    f" SELECT {_SUPERSEDED_COLUMNS}, ?, ? FROM runs WHERE id = ?",
                    (now(), one_line(cause or "", limit=REASON_LIMIT), old[0]),
                )
                conn.execute("DELETE FROM runs WHERE id = ?", (old[0],))
                if old[1]:
                    self._old_files.append(old[1])
            try:
                cur = conn.execute(
                    "INSERT INTO runs (submission_id, leaderboard, run_index, seed, status, reason, seconds, peak_mem_mb,"
                    " log, retain_acc, test_acc, forget_acc, recorded_at, protocol)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        int(submission_id),
                        leaderboard,
                        int(run_index),
                        int(seed),
                        status.value,
                        one_line(reason or "", limit=REASON_LIMIT),
                        _num(seconds),
                        _num(peak_mem_mb),
                        cap_log(log, self.log_cap),
                        _num(retain_acc),
                        _num(test_acc),
                        _num(forget_acc),
                        now(),
                        int(protocol),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise HarnessError(
                    f"cannot record run {run_index} of submission {submission_id} ({exc}); "
                    "add the submission first and pass run_index >= 0"
                ) from None
            run_id = int(cur.lastrowid)
            if confs is not None:
                rel = f"{ARRAYS_DIR}/run_{run_id}.npy"
                self._save_array(rel, confs)
                conn.execute("UPDATE runs SET confs_file = ? WHERE id = ?", (rel, run_id))
            return run_id

    def finished_runs(
        self, submission_id: int, leaderboard: str, *, statuses: Iterable[Status | str] | None = None
    ) -> set[int]:
        """Run indices already stored (any status, or only the given ones): a resumed runner skips these."""
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        sql = "SELECT run_index, status FROM runs WHERE submission_id = ? AND leaderboard = ?"
        rows = self._read(sql, (submission_id, leaderboard))
        if statuses is None:
            return {r["run_index"] for r in rows}
        wanted = {Status.parse(s).value for s in statuses}
        return {r["run_index"] for r in rows if r["status"] in wanted}

    def runs(self, submission_id: int, leaderboard: str) -> list[RunRecord]:
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        rows = self._read(
            "SELECT * FROM runs WHERE submission_id = ? AND leaderboard = ? ORDER BY run_index",
            (submission_id, leaderboard),
        )
        return [_run(r) for r in rows]

    def all_runs(self, leaderboard: str | None = None) -> list[RunRecord]:
        """Every stored run (of one leaderboard, or both), by submission and run index."""
        if leaderboard is not None:
            _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        where, params = ("WHERE leaderboard = ?", (leaderboard,)) if leaderboard else ("", ())
        rows = self._read(f"SELECT * FROM runs {where} ORDER BY submission_id, leaderboard, run_index", params)
        return [_run(r) for r in rows]

    def load_confs(self, run: RunRecord) -> np.ndarray:
        """A run's forget-set confidences [S]."""
        if run.confs_file is None:
            raise HarnessError(
                f"run {run.run_index} of submission {run.submission_id} ({run.status.value}) has no stored confidences"
            )
        return self.load_array(run.confs_file)

    def run_counts(self, leaderboard: str) -> dict[int, dict[str, int]]:
        """Per submission id, how many runs are stored with each status."""
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        rows = self._read(
            "SELECT submission_id, status, COUNT(*) AS n FROM runs WHERE leaderboard = ? GROUP BY submission_id, status",
            (leaderboard,),
        )
        out: dict[int, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r["submission_id"], {})[r["status"]] = r["n"]
        return out

    def run_confs(self, submission_id: int, leaderboard: str) -> tuple[np.ndarray, np.ndarray]:
        """(run indices [n], confidences [n, S]) of the ok runs, in run-index order, for scoring."""
        runs = [r for r in self.runs(submission_id, leaderboard=leaderboard) if r.status is Status.OK]
        index = np.array([r.run_index for r in runs], dtype=np.int64)
        if not runs:
            return index, np.zeros((0, 0), dtype=np.float64)
        arrays = [self.load_confs(r) for r in runs]
        sizes = {a.shape for a in arrays}
        if len(sizes) > 1:
            raise HarnessError(
                f"runs of submission {submission_id} ({leaderboard}) have forget confidences of different shapes "
                f"{sorted(sizes)}; the forget set changed between runs: re-record them with replace=True"
            )
        return index, np.stack(arrays)

    def superseded_runs(self, submission_id: int | None = None, leaderboard: str | None = None) -> list[SupersededRun]:
        """Replaced run rows (all, or one submission's, on one board or both), oldest first."""
        where, params = [], []
        if submission_id is not None:
            where.append("submission_id = ?")
            params.append(int(submission_id))
        if leaderboard is not None:
            _check_choice("leaderboard", leaderboard, LEADERBOARDS)
            where.append("leaderboard = ?")
            params.append(leaderboard)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(f"SELECT * FROM superseded_runs {clause} ORDER BY superseded_at, id", params)
        return [SupersededRun(**{**r, "status": Status(r["status"])}) for r in rows]

    def old_protocol_entries(self, leaderboard: str) -> dict[int, int]:
        """Submission id -> the oldest run protocol among the runs its stored score rests on (its
        first n_runs run indices), for entries where that is older than PROTOCOL_VERSION."""
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        rows = self._read(
            "SELECT r.submission_id AS sid, MIN(r.protocol) AS protocol FROM runs r JOIN scores s"
            " ON s.submission_id = r.submission_id AND s.leaderboard = r.leaderboard"
            " WHERE r.leaderboard = ? AND (s.n_runs IS NULL OR r.run_index < s.n_runs) GROUP BY r.submission_id",
            (leaderboard,),
        )
        return {r["sid"]: r["protocol"] for r in rows if r["protocol"] < PROTOCOL_VERSION}

    # -- extras --------------------------------------------------------------------------------

    def put_extra(self, submission_id: int, *, leaderboard: str, name: str, value: Any) -> None:
        """Store (or replace) one named diagnostic of an entry on a board, as JSON."""
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        if not name:
            raise HarnessError(f"an extra needs a non-empty name, got {name!r}")
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise HarnessError(f"extra {name!r} must be JSON-serialisable (plain numbers, strings, lists, dicts): {exc}") from None
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT OR REPLACE INTO extras (submission_id, leaderboard, name, value, recorded_at) VALUES (?, ?, ?, ?, ?)",
                    (int(submission_id), leaderboard, name, text, now()),
                )
            except sqlite3.IntegrityError as exc:
                raise HarnessError(f"cannot store extra {name!r} of submission {submission_id} ({exc}); add the submission first") from None

    def get_extra(self, submission_id: int, *, leaderboard: str, name: str, default: Any = None) -> Any:
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        rows = self._read(
            "SELECT value FROM extras WHERE submission_id = ? AND leaderboard = ? AND name = ?",
            (int(submission_id), leaderboard, name),
        )
        return json.loads(rows[0]["value"]) if rows else default

    def extras(self, submission_id: int, *, leaderboard: str) -> dict[str, Any]:
        """Every extra of an entry on a board, by name."""
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        rows = self._read(
            "SELECT name, value FROM extras WHERE submission_id = ? AND leaderboard = ? ORDER BY name",
            (int(submission_id), leaderboard),
        )
        return {r["name"]: json.loads(r["value"]) for r in rows}

    # -- references ----------------------------------------------------------------------------

    def record_references(
        self,
        *,
        leaderboard: str,
        cache_key: str,
        confs: np.ndarray,
        retain_acc: np.ndarray,
        test_acc: np.ndarray,
        forget_acc: np.ndarray,
        train_seconds: np.ndarray | None = None,
        path_used: str = "",
    ) -> int:
        """The reference models' forget confidences [N, S] and accuracies [N]; replaces a set with the same key."""
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        confs = np.asarray(confs, dtype=np.float64)
        if confs.ndim != 2:
            raise HarnessError(f"reference confs must be a 2-D array [N models, S examples], got shape {confs.shape}")
        n = confs.shape[0]
        accs = {}
        for key, value in (("retain_acc", retain_acc), ("test_acc", test_acc), ("forget_acc", forget_acc)):
            accs[key] = _vector(key, value, n)
        seconds = [] if train_seconds is None else _vector("train_seconds", train_seconds, n)
        with self._write() as conn:
            old = conn.execute(
                "SELECT id, confs_file FROM reference_sets WHERE leaderboard = ? AND cache_key = ?",
                (leaderboard, cache_key),
            ).fetchone()
            if old is not None:
                conn.execute("DELETE FROM reference_sets WHERE id = ?", (old[0],))
                self._old_files.append(old[1])
            cur = conn.execute(
                "INSERT INTO reference_sets (leaderboard, cache_key, n_models, confs_file, retain_acc, test_acc,"
                " forget_acc, train_seconds, path_used, recorded_at) VALUES (?, ?, ?, '', ?, ?, ?, ?, ?, ?)",
                (
                    leaderboard,
                    cache_key,
                    n,
                    json.dumps(accs["retain_acc"]),
                    json.dumps(accs["test_acc"]),
                    json.dumps(accs["forget_acc"]),
                    json.dumps(seconds),
                    path_used,
                    now(),
                ),
            )
            ref_id = int(cur.lastrowid)
            rel = f"{ARRAYS_DIR}/reference_{ref_id}.npy"
            self._save_array(rel, confs)
            conn.execute("UPDATE reference_sets SET confs_file = ? WHERE id = ?", (rel, ref_id))
            return ref_id

    def references(self, leaderboard: str) -> ReferenceRecord | None:
        """The most recently recorded reference set for a leaderboard, or None."""
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        rows = self._read("SELECT * FROM reference_sets WHERE leaderboard = ? ORDER BY id DESC LIMIT 1", (leaderboard,))
        if not rows:
            return None
        r = rows[0]
        vec = {k: np.asarray(json.loads(r[k]), dtype=np.float64) for k in ("retain_acc", "test_acc", "forget_acc", "train_seconds")}
        return ReferenceRecord(
            id=r["id"],
            leaderboard=r["leaderboard"],
            cache_key=r["cache_key"],
            n_models=r["n_models"],
            confs_file=r["confs_file"],
            path_used=r["path_used"],
            recorded_at=r["recorded_at"],
            **vec,
        )

    def reference_confs(self, leaderboard: str) -> np.ndarray | None:
        ref = self.references(leaderboard=leaderboard)
        return None if ref is None else self.load_array(ref.confs_file)

    # -- scores --------------------------------------------------------------------------------

    def record_score(
        self,
        submission_id: int,
        *,
        leaderboard: str,
        status: Status | str,
        reason: str = "",
        final_score: float | None = None,
        forget_quality: float | None = None,
        ci_low: float | None = None,
        ci_high: float | None = None,
        retain_ratio: float | None = None,
        test_ratio: float | None = None,
        retain_acc: float | None = None,
        test_acc: float | None = None,
        forget_acc: float | None = None,
        noise_floor: float | None = None,
        n_models: int | None = None,
        n_runs: int | None = None,
        n_ok: int | None = None,
        median_run_s: float | None = None,
        worst_run_s: float | None = None,
        time_cap_s: float | None = None,
        metric_version: str | int | None = None,
        example_eps: np.ndarray | None = None,
        example_points: np.ndarray | None = None,
        score: Any = None,
    ) -> int:
        """Store (or overwrite: rescoring) a submission's score; per-example eps/points go to an .npz.

        `score` may be a `harness.scoring.scores.Score`: its fields (and `example_eps`, `example_points`
        where it has them) fill every argument left at None.
        """
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        status = Status.parse(status)
        given = {
            "final_score": final_score, "forget_quality": forget_quality, "ci_low": ci_low, "ci_high": ci_high,
            "retain_ratio": retain_ratio, "test_ratio": test_ratio, "retain_acc": retain_acc, "test_acc": test_acc,
            "forget_acc": forget_acc, "noise_floor": noise_floor, "median_run_s": median_run_s,
            "worst_run_s": worst_run_s, "time_cap_s": time_cap_s, "n_models": n_models, "n_runs": n_runs, "n_ok": n_ok,
            "example_eps": example_eps, "example_points": example_points,
        }  # fmt: skip
        if score is not None:
            for key, value in given.items():
                if value is None:
                    given[key] = getattr(score, key, None)
        example_eps, example_points = given.pop("example_eps"), given.pop("example_points")
        arrays = {}
        for key, value in (("eps", example_eps), ("points", example_points)):
            if value is not None:
                arr = np.asarray(value, dtype=np.float64)
                if arr.ndim != 1:
                    raise HarnessError(f"example_{key} must be a 1-D array [S], got shape {arr.shape}")
                arrays[key] = arr
        if len({a.shape for a in arrays.values()}) > 1:
            raise HarnessError(
                f"example_eps and example_points must have the same length, got {arrays['eps'].size} and {arrays['points'].size}"
            )
        ints = ("n_models", "n_runs", "n_ok")
        row = {k: (None if v is None else int(v)) if k in ints else _num(v) for k, v in given.items()}
        row.update(
            submission_id=int(submission_id),
            leaderboard=leaderboard,
            status=status.value,
            reason=one_line(reason or "", limit=REASON_LIMIT),
            metric_version=None if metric_version is None else str(metric_version),
            scored_at=now(),
        )
        with self._write() as conn:
            old = conn.execute(
                "SELECT id, arrays_file FROM scores WHERE submission_id = ? AND leaderboard = ?",
                (submission_id, leaderboard),
            ).fetchone()
            if old is not None:
                conn.execute("DELETE FROM scores WHERE id = ?", (old[0],))
                if old[1]:
                    self._old_files.append(old[1])
            cols = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            try:
                cur = conn.execute(f"INSERT INTO scores ({cols}) VALUES ({marks})", tuple(row.values()))
            except sqlite3.IntegrityError as exc:
                raise HarnessError(
                    f"cannot record the score of submission {submission_id} ({exc}); add the submission first"
                ) from None
            score_id = int(cur.lastrowid)
            if arrays:
                rel = f"{ARRAYS_DIR}/score_{score_id}.npz"
                self._save_array(rel, arrays)
                conn.execute("UPDATE scores SET arrays_file = ? WHERE id = ?", (rel, score_id))
            return score_id

    def score(self, submission_id: int, leaderboard: str) -> ScoreRecord | None:
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        rows = self._read("SELECT * FROM scores WHERE submission_id = ? AND leaderboard = ?", (submission_id, leaderboard))
        return _score(rows[0]) if rows else None

    def scores(self, leaderboard: str) -> list[ScoreRecord]:
        _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        rows = self._read("SELECT * FROM scores WHERE leaderboard = ? ORDER BY submission_id", (leaderboard,))
        return [_score(r) for r in rows]

    def score_arrays(self, submission_id: int, leaderboard: str) -> dict[str, np.ndarray]:
        """Per-example arrays stored with the score: {'eps': [S], 'points': [S]} (either may be absent)."""
        score = self.score(submission_id, leaderboard=leaderboard)
        if score is None or score.arrays_file is None:
            return {}
        return self.load_array(score.arrays_file)

    def clear_scores(self, *, leaderboard: str | None = None) -> int:
        """Delete scores (all, or one leaderboard's) before a full rescore; runs are kept. Returns how many."""
        if leaderboard is not None:
            _check_choice("leaderboard", leaderboard, LEADERBOARDS)
        with self._write() as conn:
            where, params = ("WHERE leaderboard = ?", (leaderboard,)) if leaderboard else ("", ())
            files = [r[0] for r in conn.execute(f"SELECT arrays_file FROM scores {where}", params) if r[0]]
            cur = conn.execute(f"DELETE FROM scores {where}", params)
            self._old_files.extend(files)
            return cur.rowcount


# -- helpers -------------------------------------------------------------------------------------


_SUPERSEDED_COLUMNS = (
    "id, submission_id, leaderboard, run_index, seed, status, reason, seconds, peak_mem_mb, log,"
    " retain_acc, test_acc, forget_acc, protocol, recorded_at"
)
def cap_log(text: str, limit: int) -> str:
    """Keep a quarter of the limit from the head and the rest from the tail (where tracebacks are)."""
    text = text or ""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    dropped = len(text) - head - tail
    return f"{text[:head]}\n[... {dropped} characters dropped ...]\n{text[-tail:]}"


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value


def _vector(name: str, value: Any, n: int) -> list[float]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise HarnessError(f"reference {name} must have one value per model (shape ({n},)), got shape {arr.shape}")
    return [float(x) for x in arr]


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise HarnessError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _submission(r: dict[str, Any]) -> SubmissionRecord:
    return SubmissionRecord(**{**r, "exempt": bool(r["exempt"])})


def _run(r: dict[str, Any]) -> RunRecord:
    return RunRecord(**{**r, "status": Status(r["status"])})


def _score(r: dict[str, Any]) -> ScoreRecord:
    return ScoreRecord(**{**r, "status": Status(r["status"])})
