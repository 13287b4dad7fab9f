"""What produced a store's results (config, its hash, code version, seeds), each board's time
cap, whether the private board is revealed: facts by key in the `meta` table."""

from __future__ import annotations

import json
from typing import Any

from harness.errors import HarnessError
from harness.results.schema import put_meta
from harness.results.store.base import LEADERBOARDS, StoreBase, check_board
from harness.results.store.records import CompetitionInfo


class CompetitionRecords(StoreBase):
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
        check_board(leaderboard)
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
