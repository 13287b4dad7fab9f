"""The host side: start a sandbox, time each run by its own clock, collect and validate each run.

Time and outcome come from host evidence only. The sandbox's warm parent (harness code that
never runs the submission) forks one process per run and reports on a control channel that no
run can reach: `started i` when the run's process exists, `exited i` once it and everything it
started are dead. The host stamps both with its own monotonic clock as they arrive; a run is
charged the whole window between them, less an allowance for the harness's own part (forking,
building the model and loaders, writing the weights) that the host measures at start from two
probe runs with nothing to import. Nothing a submission writes moves a run's time.

Between runs nothing of the submission is alive, so the host empties every folder a run could
write (with bounded, iterative walks) before the next starts. A run past the cap (plus a kill
slack) is killed with its sandbox and rejects the submission; the runs not reached are reported
as timeout ("not run: ..."). Returned weights are copied out and validated without executing
anything (safetensors, at most twice the original's size, same keys/shapes/dtypes, finite).

A run's outcome is `sandbox_error` only where the host itself saw the sandbox fail: it could not
start, or died or misbehaved before any submission code ran. Should the warm parent die during
a run (out of memory, or killed where runs share its uid), that run gets its status and the
remaining runs go on in a fresh sandbox.

Layout: the caller's `outbox` gets `exchange/` (what the sandbox may write, removed afterwards),
and the host's own records: `run_<i>.safetensors` (validated copies), `run_<i>.log` and
`runs.jsonl` (one RunResult per line, without the log).
"""

from __future__ import annotations

import json
import os
import queue
import select
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.config import SandboxConfig
from harness.errors import HarnessError
from harness.sandbox import fsguard
from harness.sandbox.backends import SCRATCH_DIRS, Backend, Exchange, Launched, Placement, get_backend, resolve_backend
from harness.sandbox.logs import LogSplitter
from harness.sandbox.outcomes import ExitInfo, Status, classify_exit, describe_exit, one_line
from harness.sandbox.protocol import INBOX_FILES, ORIGINAL, RUNS, SUBMISSION, ControlLine, parse_control_line, read_spec, weights_name
from harness.timefmt import seconds_text

EXCHANGE = "exchange"
POLL_S = 0.02
WATCH_S = 0.25
DISK_CHECK_S = 1.0
PROBES = (-1, -2)
MAX_RELAUNCHES = 3
MIB = 1024 * 1024
# What a run may claim about itself; everything else is the host's to say.
CLAIMABLE = frozenset({Status.OK, Status.IMPORT_ERROR, Status.MISSING_FUNCTION, Status.EXCEPTION,
                       Status.OUT_OF_MEMORY, Status.BAD_WEIGHTS})


@dataclass
class RunResult:
    """One run's outcome: status and one-line reason, host-measured time, peak memory, capped log."""

    index: int  # position in the spec's list of runs
    seed: int
    status: Status
    reason: str | None
    seconds: float | None  # charged: the host-seen window less the measured harness allowance
    peak_mem_mb: float | None
    log: str
    weights_path: Path | None  # validated copy, outside the sandbox's folder; None unless ok
    peak_gpu_mb: float | None = None
    cpu_seconds: float | None = None  # CPU time of the sandbox's processes during the run (cgroups)
    window_s: float | None = None  # host-seen wall time from the run's start to its end
    scratch_mb: float | None = None  # what the run left in its scratch folders (deleted)
    unchanged: bool | None = None  # ok runs: the weights came back equal to the original's, tensor for tensor

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("log")
        data["status"] = str(self.status)
        data["weights_path"] = None if self.weights_path is None else str(self.weights_path)
        return data


def cap_slack(time_cap_s: float) -> float:
    """How far past the cap a run may go before the kill (polling and start-up jitter); the
    verdict itself is always `seconds > cap`."""
    return 0.5 + 0.02 * time_cap_s


