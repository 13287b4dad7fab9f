"""What the host and the worker exchange: file names, the run spec, progress lines, log markers.

Imported on both sides of the sandbox wall, so it needs nothing beyond the standard library.

The inbox (read-only inside the sandbox) holds `submission.py`, `original.safetensors`,
`spec.json`, `retain.npz`, `forget.npz` and `val.npz`. The worker writes into its outbox:
`run_<i>.safetensors` (atomically), one JSON line per run in `runs.jsonl`, and `progress`, one
line per event, which the host watches to enforce the per-run time cap:

    ready <monotonic>      torch and the data are loaded; the submission is imported next
    imported <monotonic>   the submission imported and defines unlearning()
    start <i> <monotonic>  unlearning() is about to be called for run i
    stop <i> <seconds>     unlearning() returned (or raised) after <seconds>
    end <i>                run i's weights and its runs.jsonl row are written
    done                   every run is reported

Run indices are positions in the spec's list of runs (0..n-1).
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
PROGRESS = "progress"
RUNS = "runs.jsonl"
BATCH_FORMATS = ("dict", "tuple")

# Printed on the worker's stdout at each run boundary, so the host can cut the log per run in
# stream order; a submission printing one only muddles its own logs.
MARKER = "\x1e[harness] run "
MARKER_END = "\x1e[harness] end "
# Set by backends whose worker has a pid namespace of its own, where it may kill(-1) leftovers.
OWN_PID_NAMESPACE_ENV = "HARNESS_OWN_PID_NAMESPACE"


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


@dataclass(frozen=True)
class Event:
    """One progress line, parsed; `index` is None for ready/imported/done."""

    kind: str
    index: int | None = None
    value: float | None = None


def parse_progress_line(line: str) -> Event | None:
    """None for anything that is not a well-formed progress line (a submission may scribble)."""
    parts = line.split()
    if not parts:
        return None
    kind, args = parts[0], parts[1:]
    try:
        if kind in ("ready", "imported") and len(args) <= 1:
            return Event(kind, value=float(args[0]) if args else None)
        if kind == "done" and not args:
            return Event(kind)
        if kind in ("start", "stop") and len(args) == 2:
            return Event(kind, index=int(args[0]), value=float(args[1]))
        if kind == "end" and len(args) == 1:
            return Event(kind, index=int(args[0]))
    except ValueError:
        return None
    return None
