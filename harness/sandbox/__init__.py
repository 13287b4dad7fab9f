"""Sandboxed execution of submissions: worker protocol, backends, statuses.

The submission never shares a process with the harness: `run_worker` starts one sandboxed worker
per submission (bubblewrap, Docker, or a plain process when explicitly asked for), which loads
torch once and performs every run; the host enforces the time cap and validates the weights.

Exports are loaded lazily: the worker and the privilege-dropping step import this package inside
the sandbox, where the host's dependencies (and even site-packages, under `python -S`) are absent.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_worker": "harness.sandbox.host",
    "RunResult": "harness.sandbox.host",
    "cap_slack": "harness.sandbox.host",
    "BACKENDS": "harness.sandbox.backends",
    "resolve_backend": "harness.sandbox.backends",
    "docker_run_kwargs": "harness.sandbox.backends",
    "bwrap_command": "harness.sandbox.backends",
    "BwrapPlan": "harness.sandbox.backends",
    "SandboxUnavailable": "harness.sandbox.backends",
    "Status": "harness.sandbox.outcomes",
    "WorkerSpec": "harness.sandbox.protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness.sandbox' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
