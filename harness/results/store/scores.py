"""Scores: one row per (submission, board), overwritten by rescoring, with the per-example
`eps` and `points` [S] in an .npz beside it."""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.results.schema import now
from harness.results.store.base import ARRAYS_DIR, REASON_LIMIT, StoreBase, check_board, number
from harness.results.store.records import ScoreRecord, score_record
from harness.sandbox.outcomes import one_line
from harness.statuses import Status

_INTS = ("n_models", "n_runs", "n_ok")


def _with_score(given: dict[str, Any], score: Any) -> dict[str, Any]:
    """The arguments given, each one left at None taken from `score` (a scores.Score) where it has it."""
    if score is None:
        return dict(given)
    return {key: getattr(score, key, None) if value is None else value for key, value in given.items()}


def _example_arrays(example_eps: Any, example_points: Any) -> dict[str, np.ndarray]:
    """The per-example arrays given, as float64 [S] of one length."""
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
    return arrays


class ScoreRecords(StoreBase):
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
        check_board(leaderboard)
        status = Status.parse(status)
        given = _with_score({
            "final_score": final_score, "forget_quality": forget_quality, "ci_low": ci_low, "ci_high": ci_high,
            "retain_ratio": retain_ratio, "test_ratio": test_ratio, "retain_acc": retain_acc, "test_acc": test_acc,
            "forget_acc": forget_acc, "noise_floor": noise_floor, "median_run_s": median_run_s,
            "worst_run_s": worst_run_s, "time_cap_s": time_cap_s, "n_models": n_models, "n_runs": n_runs, "n_ok": n_ok,
            "example_eps": example_eps, "example_points": example_points,
        }, score)  # fmt: skip
        arrays = _example_arrays(given.pop("example_eps"), given.pop("example_points"))
        row = {k: (None if v is None else int(v)) if k in _INTS else number(v) for k, v in given.items()}
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
                self._drop_row(conn, "scores", old[0], old[1])
            score_id = self._insert_score(conn, row)
            if arrays:
                self._attach_array(conn, "scores", score_id, "arrays_file", f"{ARRAYS_DIR}/score_{score_id}.npz", arrays)
            return score_id

    @staticmethod
    def _insert_score(conn: sqlite3.Connection, row: dict[str, Any]) -> int:
        try:
            cur = conn.execute(f"INSERT INTO scores ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values()))
        except sqlite3.IntegrityError as exc:
            raise HarnessError(
                f"cannot record the score of submission {row['submission_id']} ({exc}); add the submission first"
            ) from None
        return int(cur.lastrowid)

    def score(self, submission_id: int, leaderboard: str) -> ScoreRecord | None:
        check_board(leaderboard)
        rows = self._read("SELECT * FROM scores WHERE submission_id = ? AND leaderboard = ?", (submission_id, leaderboard))
        return score_record(rows[0]) if rows else None

    def scores(self, leaderboard: str) -> list[ScoreRecord]:
        check_board(leaderboard)
        rows = self._read("SELECT * FROM scores WHERE leaderboard = ? ORDER BY submission_id", (leaderboard,))
        return [score_record(r) for r in rows]

    def score_arrays(self, submission_id: int, leaderboard: str) -> dict[str, np.ndarray]:
        """Per-example arrays stored with the score: {'eps': [S], 'points': [S]} (either may be absent)."""
        score = self.score(submission_id, leaderboard=leaderboard)
        if score is None or score.arrays_file is None:
            return {}
        return self.load_array(score.arrays_file)

    def clear_scores(self, *, leaderboard: str | None = None) -> int:
        """Delete scores (all, or one leaderboard's) before a full rescore; runs are kept. Returns how many."""
        if leaderboard is not None:
            check_board(leaderboard)
        with self._write() as conn:
            where, params = ("WHERE leaderboard = ?", (leaderboard,)) if leaderboard else ("", ())
            files = [r[0] for r in conn.execute(f"SELECT arrays_file FROM scores {where}", params) if r[0]]
            cur = conn.execute(f"DELETE FROM scores {where}", params)
            self._old_files.extend(files)
            return cur.rowcount
