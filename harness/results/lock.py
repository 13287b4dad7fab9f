"""One writer per run folder: a kernel lock (`fcntl.flock`) on `<run folder>/writer.lock`.

Every command that writes a competition's store (run, score, rescore, leaderboard
--reveal-private, check-baselines, references import, dry-run) holds it for its whole write; a
second writer fails at once with `FolderLockedError`, naming the holder's pid, command and start
time, which the holder writes into the lock file. The kernel drops the lock when its holder's
file closes, however it ends: a holder killed with SIGKILL leaves a folder that is free again at
once, with no stale lock to clear. The lock file itself stays (its text is read only while
somebody holds the lock).

Reentrant within a process (check-baselines runs a competition under its own lock), and never
inherited: the descriptor is close-on-exec, so no sandboxed or pool worker keeps a folder locked
after its driver died.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from harness.errors import HarnessError

LOCK_FILE = "writer.lock"

_held: dict[Path, list] = {}  # resolved lock path -> [file object, depth]
_guard = threading.Lock()


class FolderLockedError(HarnessError):
    """Another process writes this run folder now."""


@contextlib.contextmanager
def writer_lock(run_dir: str | Path, *, command: str | None = None) -> Iterator[Path]:
    """Hold the run folder's writer lock for the block; raise FolderLockedError if another process holds it."""
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / LOCK_FILE).resolve()
    with _guard:
        if path in _held:
            _held[path][1] += 1
        else:
            _held[path] = [_acquire(path, command), 1]
    try:
        yield path
    finally:
        with _guard:
            entry = _held[path]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                entry[0].close()  # releases the flock


def lock_holder(run_dir: str | Path) -> dict | None:
    """Who holds the folder's writer lock now (pid, command, started, host), or None when it is free."""
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return None
    with open(path, "r+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fh)
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


def _acquire(path: Path, command: str | None):
    fh = open(path, "a+")  # never truncated before the lock is ours: the holder's text stays readable
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fh)
        fh.close()
        raise FolderLockedError(
            f"{path.parent} is being written by another process ({_describe(holder)}); "
            "wait for it to finish or stop it, then run this again"
        ) from None
    except BaseException:
        fh.close()
        raise
    info = {
        "pid": os.getpid(),
        "command": command or " ".join(["unlearn", *sys.argv[1:]]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
    }
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(info) + "\n")
    fh.flush()
    return fh


def _read_holder(fh) -> dict:
    fh.seek(0)
    try:
        holder = json.loads(fh.read() or "{}")
    except ValueError:
        holder = {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "pid unknown: it is starting"
    parts = [f"pid {holder['pid']}"]
    if holder.get("host") and holder["host"] != socket.gethostname():
        parts[0] += f" on {holder['host']}"
    if holder.get("command"):
        parts.append(f"`{holder['command']}`")
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    return ", ".join(parts)
