"""The results store's file and schema: what a store file must be before SQLite opens it, the
first schema, the migrations that take it to SCHEMA_VERSION, and the checks that refuse a file
that is not a store (`NotAStoreError`). `harness.results.store.Store` opens files through here.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.statuses import Status

SCHEMA_VERSION = 2

_STATUS_SQL = ", ".join(f"'{s.value}'" for s in Status)
# The first schema; MIGRATIONS take it to SCHEMA_VERSION (a new store is made the same way).
_SCHEMA_V1 = f"""
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    team TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    version TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('submission', 'baseline', 'oracle')),
    exempt INTEGER NOT NULL CHECK (exempt IN (0, 1)),
    added_at TEXT NOT NULL,
    UNIQUE (team, version)
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    submission_id INTEGER NOT NULL REFERENCES submissions (id),
    leaderboard TEXT NOT NULL CHECK (leaderboard IN ('public', 'private')),
    run_index INTEGER NOT NULL CHECK (run_index >= 0),
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({_STATUS_SQL})),
    reason TEXT NOT NULL,
    seconds REAL,
    peak_mem_mb REAL,
    log TEXT NOT NULL,
    retain_acc REAL,
    test_acc REAL,
    forget_acc REAL,
    confs_file TEXT,
    recorded_at TEXT NOT NULL,
    UNIQUE (submission_id, leaderboard, run_index)
);
CREATE TABLE reference_sets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    leaderboard TEXT NOT NULL CHECK (leaderboard IN ('public', 'private')),
    cache_key TEXT NOT NULL,
    n_models INTEGER NOT NULL,
    confs_file TEXT NOT NULL,
    retain_acc TEXT NOT NULL,
    test_acc TEXT NOT NULL,
    forget_acc TEXT NOT NULL,
    train_seconds TEXT NOT NULL,
    path_used TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    UNIQUE (leaderboard, cache_key)
);
CREATE TABLE scores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    submission_id INTEGER NOT NULL REFERENCES submissions (id),
    leaderboard TEXT NOT NULL CHECK (leaderboard IN ('public', 'private')),
    status TEXT NOT NULL CHECK (status IN ({_STATUS_SQL})),
    reason TEXT NOT NULL,
    final_score REAL,
    forget_quality REAL,
    ci_low REAL,
    ci_high REAL,
    retain_ratio REAL,
    test_ratio REAL,
    retain_acc REAL,
    test_acc REAL,
    forget_acc REAL,
    noise_floor REAL,
    n_models INTEGER,
    n_runs INTEGER,
    n_ok INTEGER,
    median_run_s REAL,
    worst_run_s REAL,
    time_cap_s REAL,
    metric_version TEXT,
    arrays_file TEXT,
    scored_at TEXT NOT NULL,
    UNIQUE (submission_id, leaderboard)
);
CREATE INDEX runs_by_submission ON runs (submission_id, leaderboard, status);
"""

_V1_TO_V2 = f"""
ALTER TABLE runs ADD COLUMN protocol INTEGER NOT NULL DEFAULT 1;
CREATE TABLE superseded_runs (
    id INTEGER PRIMARY KEY,
    submission_id INTEGER NOT NULL REFERENCES submissions (id),
    leaderboard TEXT NOT NULL CHECK (leaderboard IN ('public', 'private')),
    run_index INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({_STATUS_SQL})),
    reason TEXT NOT NULL,
    seconds REAL,
    peak_mem_mb REAL,
    log TEXT NOT NULL,
    retain_acc REAL,
    test_acc REAL,
    forget_acc REAL,
    protocol INTEGER NOT NULL,
    recorded_at TEXT NOT NULL,
    superseded_at TEXT NOT NULL,
    cause TEXT NOT NULL
);
CREATE INDEX superseded_by_submission ON superseded_runs (submission_id, leaderboard, run_index);
CREATE TABLE extras (
    submission_id INTEGER NOT NULL REFERENCES submissions (id),
    leaderboard TEXT NOT NULL CHECK (leaderboard IN ('public', 'private')),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (submission_id, leaderboard, name)
);
"""


def _statements(script: str) -> list[str]:
    return [statement for statement in script.split(";") if statement.strip()]


# MIGRATIONS[v] takes a store from schema v to v + 1 (SQL statements, run in the caller's
# transaction). Version 2: each run's protocol (rows before it are protocol 1), superseded runs
# kept as history, and per-entry extras.
MIGRATIONS: dict[int, list[str]] = {
    1: _statements(_V1_TO_V2),
}
if sorted(MIGRATIONS) != list(range(1, SCHEMA_VERSION)):
    raise RuntimeError(f"harness.results.schema: MIGRATIONS must take every schema 1..{SCHEMA_VERSION - 1} one step up")


class NotAStoreError(HarnessError):
    """The file is not a results store (empty, damaged, foreign): nothing is read from or written to it."""


def put_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value, default=str)))


def check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """A damaged, truncated or foreign file fails here, before anything is written to it."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        raise not_a_store(path, f"damaged or truncated: {problems[0]}")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "meta" not in tables and tables - {"sqlite_sequence"}:  # before WAL mode rewrites its header
        raise not_a_store(path, f"an SQLite database with other tables ({', '.join(sorted(tables))})")

