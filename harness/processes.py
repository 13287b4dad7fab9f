"""This machine's processes, for the executors' pool and the training's: the cores this process
may use, and a pool worker that dies with its driver. No torch, so pool workers start fast."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def die_with_driver(driver_pid: int) -> None:
    """A pool worker gets SIGKILL when its driver dies, however it dies (SIGKILL included), rather than
    blocking forever reparented to init (seen: ~830 MB each); its sandboxed worker (bubblewrap's
    --die-with-parent) goes with it. The kernel sends the signal when the thread that started the
    worker ends: the pool starts its workers in the thread that submits (`_ensure_pool`), so call
    `submit_all` from a thread that lives as long as the executor (the runner's main thread does)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != driver_pid:  # the driver died before the signal was armed
        os._exit(1)
