"""Entries: one row per (team, file version); adding the same file again is a no-op."""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness.errors import HarnessError
from harness.results.schema import now
from harness.results.store.base import KINDS, StoreBase, check_choice
from harness.results.store.records import SubmissionRecord, submission_record


def file_version(path: str | Path) -> str:
    """A submission's version: the first 16 hex digits of its file's sha256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class SubmissionRecords(StoreBase):
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
        check_choice("kind", kind, KINDS)
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
        return submission_record(rows[0])

    def submissions(self, *, latest_only: bool = False) -> list[SubmissionRecord]:
        """All submissions in the order added, or only each team's latest version."""
        subs = [submission_record(r) for r in self._read("SELECT * FROM submissions ORDER BY id")]
        if not latest_only:
            return subs
        latest = {s.team: s for s in subs}  # later ids win
        return sorted(latest.values(), key=lambda s: s.id)