def init_schema(conn: sqlite3.Connection, path: Path) -> None:
    """An opened store's schema, brought to SCHEMA_VERSION inside the caller's transaction."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "meta" not in tables:  # an SQLite file with no tables at all (foreign ones are refused earlier)
        create_schema(conn, path)
        return
    migrate(conn, path, record=True)

def create_schema(conn: sqlite3.Connection, path: Path) -> None:
    """A new store: the first schema with every migration applied, inside the caller's transaction."""
    for statement in _statements(_SCHEMA_V1):
        conn.execute(statement)
    put_meta(conn, "schema_version", 1)
    put_meta(conn, "created_at", now())
    put_meta(conn, "private_revealed", False)
    migrate(conn, path, record=False)

def migrate(conn: sqlite3.Connection, path: Path, *, record: bool) -> None:
    """Bring the schema to SCHEMA_VERSION, inside the caller's transaction (all steps or none)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = json.loads(row[0]) if row is not None else None
    if not isinstance(version, int) or version < 1:
        raise not_a_store(path, "its 'meta' table has no schema version")
    if version > SCHEMA_VERSION:
        raise HarnessError(
            f"{path} was written by a newer harness (schema {version} > {SCHEMA_VERSION}); upgrade the harness"
        )
    if version == SCHEMA_VERSION:
        return
    history = json.loads((conn.execute("SELECT value FROM meta WHERE key = 'migrations'").fetchone() or ["[]"])[0])
    for step in range(version, SCHEMA_VERSION):
        for statement in MIGRATIONS[step]:
            conn.execute(statement)
        if record:
            history.append({"from": step, "to": step + 1, "at": now()})
    put_meta(conn, "schema_version", SCHEMA_VERSION)
    if record:
        put_meta(conn, "migrations", history)


_SQLITE_MAGIC = b"SQLite format 3\x00"
_FIX = "restore it from a backup, or move it away to start this competition afresh"


def not_a_store(path: Path, why: str) -> NotAStoreError:
    return NotAStoreError(f"{path} is not a results store ({' '.join(why.split())}); {_FIX}")


def check_store_file(path: Path) -> None:
    """Refuse, before SQLite touches it, a path that cannot be a store (SQLite would take an empty
    file for a new database and write a schema into it)."""
    if not path.is_file():
        raise not_a_store(path, "not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise not_a_store(path, "an empty file, 0 bytes")
    with open(path, "rb") as fh:
        head = fh.read(100)  # the SQLite header
    if head[: len(_SQLITE_MAGIC)] != _SQLITE_MAGIC:
        raise not_a_store(path, f"not an SQLite database, {size} bytes")
    if Path(f"{path}-wal").exists():
        return  # pages may still sit in the write-ahead log; SQLite's own checks follow
    page_size = int.from_bytes(head[16:18], "big") if len(head) == 100 else 0
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big") if len(head) == 100 else 0
    if not page_size or size % page_size or pages * page_size > size:
        raise not_a_store(path, f"truncated: {size} bytes, its header says {pages} pages of {page_size} bytes")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
