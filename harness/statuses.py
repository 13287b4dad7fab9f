"""The closed set of outcomes a run (and a submission's score) can have, defined once.

Every failed run carries one of these and a one-line reason, so nothing is ever stuck in
"running" or failed without saying why. The sandbox, the store and the leaderboard all import
`Status` from here; the store refuses any other value.
"""

from __future__ import annotations

import difflib
from enum import Enum

from harness.errors import HarnessError


class Status(str, Enum):
    """A run's outcome; `str` so it goes into JSON and SQLite as its plain value."""

    OK = "ok"
    IMPORT_ERROR = "import_error"
    MISSING_FUNCTION = "missing_function"
    EXCEPTION = "exception"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    BAD_WEIGHTS = "bad_weights"
    WORKER_DIED = "worker_died"
    SANDBOX_ERROR = "sandbox_error"

    def __str__(self) -> str:
        return self.value

    @property
    def failed(self) -> bool:
        return self is not Status.OK

    @property
    def doc(self) -> str:
        return STATUS_DOCS[self]

    @classmethod
    def parse(cls, value: object) -> Status:
        """The member for a value such as 'timeout'; an unknown value names the closest one."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            names = [s.value for s in cls]
            close = difflib.get_close_matches(str(value), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise HarnessError(f"unknown status {value!r}{hint} valid statuses: {', '.join(names)}") from None


STATUS_DOCS: dict[Status, str] = {
    Status.OK: "the run finished within the time cap and returned valid weights",
    Status.IMPORT_ERROR: "the submission file could not be imported (syntax error, missing module, error at import time)",
    Status.MISSING_FUNCTION: "the submission defines no callable unlearning(net, retain_loader, forget_loader, val_loader)",
    Status.EXCEPTION: "unlearning() raised an exception; the reason holds its last line",
    Status.TIMEOUT: "the run passed the time cap and was killed; the reason holds the measured time and the cap",
    Status.OUT_OF_MEMORY: "the run ran out of host or GPU memory under the sandbox's limits",
    Status.BAD_WEIGHTS: "the returned weights differ from the original's keys, shapes or dtypes, or are not finite",
    Status.WORKER_DIED: "the worker process ended without reporting the run (killed by a signal, crashed)",
    Status.SANDBOX_ERROR: "the sandbox itself failed (backend missing or misconfigured); not the submission's fault",
}