def run_worker(
    inbox: str | Path,
    outbox: str | Path,
    *,
    n_runs: int,
    time_cap_s: float | None,
    backend: str | Backend = "auto",
    limits: SandboxConfig | None = None,
    device: str = "cpu",
    on_run: Callable[[RunResult], None] | None = None,
    grace_s: float = 10.0,
    startup_timeout_s: float = 120.0,
    over_cap: float | None = None,
) -> list[RunResult]:
    """Run a submission's `n_runs` runs, one process each, in a sandbox; every run gets a RunResult.

    `time_cap_s=None` exempts the submission from the cap (the retrain oracle). `grace_s` bounds
    the harness's own steps (a fork, the clean-up between runs); `startup_timeout_s` the
    sandbox's start (torch, data, warm-up). `on_run` is called once per run, in order, as soon as
    it is known, so callers can commit each run at once.

    `over_cap` (a participant's dry run only, never organizers'): a run past the cap is still a
    `timeout`, but it may go on to `over_cap` x the cap, and one that finishes by then keeps its
    validated weights (so the caller can say what it would have scored) and the next runs go on.
    """
    inbox, outbox = Path(inbox).resolve(), Path(outbox).resolve()
    missing = [name for name in INBOX_FILES if not (inbox / name).is_file()]
    if missing:
        raise HarnessError(f"inbox {inbox} lacks {', '.join(missing)}; the host must write all of {', '.join(INBOX_FILES)}")
    spec = read_spec(inbox)
    if len(spec.seeds) != n_runs:
        raise HarnessError(f"n_runs is {n_runs} but {inbox / 'spec.json'} lists {len(spec.seeds)} runs; pass the same number")
    limits = limits or SandboxConfig()
    outbox.mkdir(parents=True, exist_ok=True)
    exchange = outbox / EXCHANGE
    reports: queue.SimpleQueue = queue.SimpleQueue()
    results: dict[int, RunResult] = {}

    def record(result: RunResult) -> None:
        if result.index not in results:
            results[result.index] = result
            reports.put(result)

    context = _Context(seeds=spec.seeds, cap=time_cap_s, grace=grace_s, startup_timeout=startup_timeout_s, limits=limits,
                       inbox=inbox, outbox=outbox, exchange=exchange, device=device, record=record, results=results,
                       source_name=spec.source_name or SUBMISSION, over_cap=over_cap)
    try:
        chosen = resolve_backend(backend, allow_unsafe_fallback=False) if backend == "auto" else backend
        runner = get_backend(chosen) if isinstance(chosen, str) else chosen
        worker = threading.Thread(target=_supervise, args=(context, runner, reports), daemon=True)
        worker.start()
        _deliver(reports, context, on_run)
        worker.join()
    finally:
        fsguard.remove(exchange)
    ordered = [results[i] for i in sorted(results)]
    _write_records(outbox, ordered)
    return ordered


_DONE = object()


@dataclass
class _Context:
    """What every sandbox of one run_worker call shares."""

    seeds: tuple[int, ...]
    cap: float | None
    grace: float
    startup_timeout: float
    limits: SandboxConfig
    inbox: Path
    outbox: Path
    exchange: Path
    device: str
    record: Callable[[RunResult], None]
    results: dict[int, RunResult]
    source_name: str  # the participant's file name, as public reasons may name it
    over_cap: float | None = None  # a dry run's bound past the cap (x cap); None: killed at the cap
    aborted: bool = False  # the caller's on_run raised: stop at once

    @property
    def n(self) -> int:
        return len(self.seeds)


def _supervise(context: _Context, backend: Backend, reports: queue.SimpleQueue) -> None:
    """Sandboxes until every run has a result: a fresh one only after a warm parent died mid-run."""
    try:
        pending = list(range(context.n))
        launches = 0
        while pending and not context.aborted:
            launches += 1
            session = _Session(context, backend, pending)
            pending = session.drive()
            if pending and launches > MAX_RELAUNCHES:
                reason = f"not run: the sandbox's warm parent died {launches} times"
                for i in pending:
                    context.record(_bare(context, i, Status.WORKER_DIED, reason))
                pending = []
    except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
        reports.put(exc)
    finally:
        reports.put(_DONE)


