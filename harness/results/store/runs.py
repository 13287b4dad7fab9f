"""Runs: one row per (submission, board, run index) with its forget-set confidences file; a
replaced row moves to `superseded_runs` with why; what a resumed runner and scoring read back."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.results.schema import now
from harness.results.store.base import ARRAYS_DIR, REASON_LIMIT, StoreBase, check_board, number
from harness.results.store.records import RunRecord, SupersededRun, run_record, superseded_record
from harness.sandbox.outcomes import one_line
from harness.sandbox.protocol import PROTOCOL_VERSION
from harness.statuses import Status

_SUPERSEDED_COLUMNS = (
    "id, submission_id, leaderboard, run_index, seed, status, reason, seconds, peak_mem_mb, log,"
    " retain_acc, test_acc, forget_acc, protocol, recorded_at"
)


class DuplicateRunError(HarnessError):
    """A run that is already stored was recorded again without `replace=True`."""


def cap_log(text: str, limit: int) -> str:
    """Keep a quarter of the limit from the head and the rest from the tail (where tracebacks are)."""
    text = text or ""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    dropped = len(text) - head - tail
    return f"{text[:head]}\n[... {dropped} characters dropped ...]\n{text[-tail:]}"


def _checked_confs(submission_id: int, run_index: int, status: Status, confs: Any, accuracies: tuple) -> np.ndarray | None:
    """An ok run's confidences as float64 [S]; a failed run may have none."""
    if status is Status.OK and (confs is None or None in accuracies):
        raise HarnessError(
            f"run {run_index} of submission {submission_id} has status ok but lacks confs or an accuracy; "
            "pass all of confs, retain_acc, test_acc, forget_acc"
        )
    if confs is None:
        return None
    confs = np.asarray(confs, dtype=np.float64)
    if confs.ndim != 1:
        raise HarnessError(f"confs must be a 1-D array [S] (one confidence per forget example), got shape {confs.shape}")
    return confs


class RunRecords(StoreBase):
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
        check_board(leaderboard)
        status = Status.parse(status)
        confs = _checked_confs(submission_id, run_index, status, confs, (retain_acc, test_acc, forget_acc))
        row = {
            "submission_id": int(submission_id), "leaderboard": leaderboard, "run_index": int(run_index), "seed": int(seed),
            "status": status.value, "reason": one_line(reason or "", limit=REASON_LIMIT), "seconds": number(seconds),
            "peak_mem_mb": number(peak_mem_mb), "log": cap_log(log, self.log_cap), "retain_acc": number(retain_acc),
            "test_acc": number(test_acc), "forget_acc": number(forget_acc), "protocol": int(protocol),
        }  # fmt: skip
        with self._write() as conn:
            self._supersede_run(conn, submission_id, leaderboard, run_index, replace=replace, cause=cause)
            run_id = self._insert_run(conn, row)
            if confs is not None:
                self._attach_array(conn, "runs", run_id, "confs_file", f"{ARRAYS_DIR}/run_{run_id}.npy", confs)
            return run_id

    def _supersede_run(self, conn: sqlite3.Connection, submission_id: int, leaderboard: str, run_index: int, *,
                       replace: bool, cause: str) -> None:
        """A stored run of this index: refused, or (replace=True) moved to superseded_runs with `cause`."""
        old = conn.execute(
            "SELECT id, confs_file FROM runs WHERE submission_id = ? AND leaderboard = ? AND run_index = ?",
            (submission_id, leaderboard, run_index),
        ).fetchone()
        if old is None:
            return
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
        self._drop_row(conn, "runs", old[0], old[1])

    @staticmethod
    def _insert_run(conn: sqlite3.Connection, row: dict[str, Any]) -> int:
        row = {**row, "recorded_at": now()}
        try:
            cur = conn.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values()))
        except sqlite3.IntegrityError as exc:
            raise HarnessError(
                f"cannot record run {row['run_index']} of submission {row['submission_id']} ({exc}); "
                "add the submission first and pass run_index >= 0"
            ) from None
        return int(cur.lastrowid)

    def finished_runs(
        self, submission_id: int, leaderboard: str, *, statuses: Iterable[Status | str] | None = None
    ) -> set[int]:
        """Run indices already stored (any status, or only the given ones): a resumed runner skips these."""
        check_board(leaderboard)
        sql = "SELECT run_index, status FROM runs WHERE submission_id = ? AND leaderboard = ?"
        rows = self._read(sql, (submission_id, leaderboard))
        if statuses is None:
            return {r["run_index"] for r in rows}
        wanted = {Status.parse(s).value for s in statuses}
        return {r["run_index"] for r in rows if r["status"] in wanted}

    def runs(self, submission_id: int, leaderboard: str) -> list[RunRecord]:
        check_board(leaderboard)
        rows = self._read(
            "SELECT * FROM runs WHERE submission_id = ? AND leaderboard = ? ORDER BY run_index",
            (submission_id, leaderboard),
        )
        return [run_record(r) for r in rows]

    def all_runs(self, leaderboard: str | None = None) -> list[RunRecord]:
        """Every stored run (of one leaderboard, or both), by submission and run index."""
        if leaderboard is not None:
            check_board(leaderboard)
        where, params = ("WHERE leaderboard = ?", (leaderboard,)) if leaderboard else ("", ())
        rows = self._read(f"SELECT * FROM runs {where} ORDER BY submission_id, leaderboard, run_index", params)
        return [run_record(r) for r in rows]

    def load_confs(self, run: RunRecord) -> np.ndarray:
        """A run's forget-set confidences [S]."""
        if run.confs_file is None:
            raise HarnessError(
                f"run {run.run_index} of submission {run.submission_id} ({run.status.value}) has no stored confidences"
            )
        return self.load_array(run.confs_file)

    def run_counts(self, leaderboard: str) -> dict[int, dict[str, int]]:
        """Per submission id, how many runs are stored with each status."""
        check_board(leaderboard)
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
            check_board(leaderboard)
            where.append("leaderboard = ?")
            params.append(leaderboard)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(f"SELECT * FROM superseded_runs {clause} ORDER BY superseded_at, id", params)
        return [superseded_record(r) for r in rows]

    def old_protocol_entries(self, leaderboard: str) -> dict[int, int]:
        """Submission id -> the oldest run protocol among the runs its stored score rests on (its
        first n_runs run indices), for entries where that is older than PROTOCOL_VERSION."""
        check_board(leaderboard)
        rows = self._read(
            "SELECT r.submission_id AS sid, MIN(r.protocol) AS protocol FROM runs r JOIN scores s"
            " ON s.submission_id = r.submission_id AND s.leaderboard = r.leaderboard"
            " WHERE r.leaderboard = ? AND (s.n_runs IS NULL OR r.run_index < s.n_runs) GROUP BY r.submission_id",
            (leaderboard,),
        )
        return {r["sid"]: r["protocol"] for r in rows if r["protocol"] < PROTOCOL_VERSION}
