"""What the host and the worker exchange: file names, the run spec, control lines, log markers.

Imported on both sides of the sandbox wall, so it needs nothing beyond the standard library.

The inbox (read-only inside the sandbox) holds `submission.py`, `original.safetensors`,
`spec.json`, `retain.npz`, `forget.npz` and `val.npz`. A run writes only `run_<i>.safetensors`
into the outbox; times and outcomes travel over the control channel (see harness.sandbox.worker),
which no run can reach. Run indices are positions in the spec's list of runs (0..n-1); negative
indices are the host's probes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

# Bumped whenever how a run is executed or timed changes, so that runs stored under an older
# protocol are never resumed as if they had been timed under this one. 1: one worker process
# performs every run, timed from its own progress lines. 2: one process per run, forked from a
# warm parent that never imports the submission, timed by the host from its own channel.
PROTOCOL_VERSION = 2

SUBMISSION = "submission.py"
ORIGINAL = "original.safetensors"
SPEC = "spec.json"
SPLITS = ("retain", "forget", "val")
INBOX_FILES = (SUBMISSION, ORIGINAL, SPEC, *(f"{split}.npz" for split in SPLITS))
RUNS = "runs.jsonl"  # the host's own records, beside the validated weights
BATCH_FORMATS = ("dict", "tuple")

# Printed on the worker's stdout at each run boundary, so the host can cut the log per run in
# stream order; a submission printing one only muddles its own logs.
MARKER = "\x1e[harness] run "
MARKER_END = "\x1e[harness] end "
# Set by backends whose worker has a pid namespace of its own, where it may kill(-1) leftovers.
OWN_PID_NAMESPACE_ENV = "HARNESS_OWN_PID_NAMESPACE"
CONTROL_ENV = "HARNESS_CONTROL"  # fd:EVENTS,COMMANDS (pipes passed in) or fifo:DIR (Docker)
RUN_UID_ENV = "HARNESS_RUN_UID"  # uid:gid each run drops to (root hosts and Docker); empty: stay
PARENT_TMP_ENV = "HARNESS_PARENT_TMP"  # the warm parent's own temporary folder; runs use /tmp
THREADS_ENV = "HARNESS_THREADS"  # torch threads per run: the cores the sandbox is given


def weights_name(index: int) -> str:
    return f"run_{index}.safetensors"


@dataclass(frozen=True)
class WorkerSpec:
    """spec.json: everything the worker needs besides the files next to it."""

    model: str
    num_classes: int
    in_channels: int
    batch_size: int
    batch_format: str
    device: str
    seeds: tuple[int, ...]
    time_cap_s: float | None = None
    batch_format_override: str | None = None  # dry-run --batch-format: wins over BATCH_FORMAT
    deterministic: bool = False
    source_name: str | None = None  # the participant's file name, for reasons and tracebacks

    def to_json(self) -> str:
        data = dict(self.__dict__)
        data["seeds"] = list(self.seeds)
        data["runs"] = [{"index": i, "seed": s} for i, s in enumerate(self.seeds)]
        return json.dumps(data, indent=1)


def parse_spec(data: dict[str, Any], *, source: str = SPEC) -> WorkerSpec:
    """Validate spec.json's content; the seeds come from `seeds` or from `runs[*].seed`."""
    if not isinstance(data, dict):
        raise HarnessError(f"{source}: expected a JSON object, got {type(data).__name__}")
    seeds = data.get("seeds")
    if seeds is None and isinstance(data.get("runs"), list):
        seeds = [run.get("seed") for run in data["runs"] if isinstance(run, dict)]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise HarnessError(f"{source}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    missing = [key for key in ("model", "num_classes", "in_channels", "batch_size", "device") if key not in data]
    if missing:
        raise HarnessError(f"{source}: missing keys {missing}; write every key of WorkerSpec")
    spec = WorkerSpec(
        model=str(data["model"]),
        num_classes=int(data["num_classes"]),
        in_channels=int(data["in_channels"]),
        batch_size=int(data["batch_size"]),
        batch_format=str(data.get("batch_format", "dict")),
        device=str(data["device"]),
        seeds=tuple(seeds),
        time_cap_s=None if data.get("time_cap_s") is None else float(data["time_cap_s"]),
        batch_format_override=data.get("batch_format_override"),
        deterministic=bool(data.get("deterministic", False)),
        source_name=_base_name(data.get("source_name")),
    )
    for key in ("batch_format", "batch_format_override"):
        value = getattr(spec, key)
        if value is not None and value not in BATCH_FORMATS:
            raise HarnessError(f"{source}: '{key}' must be one of {BATCH_FORMATS}, got {value!r}")
    return spec


def read_spec(inbox: str | Path) -> WorkerSpec:
    path = Path(inbox) / SPEC
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{path}: cannot read the run spec ({exc}); the host writes it before the worker starts") from None
    return parse_spec(data, source=str(path))


def _base_name(value: object) -> str | None:
    """A file's base name only: a host path never reaches a reason or a log."""
    if not isinstance(value, str) or not value:
        return None
    name = value.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c if c.isprintable() else "?" for c in name)[:80] or None


@dataclass(frozen=True)
class ControlLine:
    """One line from the warm parent: `ready`, `started i pid`, `exited i how left claim`."""

    kind: str
    index: int | None = None
    pid: int | None = None
    how: str | None = None  # "code:N" or "signal:N"
    left: int = 0  # processes of the run still alive after the parent tried to kill them
    claim: dict | None = None


def parse_control_line(line: str) -> ControlLine | None:
    """None for anything malformed (the parent is the harness's own code: it never should be)."""
    kind, _, rest = line.strip().partition(" ")
    try:
        if kind == "ready" and not rest:
            return ControlLine("ready")
        if kind == "started":
            index, pid = rest.split()
            return ControlLine("started", index=int(index), pid=int(pid))
        if kind == "exited":
            index, how, left, claim = rest.split(" ", 3)
            value = json.loads(claim)
            return ControlLine("exited", index=int(index), how=how, left=int(left), claim=value if isinstance(value, dict) else None)
    except ValueError:
        return None
    return None
