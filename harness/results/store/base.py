"""The store's file and connection: opening (create, check, migrate), one-transaction writes,
reads as dicts, array files written before the row that names them; and the value checks every
concern's records share."""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import numpy as np

from harness.errors import HarnessError
from harness.results.schema import check_integrity, check_store_file, create_schema, init_schema, not_a_store

LEADERBOARDS = ("public", "private")
KINDS = ("submission", "baseline", "oracle")
DEFAULT_LOG_CAP = 64 * 1024  # characters of a run's log kept in the database
ARRAYS_DIR = "arrays"
REASON_LIMIT = 1000  # characters of a stored reason; the sandbox's own are shorter (outcomes.REASON_CHARS)


class StoreBase:
    """A store file opened for reading and writing; the concerns' mixins (competition, submissions,
    runs, references, scores, extras) add their records and queries on top."""

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

    def __enter__(self) -> Self:
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

    def _attach_array(self, conn: sqlite3.Connection, table: str, row_id: int, column: str, rel: str,
                      data: np.ndarray | dict[str, np.ndarray]) -> None:
        """Save a row's array file, then name it in the row (same transaction: both or neither)."""
        self._save_array(rel, data)
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (rel, row_id))

    def _drop_row(self, conn: sqlite3.Connection, table: str, row_id: int, file: str | None) -> None:
        """Delete a replaced row; its array file goes once the transaction commits."""
        conn.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,))
        if file:
            self._old_files.append(file)

    def load_array(self, rel: str) -> np.ndarray | dict[str, np.ndarray]:
        """An array file named by the database (.npy -> array, .npz -> dict of arrays)."""
        path = self.root / rel
        if not path.is_file():
            raise HarnessError(f"array file {path} named by {self.path} is missing; restore it or rerun that step")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        return np.load(path, allow_pickle=False)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise HarnessError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_board(leaderboard: Any) -> None:
    check_choice("leaderboard", leaderboard, LEADERBOARDS)


def number(value: Any) -> float | None:
    """A float column's value: None for None and NaN."""
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value