def _deliver(reports: queue.SimpleQueue, context: _Context, on_run: Callable[[RunResult], None] | None) -> None:
    """Hand each result to `on_run` in the caller's thread (a store's SQLite connection lives
    there), while the supervisor keeps timing the sandbox, unaffected by slow callbacks."""
    failure: BaseException | None = None
    while True:
        item = reports.get()
        if item is _DONE:
            break
        if isinstance(item, BaseException):
            failure = failure or item
        elif on_run is not None and failure is None:
            try:
                on_run(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised once the sandbox is down
                failure = exc
                context.aborted = True
    if failure is not None:
        raise failure


def _bare(context: _Context, index: int, status: Status, reason: str, seconds: float | None = None, log: str = "") -> RunResult:
    return RunResult(index, context.seeds[index], status, one_line(reason), seconds, None, log, None)


class _Stop(Exception):
    """The sandbox is being given up: (status, reason for the run in flight, reason for the rest)."""

    def __init__(self, status: Status, reason: str, rest: str | None = None, *, relaunch: bool = False,
                 seconds: float | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.rest = status, reason, rest or reason
        self.relaunch, self.seconds = relaunch, seconds


class _Session:
    """One sandbox, driven run by run."""

    def __init__(self, context: _Context, backend: Backend, pending: list[int]) -> None:
        self.c, self.backend, self.pending = context, backend, list(pending)
        self.splitter = LogSplitter(limit=context.limits.log_bytes)
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.launched: Launched | None = None
        self.placement: Placement | None = None
        self.allowance = 0.0
        self.quit_sent = False
        self._reference = None
        self._source: str | None = None
        self._stop_reading = threading.Event()
        self.weights_limit = 2 * (context.inbox / ORIGINAL).stat().st_size + MIB

    # -- the whole sandbox --------------------------------------------------------------------
    def drive(self) -> list[int]:
        """Run the pending runs; the ones still pending when the warm parent died mid-run."""
        readers: list[threading.Thread] = []
        try:
            try:
                self._launch(readers)
                self._boot()
            except _Stop as stop:
                self._fail_rest(Status.SANDBOX_ERROR, stop.reason, from_start=True)
                return []
            while self.pending and not self.c.aborted:
                index = self.pending[0]
                try:
                    self._run(index)
                except _Stop as stop:
                    self._give_up(index, stop)
                    self.pending = [i for i in self.pending if i != index]
                    if stop.relaunch and self.pending:
                        return self.pending
                    self._fail_rest(stop.status, stop.rest)
                    return []
                self.pending.pop(0)
            self._send("quit")
            self.quit_sent = True
            return []
        finally:
            self._close(readers)

    def _launch(self, readers: list[threading.Thread]) -> None:
        fsguard.remove(self.c.exchange)
        self.c.exchange.mkdir(mode=0o755)
        try:
            self.placement = self.backend.place(self.c.limits)
            exchange = self._folders()
            self.launched = self.backend.launch(inbox=self.c.inbox, exchange=exchange, limits=self.c.limits,
                                                device=self.c.device, placement=self.placement)
        except (HarnessError, OSError) as exc:  # SandboxUnavailable, no free uid, no bwrap binary...
            raise _Stop(Status.SANDBOX_ERROR, f"the sandbox could not start: {exc}") from None
        for target in (self._read_output, self._read_events):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            readers.append(thread)

    def _folders(self) -> Exchange:
        """The out folder and one scratch folder per writable path, owned by the runs' uid."""
        root = self.c.exchange
        out = root / "out"
        scratch = {inside: root / "scratch" / inside.strip("/").replace("/", "_") for inside in SCRATCH_DIRS}
        control, parent_tmp = root / "control", root / "parent-tmp"
        for folder in (out, *scratch.values(), control, parent_tmp):
            folder.mkdir(parents=True, mode=0o700)
        run_as = self.placement.run_as if self.placement else None
        for folder in (out, *scratch.values()):
            if os.geteuid() == 0 and run_as is not None:
                os.chown(folder, *run_as)
                folder.chmod(0o700)
            else:
                folder.chmod(0o1777 if folder != out else 0o777)
        (root / "scratch").chmod(0o755)
        self.scratch_dirs = [out, *scratch.values()]
        return Exchange(out=out, scratch=scratch, control_dir=control, parent_tmp=parent_tmp)

    def _boot(self) -> None:
        """Wait for the warm parent, then measure the harness's own part of a run."""
        self._next("ready", deadline=time.monotonic() + self.c.startup_timeout, phase="boot")
        windows = []
        for probe in PROBES:
            window, exited = self._one(probe, cap=None)
            claim = exited.claim or {}
            if exited.how != "code:0" or claim.get("status") != "ok" or exited.left:
                last = self.splitter.last_line(probe)
                raise _Stop(Status.SANDBOX_ERROR, f"the sandbox's probe run failed ({exited.how}, {claim.get('reason')})"
                            + (f"; last output: {last}" if last else ""))
            windows.append(window)
            self._clean()
        self.allowance = min(windows)

    # -- one run ----------------------------------------------------------------------------
    def _run(self, index: int) -> None:
        launched = self.launched
        launched.reset_peak_memory()
        cpu_before = launched.cpu_seconds()
        window, exited = self._one(index, cap=self.c.cap)
        cpu = None if cpu_before is None else round(launched.cpu_seconds() - cpu_before, 3)
        seconds = max(0.0, window - self.allowance)
        if exited.left:
            self._kill()
            raise _Stop(Status.EXCEPTION, f"left {exited.left} processes the sandbox could not stop",
                        f"not run: run {index} left processes the sandbox could not stop", seconds=seconds)
        status, reason, weights, unchanged = self._outcome(index, exited, seconds)
        scratch = self._clean()
        peak = launched.peak_memory_mb() or _number((exited.claim or {}).get("peak_rss_mb"))
        self.splitter.wait_for_end(index, timeout=1.0)
        log = self.splitter.text(index)
        if status is not Status.OK and index == 0:
            log = self.splitter.text(None) + log
        result = RunResult(index, self.c.seeds[index], status, reason, round(seconds, 6), peak, log, weights,
                           _number((exited.claim or {}).get("peak_gpu_mb")), cpu, round(window, 6), scratch, unchanged)
        self.c.record(result)
        if status is Status.TIMEOUT and weights is None:
            raise _Stop(Status.TIMEOUT, reason, f"not run: run {index} exceeded the {seconds_text(self.c.cap)} time cap "
                                                f"(took {seconds_text(seconds, unlike=self.c.cap)})", seconds=seconds)

    def _one(self, index: int, *, cap: float | None) -> tuple[float, ControlLine]:
        """Start run `index`, watch it, and return (its host-seen window, its exit line)."""
        self._send(f"run {index}")
        t0, _ = self._next("started", deadline=time.monotonic() + self.c.grace, phase="fork", index=index)
        bound = cap if cap is None or self.c.over_cap is None else cap * self.c.over_cap
        deadline = None if cap is None else t0 + self.allowance + bound + cap_slack(bound)
        if index < 0:
            deadline = t0 + self.c.startup_timeout
        stopped, exited = self._next("exited", deadline=deadline, phase="run", index=index, since=t0)
        return stopped - t0, exited

    def _outcome(self, index: int, exited: ControlLine, seconds: float) -> tuple[Status, str, Path | None, bool | None]:
        """(status, reason, validated weights, whether they equal the original's)."""
        claim = exited.claim
        if claim is None:  # it ended without reporting: how it ended says why
            signum = int(exited.how.split(":")[1]) if exited.how.startswith("signal:") else None
            code = int(exited.how.split(":")[1]) if exited.how.startswith("code:") else None
            info = ExitInfo(code=code, signal=signum, kernel_oom_kills=self.launched.oom_kills())
            status, why = classify_exit(info, log_tail=self.splitter.text(index))
            return status, one_line(f"the run's process {why} without reporting"), None, None
        try:
            status = Status.parse(claim.get("status"))
        except HarnessError:
            status = None
        if status not in CLAIMABLE:
            return Status.EXCEPTION, "the run's report is malformed (the submission wrote into the harness's channel)", None, None
        if status is not Status.OK:
            return status, self._public(claim.get("reason"), status), None, None
        over = self.c.cap is not None and seconds > self.c.cap
        late = f"took {seconds_text(seconds, unlike=self.c.cap)}, past the {seconds_text(self.c.cap)} time cap" if over else ""
        if over and self.c.over_cap is None:
            return Status.TIMEOUT, late, None, None
        weights, problem, unchanged = self._take_weights(index)
        if problem is not None:
            return Status.BAD_WEIGHTS, problem, None, None
        if over:  # a dry run's allowance: the organizers' verdict, and weights to say what it would score
            return Status.TIMEOUT, f"{late} (finished within the dry run's {self.c.over_cap:g}x allowance)", weights, unchanged
        return Status.OK, None, weights, unchanged

    def _public(self, reason: str | None, status: Status) -> str:
        """The run's own reason, only as far as it fits the harness's templates (see reasons)."""
        from harness.sandbox.reasons import public_reason

        if self._source is None:
            self._source = (self.c.inbox / SUBMISSION).read_text(errors="replace")
        return public_reason(reason, file=self.c.source_name, source=self._source, fallback=status.doc)

    def _take_weights(self, index: int) -> tuple[Path | None, str | None, bool | None]:
        """Copy the run's weights out of the sandbox's folder, then validate the copy's bytes;
        (the copy, or None and the problem; whether every tensor equals the original's)."""
        import torch
        from safetensors.torch import load as load_bytes

        from harness.learn.models import validate_state_dict

        source = self.scratch_dirs[0] / weights_name(index)
        limit = min(self.weights_limit, self.c.limits.max_file_size_mb * MIB)
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            return None, f"no weights file came back ({exc.strerror})", None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None, "the weights file is not a regular file", None
            if info.st_size > limit:
                return None, (f"the weights file has {info.st_size / MIB:.0f} MB, over its {limit / MIB:.0f} MB limit "
                              "(twice the original's)"), None
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read(limit + 1)
        finally:
            os.close(fd)
        if len(data) < 8 or struct.unpack("<Q", data[:8])[0] > min(len(data) - 8, 16 * MIB):
            return None, "the weights file's header is malformed or oversized", None
        try:
            state = load_bytes(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure means unusable weights
            return None, one_line(f"the weights file is not valid safetensors ({type(exc).__name__})"), None
        problem = validate_state_dict(self.reference, state)
        if problem is not None:
            return None, one_line(f"the returned weights do not fit the model: {problem}"), None
        unchanged = all(torch.equal(state[key], value) for key, value in self.reference.items())
        target = self.c.outbox / weights_name(index)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return target, None, unchanged

    @property
    def reference(self):
        if self._reference is None:
            from safetensors.torch import load_file

            self._reference = load_file(str(self.c.inbox / ORIGINAL))
        return self._reference

    def _written(self) -> tuple[int, int]:
        """(entries, bytes) in every folder a run can write, each walk capped at max_files entries."""
        entries = size = 0
        for folder in self.scratch_dirs:
            seen = fsguard.measure(folder, max_entries=self.c.limits.max_files, max_depth=4096)
            entries += seen.entries
            size += seen.bytes
        return entries, size

    def _clean(self) -> float:
        """Measure, then empty every folder a run could write (nothing of it is alive now); MB seen."""
        _, size = self._written()
        for folder in self.scratch_dirs:
            fsguard.clear(folder)
        return round(size / MIB, 3)

    # -- watching ---------------------------------------------------------------------------
    def _next(self, kind: str, *, deadline: float | None, phase: str, index: int | None = None,
              since: float | None = None) -> tuple[float, ControlLine]:
        """(host stamp, line): the next control line of `kind` (for `index`), watching the sandbox meanwhile."""
        last_watch = last_disk = 0.0
        while True:
            try:
                item = self.events.get(timeout=POLL_S)
            except queue.Empty:
                item = None
            if item is _EOF:
                self._died(phase, index, since)
            if item is not None:
                stamp, line = item
                if line is not None and line.kind == kind and (index is None or line.index == index):
                    return stamp, line
                continue  # anything else is out of order: the parent is ours, so only a bug does this
            now = time.monotonic()
            if self.c.aborted:
                raise _Stop(Status.WORKER_DIED, "the caller stopped the scoring")
            if self.launched.poll() is not None:
                self._died(phase, index, since)
            if deadline is not None and now > deadline:
                self._overdue(phase, index, since, now)
            if phase == "run" and index is not None and index >= 0:
                if now - last_watch >= WATCH_S:
                    last_watch = now
                    self._watch(index)
                if now - last_disk >= DISK_CHECK_S:
                    last_disk = now
                    self._check_disk(index)

    def _overdue(self, phase: str, index: int | None, since: float | None, now: float) -> None:
        self._kill()
        if phase == "run" and index is not None and index >= 0:
            seconds = max(0.0, now - since - self.allowance)
            beyond = "" if self.c.over_cap is None else f" and the dry run's {self.c.over_cap:g}x allowance"
            raise _Stop(Status.TIMEOUT, f"ran {seconds_text(seconds, unlike=self.c.cap)}, past the {seconds_text(self.c.cap)} time cap{beyond}; killed",
                        f"not run: run {index} exceeded the {seconds_text(self.c.cap)} time cap (killed after {seconds_text(seconds, unlike=self.c.cap)})",
                        seconds=seconds)
        what = {"boot": f"did not start within {seconds_text(self.c.startup_timeout)} (loading torch and the data)",
                "fork": f"did not start run {index} within {seconds_text(self.c.grace)}",
                "run": f"did not finish its probe run within {seconds_text(self.c.startup_timeout)}"}[phase]
        raise _Stop(Status.SANDBOX_ERROR, f"the sandbox {what}")

    def _died(self, phase: str, index: int | None, since: float | None) -> None:
        """The warm parent is gone: a sandbox failure unless a run was in flight."""
        info = self.launched.wait(5.0) or ExitInfo(signal=9)
        if phase == "run" and index is not None and index >= 0:
            status, why = classify_exit(ExitInfo(code=info.code, signal=info.signal, oom_killed=info.oom_killed,
                                                 kernel_oom_kills=max(info.kernel_oom_kills, self.launched.oom_kills())),
                                        log_tail=self.splitter.text(index))
            seconds = None if since is None else max(0.0, time.monotonic() - since - self.allowance)
            raise _Stop(status, f"the sandbox {why} during run {index}", relaunch=True, seconds=seconds)
        last = self.splitter.last_line(None)
        raise _Stop(Status.SANDBOX_ERROR, f"the sandbox failed to start: it {describe_exit(info)}"
                    + (f"; last output: {last}" if last else ""))

    def _watch(self, index: int) -> None:
        """Where the host has no cgroups: the tree's cores and memory against the sandbox's, from outside."""
        launched = self.launched
        if getattr(launched, "group", None) is not None or self.backend.name == "none":
            return
        given = set(self.placement.cpus)
        for pid in launched.tree():
            allowed = _allowed_cpus(pid)
            if allowed is not None and not allowed <= given:
                self._kill()
                reason = f"widened its CPU affinity to cores {sorted(allowed)}, beyond the {len(given)} it was given"
                raise _Stop(Status.EXCEPTION, reason, f"not run: run {index} {reason}")
        if self.c.limits.memory_gb is None:
            return
        used = launched.memory_mb()
        if used is not None and used > self.c.limits.memory_gb * 1024:
            self._kill()
            raise _Stop(Status.OUT_OF_MEMORY, f"the sandbox used {used:.0f} MB, over its {self.c.limits.memory_gb * 1024:.0f} MB limit",
                        f"not run: run {index} ran out of memory")

    def _check_disk(self, index: int) -> None:
        limits = self.c.limits
        entries, size = self._written()
        budget = limits.scratch_gb * 1024 * MIB + self.weights_limit
        problem = None
        if entries > limits.max_files:
            problem = f"created over {limits.max_files} files in its scratch folders"
        elif size > budget:
            problem = f"wrote {size / MIB:.0f} MB into its scratch folders, over the {budget / MIB:.0f} MB limit"
        if problem is not None:
            self._kill()
            raise _Stop(Status.EXCEPTION, problem, f"not run: run {index} {problem}")

    def _kill(self) -> None:
        if self.launched is not None:
            self.launched.kill()

    def _send(self, command: str) -> None:
        try:
            os.write(self.launched.commands_fd, (command + "\n").encode())
        except OSError:
            pass  # the parent is gone; the watch loop tells why

    def _read_events(self) -> None:
        fd, buffer = self.launched.events_fd, b""
        while not self._stop_reading.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            stamp = time.monotonic()
            if not chunk:
                self.events.put(_EOF)
                return
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                self.events.put((stamp, parse_control_line(raw.decode("utf-8", errors="replace"))))

    def _read_output(self) -> None:
        for chunk in self.launched.output():
            self.splitter.feed(chunk)
        self.splitter.close()

    # -- ending -----------------------------------------------------------------------------
    def _give_up(self, index: int, stop: _Stop) -> None:
        """The run in flight (if it has no result yet) gets the stop's status."""
        if index in self.c.results:
            return
        self.splitter.wait_for_end(index, timeout=0.5)
        log = self.splitter.text(index)
        if index == 0:
            log = self.splitter.text(None) + log
        self.c.record(_bare(self.c, index, stop.status, stop.reason, stop.seconds, log))

    def _fail_rest(self, status: Status, reason: str, *, from_start: bool = False) -> None:
        """Every pending run without a result gets `reason`; from the start, with the sandbox's own output."""
        log = self.splitter.text(None) if from_start else ""
        for i in self.pending:
            if i not in self.c.results:
                self.c.record(_bare(self.c, i, status, reason, None, log))
        self.pending = []

    def _close(self, readers: list[threading.Thread]) -> None:
        launched = self.launched
        try:
            if launched is not None:
                if not self.quit_sent or launched.wait(self.c.grace) is None:
                    launched.kill()
                    launched.wait(30.0)
                launched.close()
        finally:
            self._stop_reading.set()
            for thread in readers:
                thread.join(timeout=5.0)
            self.splitter.close()
            if launched is not None:
                for fd in (launched.events_fd, launched.commands_fd):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            if self.placement is not None:
                self.placement.release()


_EOF = object()


def _write_records(outbox: Path, results: list[RunResult]) -> None:
    """The host's own view of every run, next to the validated weights."""
    lines = [json.dumps(result.to_dict()) for result in results]
    (outbox / RUNS).write_text("\n".join(lines) + ("\n" if lines else ""))
    for result in results:
        (outbox / f"run_{result.index}.log").write_text(result.log)


def _allowed_cpus(pid: int) -> set[int] | None:
    """A process's CPU affinity as the kernel holds it (/proc/<pid>/status), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("Cpus_allowed_list:"):
                    cores: set[int] = set()
                    for part in line.split(":", 1)[1].strip().split(","):
                        low, _, high = part.partition("-")
                        cores.update(range(int(low), int(high or low) + 1))
                    return cores
    except (OSError, ValueError):
        return None
    return None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
