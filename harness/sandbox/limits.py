"""OS resource limits for the worker, and the unprivileged user a root host runs it as.

Why these limits and not others (see DESIGN.md, Known pitfalls):
- memory: RLIMIT_DATA (heap and private writable mappings, per process). RLIMIT_AS would also
  count CUDA's huge address-space reservations and break CUDA initialisation.
- processes: RLIMIT_NPROC, counted by the kernel per real user id (threads included), and
  ignored for uid 0 and for holders of CAP_SYS_RESOURCE/CAP_SYS_ADMIN in the initial user
  namespace. A user namespace created by root maps the sandbox's user to uid 0 outside, which
  the kernel exempts, so a root host instead runs each worker as its own unprivileged uid
  (`first_uid + slot`, one slot per concurrent sandbox, so one submission's fork bomb cannot eat
  another's quota). The limit is set relative to what that uid already runs.
- file size: RLIMIT_FSIZE (Python ignores SIGXFSZ, so a write past it raises OSError).
- core dumps: off.
"""

from __future__ import annotations

import fcntl
import os
import resource
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

MIB = 1024 * 1024
UID_SLOTS = 1000


@dataclass(frozen=True)
class Rlimits:
    """Soft = hard limits in the units setrlimit takes; None leaves one as inherited."""

    data_bytes: int | None
    nproc: int | None
    fsize_bytes: int | None
    core_bytes: int | None = 0

    def items(self) -> list[tuple[int, int]]:
        pairs = [
            (resource.RLIMIT_DATA, self.data_bytes),
            (resource.RLIMIT_NPROC, self.nproc),
            (resource.RLIMIT_FSIZE, self.fsize_bytes),
            (resource.RLIMIT_CORE, self.core_bytes),
        ]
        return [(which, value) for which, value in pairs if value is not None]


def rlimits_for(*, memory_gb: float | None, max_processes: int | None, max_file_size_mb: int | None, uid: int) -> Rlimits:
    """Limits for a worker that will run as `uid`; the process limit counts what `uid` already runs."""
    return Rlimits(
        data_bytes=None if memory_gb is None else int(memory_gb * 1024 * MIB),
        nproc=None if max_processes is None else count_tasks(uid) + max_processes,
        fsize_bytes=None if max_file_size_mb is None else int(max_file_size_mb) * MIB,
    )


def apply_rlimits(limits: Rlimits) -> None:
    """Lower the calling process's limits (never raises a hard limit above the inherited one)."""
    for which, value in limits.items():
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def preexec(limits: Rlimits) -> Callable[[], None]:
    """A Popen preexec_fn: set the limits in the child just before exec (bwrap passes them on)."""

    def _apply() -> None:
        apply_rlimits(limits)

    return _apply


def count_tasks(uid: int) -> int:
    """Processes plus threads whose real uid is `uid`: what RLIMIT_NPROC counts against."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue  # ended meanwhile
        try:
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields.get("Threads", "1"))
        except (KeyError, ValueError, IndexError):
            continue
    return total


class UidSlot:
    """One concurrent sandbox's slot, held (by an flock) for its lifetime: its index picks its
    cores, and on a root host its uid (`first_uid + index`) is the one its runs drop to."""

    def __init__(self, uid: int, handle: int | None, index: int = 0) -> None:
        self.uid = uid
        self.gid = uid
        self.index = index
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> UidSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_dir() -> Path:
    base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    path = base / f"unlearning-harness-uids-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot create the uid lock folder {path} ({exc}); make {base} writable") from None
    info = os.lstat(path)
    if info.st_uid != os.getuid() or not os.path.isdir(path) or os.path.islink(path):
        raise HarnessError(f"uid lock folder {path} is not a folder owned by uid {os.getuid()}; remove it")
    return path


def acquire_uid(first_uid: int, *, slots: int = UID_SLOTS) -> UidSlot:
    """The first free uid in [first_uid, first_uid + slots) that no other sandbox here holds."""
    if first_uid <= 0:
        raise HarnessError(f"sandbox.first_uid must be a positive unprivileged uid, got {first_uid}; the default is 60000")
    folder = _lock_dir()
    for slot in range(slots):
        uid = first_uid + slot
        handle = os.open(folder / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            continue
        return UidSlot(uid, handle, slot)
    raise HarnessError(f"all {slots} sandbox uids from {first_uid} are in use; wait for sandboxes to finish")


def current_slot(first_uid: int = 60000) -> UidSlot:
    """The non-root case: the worker runs as the caller's own uid (mapped to nobody inside);
    the slot's index still comes from the lock folder, so concurrent sandboxes get other cores."""
    slot = acquire_uid(first_uid)
    slot.uid = slot.gid = os.getuid()
    return slot


def cores_for(slot: int, width: int) -> tuple[int, ...]:
    """The `width` cores a sandbox in `slot` gets: slots tile the machine's cores in order, so
    the sandboxes of a pool with one worker per core never share one."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    width = max(1, min(int(width), len(allowed)))
    groups = max(1, len(allowed) // width)
    start = (slot % groups) * width
    return tuple(allowed[start:start + width])


def exec_command(limits: Rlimits, command: list[str], *, cpus: tuple[int, ...] = (), cgroups: tuple[str, ...] = ()) -> list[str]:
    """`command` prefixed by a tiny exec wrapper that joins the sandbox's cgroups, pins the CPUs and
    sets the limits first, so nothing the sandbox starts is ever outside them.

    A wrapper rather than Popen's preexec_fn, which is unsafe in a host with threads. It runs as
    `python -S` (no site-packages), with PYTHONPATH pointing at the harness package's parent.
    """
    values = [("-" if value is None else str(value)) for value in (limits.data_bytes, limits.nproc, limits.fsize_bytes, limits.core_bytes)]
    options: list[str] = []
    if cpus:
        options += ["--cpus", ",".join(str(c) for c in cpus)]
    for procs in cgroups:
        options += ["--cgroup", procs]
    return [sys.executable, "-S", "-m", "harness.sandbox.limits", *values, *options, "--", *command]


def main(argv: list[str]) -> None:
    usage = "usage: python -m harness.sandbox.limits DATA NPROC FSIZE CORE [--cpus LIST] [--cgroup PROCS]... -- COMMAND..."
    if len(argv) < 6 or "--" not in argv[4:]:
        print(usage, file=sys.stderr)
        os._exit(2)
    data, nproc, fsize, core = (None if value == "-" else int(value) for value in argv[:4])
    split = argv.index("--", 4)
    options, command = argv[4:split], argv[split + 1:]
    try:
        while options:
            flag, value, options = options[0], options[1], options[2:]
            if flag == "--cgroup":
                with open(value, "w") as handle:  # join before anything else runs
                    handle.write(str(os.getpid()))
            elif flag == "--cpus":
                os.sched_setaffinity(0, {int(c) for c in value.split(",")})
            else:
                raise ValueError(flag)
    except (OSError, ValueError, IndexError) as exc:
        print(f"limits: cannot place the sandbox ({exc}); {usage}", file=sys.stderr)
        os._exit(125)
    apply_rlimits(Rlimits(data_bytes=data, nproc=nproc, fsize_bytes=fsize, core_bytes=core))
    _die_with_parent()
    os.execvp(command[0], command)


def _die_with_parent() -> None:
    """The sandbox dies with the host process that started it (the `none` backend has no bwrap
    --die-with-parent); it survives exec, and a parent already gone means exit now."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
