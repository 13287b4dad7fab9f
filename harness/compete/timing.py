"""Where a competition's time goes, for scripts/bench_harness.py.

Each part is timed where it starts and stops, in whichever process spends it (units report theirs
with their results), and summed: with several workers the parts add up to core-seconds, not wall
time. Parts:
- training: the original, the references and the oracle (inside the training loops);
- submission: inside `unlearning()`, as the sandboxed worker measures each run;
- evaluation: the trusted forward passes over forget, retain and test;
- metric: epsilon, F and the final score;
- overhead, by kind: process (a pool or Ray worker's start before its first unit, from the
  kernel's record of when it started), task (building the task), handoff (a unit fetching and
  writing its data, weights and files), sandbox (a worker's start and its per-run set-up: its
  wall time less the time inside `unlearning()`), cleanup, store (the driver's results store and
  reference cache).
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator, Mapping

WORK = ("training", "submission", "evaluation", "metric")
OVERHEAD = ("process", "task", "handoff", "sandbox", "cleanup", "store")
WAITING = ("alone",)


class Timings:
    """Seconds per part, summed over every process that spent them."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()  # measurements per part

    @contextlib.contextmanager
    def measure(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - start)

    def add(self, part: str, seconds: float) -> None:
        if part not in WORK + OVERHEAD + WAITING:
            raise ValueError(f"unknown part {part!r}; parts are {', '.join(WORK + OVERHEAD + WAITING)}")
        self.seconds[part] += float(seconds)
        self.counts[part] += 1

    def merge(self, unit_timings: Mapping[str, float]) -> None:
        """A unit's own account ({part: seconds})."""
        for part, seconds in unit_timings.items():
            self.add(part, seconds)

    @property
    def overhead(self) -> float:
        return sum(self.seconds[part] for part in OVERHEAD)
