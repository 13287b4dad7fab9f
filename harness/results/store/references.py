"""Reference sets: the retrained models' forget confidences [N, S] (a file) and accuracies [N]
per board and cache key; recording a key again replaces its set."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.results.schema import now
from harness.results.store.base import ARRAYS_DIR, StoreBase, check_board
from harness.results.store.records import ReferenceRecord

_VECTORS = ("retain_acc", "test_acc", "forget_acc", "train_seconds")


def _vector(name: str, value: Any, n: int) -> list[float]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise HarnessError(f"reference {name} must have one value per model (shape ({n},)), got shape {arr.shape}")
    return [float(x) for x in arr]


class ReferenceRecords(StoreBase):
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
        check_board(leaderboard)
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
                self._drop_row(conn, "reference_sets", old[0], old[1])
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
            self._attach_array(conn, "reference_sets", ref_id, "confs_file", f"{ARRAYS_DIR}/reference_{ref_id}.npy", confs)
            return ref_id

    def references(self, leaderboard: str) -> ReferenceRecord | None:
        """The most recently recorded reference set for a leaderboard, or None."""
        check_board(leaderboard)
        rows = self._read("SELECT * FROM reference_sets WHERE leaderboard = ? ORDER BY id DESC LIMIT 1", (leaderboard,))
        if not rows:
            return None
        r = rows[0]
        vec = {k: np.asarray(json.loads(r[k]), dtype=np.float64) for k in _VECTORS}
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
