"""Extras: per-entry diagnostics by (submission, board, name) as JSON, so a later feature adds a
name without a schema change; rescoring keeps them."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from harness.errors import HarnessError
from harness.results.schema import now
from harness.results.store.base import StoreBase, check_board


class ExtraRecords(StoreBase):
    def put_extra(self, submission_id: int, *, leaderboard: str, name: str, value: Any) -> None:
        """Store (or replace) one named diagnostic of an entry on a board, as JSON."""
        check_board(leaderboard)
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
        check_board(leaderboard)
        rows = self._read(
            "SELECT value FROM extras WHERE submission_id = ? AND leaderboard = ? AND name = ?",
            (int(submission_id), leaderboard, name),
        )
        return json.loads(rows[0]["value"]) if rows else default

    def extras(self, submission_id: int, *, leaderboard: str) -> dict[str, Any]:
        """Every extra of an entry on a board, by name."""
        check_board(leaderboard)
        rows = self._read(
            "SELECT name, value FROM extras WHERE submission_id = ? AND leaderboard = ? ORDER BY name",
            (int(submission_id), leaderboard),
        )
        return {r["name"]: json.loads(r["value"]) for r in rows}
