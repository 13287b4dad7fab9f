"""How each run outcome is recognised: the pure rules, shared by the worker and the host.

The closed set itself lives in `harness.statuses.Status`. Detection, in order of trust:
- the host's own clock and kills: timeout (a run past the cap, or a phase past its deadline);
- the host's validation of returned weights, without executing code: bad_weights;
- how the worker process ended (exit code, signal, Docker's OOMKilled flag, the kernel's
  oom_kill counter, out-of-memory words in the log tail): out_of_memory, worker_died,
  sandbox_error (the worker never got its own code running);
- the worker's report, for what only happens inside: import_error, missing_function,
  exception, out_of_memory (MemoryError, CUDA/CPU allocator failures).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from harness.statuses import STATUS_DOCS, Status

__all__ = ["Status", "STATUS_DOCS", "ExitInfo", "exception_status", "describe_exit", "classify_exit", "one_line"]

# Allocation failures as the CPU allocator, CUDA, the C++ runtime and the libc print them.
OOM_WORDS = (
    "MemoryError",
    "OutOfMemoryError",
    "CUDA out of memory",
    "can't allocate memory",
    "Cannot allocate memory",
    "std::bad_alloc",
    "out of memory",
)
REASON_CHARS = 300


def one_line(text: str, *, limit: int = REASON_CHARS) -> str:
    """A reason is one line: newlines folded, long text cut."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def exception_status(exc: BaseException) -> Status:
    """out_of_memory for allocation failures (Python, torch CPU/CUDA allocators), else exception."""
    if isinstance(exc, MemoryError):
        return Status.OUT_OF_MEMORY
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
        return Status.OUT_OF_MEMORY
    if isinstance(exc, RuntimeError) and any(word in str(exc) for word in ("can't allocate memory", "out of memory")):
        return Status.OUT_OF_MEMORY
    return Status.EXCEPTION


@dataclass(frozen=True)
class ExitInfo:
    """How a worker ended: an exit code, or the signal that killed it; Docker adds oom_killed."""

    code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    kernel_oom_kills: int = 0  # the kernel's oom_kill counter rose by this much while it ran


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(info: ExitInfo) -> str:
    """A verb phrase: 'the worker {describe_exit(info)} during run 3'."""
    if info.oom_killed:
        return "was killed by the container's out-of-memory killer"
    if info.signal is not None:
        return f"was killed by signal {info.signal} ({signal_name(info.signal)})"
    return f"exited with code {info.code}"


def classify_exit(info: ExitInfo, *, log_tail: str = "") -> tuple[Status, str]:
    """The status and reason for a worker that ended while a run (or the import) was in flight."""
    how = describe_exit(info)
    if info.oom_killed:
        return Status.OUT_OF_MEMORY, how
    if info.signal == signal.SIGKILL and info.kernel_oom_kills > 0:
        return Status.OUT_OF_MEMORY, f"{how}; the kernel's out-of-memory killer fired meanwhile"
    tail = log_tail[-4000:]
    if any(word in tail for word in OOM_WORDS):
        return Status.OUT_OF_MEMORY, f"{how} after an allocation failure in its log"
    if info.signal == signal.SIGXFSZ:
        return Status.WORKER_DIED, f"{how}: a file grew past the sandbox's size limit"
    return Status.WORKER_DIED, how


def exit_from_returncode(returncode: int, *, bwrap: bool) -> ExitInfo:
    """Popen gives -N for a signal; bwrap (like a shell) reports a child's signal N as 128 + N."""
    if returncode < 0:
        return ExitInfo(signal=-returncode)
    if bwrap and returncode > 128 and returncode - 128 < 65:
        return ExitInfo(signal=returncode - 128)
    return ExitInfo(code=returncode)
