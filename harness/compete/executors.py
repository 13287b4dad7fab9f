"""Units of work on a local process pool or a Ray cluster, behind one interface.

The runner splits a competition into units (train the original, train reference i, run submission
s for runs i..j); an executor runs `fn(unit)` for each and yields `(unit, result)` as they finish.
Units return plain arrays and dicts and never write the results store: the driver does, so a
cluster needs no shared disk and a lost node loses no results.

Failure semantics, the same on every executor:
- the process or node running a unit died (a SIGKILL, the OOM killer, a lost node): the unit is run
  again, up to `max_retries` times, and still comes back once; past that it comes back as
  `UnitFailure(kind="lost")`; a worker lost while starting, before any unit, costs no attempt;
- the unit raised: it comes back as `UnitFailure(kind="exception")` with a one-line message and is
  never run again (a submission's own failure is not the infrastructure's).
Given the same units, every executor returns the same results; only the order and timings differ.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import contextlib
import copy
import hashlib
import importlib
import itertools
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.config import ExecutorConfig, check_section
from harness.errors import HarnessError
from harness.processes import die_with_driver, usable_cores
from harness.registry import Registry

DETAIL_CHARS = 8_000  # traceback kept with a failure
NODE_TIDY_S = 60.0  # wait for each node's tidy-up task at most this long
_STARTUP_RETRIES = 2  # pool breaks in a row, before any unit started, tolerated before giving up


@dataclass(frozen=True)
class Resources:
    """What one unit needs: Ray schedules by it; the local pool runs `workers` units at a time."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class UnitFailure:
    """A unit that produced no result: it raised ("exception"), or the infrastructure could not run
    it ("lost": its worker or node died on every attempt, or it could not be scheduled)."""

    kind: Literal["exception", "lost"]
    message: str  # one line
    detail: str = ""  # the traceback or the platform's account, capped at DETAIL_CHARS


@dataclass(frozen=True)
class Shared:
    """A large value put once where every unit can fetch it (`fetch`): a file beside the local pool,
    an object in Ray's store. Units carry the handle, not the value, so the data a thousand units
    read crosses to each worker process once."""

    key: str
    path: str | None = None  # local: a pickle file
    ref: Any = None  # ray: an ObjectRef


_FETCHED: collections.OrderedDict[str, Any] = collections.OrderedDict()  # this process's recent values
_FETCH_CACHE = 8


def fetch(shared: Shared) -> Any:
    """The value behind `shared`, loaded once per process (the few most recent ones are kept)."""
    if shared.key in _FETCHED:
        _FETCHED.move_to_end(shared.key)
        return _FETCHED[shared.key]
    if shared.ref is not None:
        import ray

        value = copy.deepcopy(ray.get(shared.ref))  # own, writable arrays: Ray's are read-only views
    else:
        with open(shared.path, "rb") as f:
            value = pickle.load(f)
    _FETCHED[shared.key] = value
    while len(_FETCHED) > _FETCH_CACHE:
        _FETCHED.popitem(last=False)
    return value


class Executor(abc.ABC):
    """Runs units and yields each `(unit, result | UnitFailure)` as it finishes. A new kind is a
    subclass registered in EXECUTORS (`@EXECUTORS.register("name")`); executor.kind and the CLI's
    --executor take their names from there."""

    # units may run on other machines: no folder of the driver's is theirs to write, and their
    # devices are not the driver's (a GPU unit computes on CUDA even if the driver has none)
    remote: bool = False

    def __init__(self, cfg: ExecutorConfig) -> None:
        self.cfg = cfg

    @abc.abstractmethod
    def submit_all(
        self, fn: Callable[[Any], Any], units: Iterable[Any], *, resources: Resources | None = None
    ) -> Iterator[tuple[Any, Any]]:
        """`fn` is a module-level function (workers import it); units are picklable values."""

    @abc.abstractmethod
    def share(self, key: str, value: Any) -> Shared:
        """Put `value` where units can `fetch` it; `key` names it (the same key, the same value)."""

    @abc.abstractmethod
    def unit_threads(self, resources: Resources) -> int:
        """Torch threads a unit with `resources` gets; units set them so results match everywhere."""

    @abc.abstractmethod
    def on_every_node(self, fn: Callable[[Any], Any], arg: Any) -> int:
        """Run `fn(arg)` once on each live node (to tidy what units left there); how many ran it.
        Best effort: a node that fails or is gone is skipped."""

    def close(self) -> None:
        """Release workers; the executor cannot be used afterwards."""

    def default_resources(self, device: str = "cpu") -> Resources:
        """A submission's runs or the original: gpus_per_unit, or a whole GPU when computing on one."""
        return Resources(cpus=self.cfg.cpus_per_unit, gpus=_gpus(self.cfg.gpus_per_unit, device))

    def reference_resources(self, device: str = "cpu") -> Resources:
        gpus = self.cfg.reference_gpus_per_unit
        return Resources(cpus=self.cfg.cpus_per_unit, gpus=_gpus(self.cfg.gpus_per_unit if gpus is None else gpus, device))

    @abc.abstractmethod
    def slots(self, resources: Resources) -> int:
        """How many units with `resources` run at once."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


EXECUTORS: Registry[type[Executor]] = Registry("executor")


def make_executor(cfg: ExecutorConfig) -> Executor:
    """The executor `cfg.kind` names, its settings checked first."""
    check_section(cfg, "executor")
    return EXECUTORS.get(cfg.kind)(cfg)


@contextlib.contextmanager
def borrowed(executor: Executor | None, cfg: ExecutorConfig) -> Iterator[Executor]:
    """`executor` when given; otherwise one made from `cfg` for the block and closed after it."""
    if executor is not None:
        yield executor
        return
    with make_executor(cfg) as owned:
        yield owned


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """A spawn process pool on this machine: `workers` processes, cores // workers torch threads each
    (on 2 cores two one-thread processes beat one two-thread process by ~20%). Units run `workers` at
    a time, or as many as share one GPU when they ask for GPUs (`slots`)."""

    def __init__(self, cfg: ExecutorConfig) -> None:
        super().__init__(cfg)
        cores = usable_cores()
        self.workers = cfg.workers or cores
        self.threads = max(1, cores // self.workers)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._markers = tempfile.TemporaryDirectory(prefix="harness-units-")
        self._tokens = itertools.count()

    def submit_all(
        self, fn: Callable[[Any], Any], units: Iterable[Any], *, resources: Resources | None = None
    ) -> Iterator[tuple[Any, Any]]:
        _check_fn(fn)
        units = list(units)
        resources = resources or self.default_resources()
        # GPU units: no more in flight than share the GPU; CPU units: a queue keeps workers busy
        window = self.cfg.max_in_flight or (self.slots(resources) if resources.gpus > 0 else 2 * self.workers)
        queue = collections.deque(range(len(units)))
        attempts = [0] * len(units)
        running: dict[concurrent.futures.Future, tuple[int, Path]] = {}
        fruitless_breaks = 0  # pool breaks in a row before any unit started
        try:
            while queue or running:
                while queue and len(running) < window:
                    index = queue.popleft()
                    marker = Path(self._markers.name) / str(next(self._tokens))
                    running[self._ensure_pool(fn).submit(_run_local, fn, units[index], str(marker))] = (index, marker)
                done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    done, _ = concurrent.futures.wait(running)  # a broken pool fails everything it held
                    culprits = self._drop_broken_pool()
                else:
                    culprits = set()
                lost, started = [], False
                for future in done:
                    index, marker = running.pop(future)
                    pid = _read_pid(marker)
                    marker.unlink(missing_ok=True)
                    started = started or pid is not None
                    error = future.exception()
                    if not isinstance(error, BrokenProcessPool):
                        yield units[index], future.result() if error is None else _failure(error)
                        continue
                    if pid is not None and (pid in culprits or not culprits):
                        attempts[index] += 1  # died mid-unit; siblings the pool took down run again free
                    if attempts[index] > self.cfg.max_retries:
                        yield units[index], _lost(attempts[index], error)
                    else:
                        lost.append(index)
                queue.extendleft(sorted(lost, reverse=True))
                fruitless_breaks = 0 if started or not lost else fruitless_breaks + 1
                # max_retries counts attempts at units; a worker lost while starting attempted none
                if fruitless_breaks > max(self.cfg.max_retries, _STARTUP_RETRIES):
                    raise HarnessError(
                        f"the local process pool broke {fruitless_breaks} times before any unit started; "
                        "worker processes cannot start here (check memory limits and that torch imports)"
                    )
        finally:
            for future in running:
                future.cancel()

    def share(self, key: str, value: Any) -> Shared:
        path = Path(self._markers.name) / f"shared-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pkl"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as f:
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        return Shared(key=key, path=str(path))

    def unit_threads(self, resources: Resources) -> int:
        return self.threads

    def on_every_node(self, fn: Callable[[Any], Any], arg: Any) -> int:
        _check_fn(fn)
        try:
            fn(arg)  # the one node is this machine
        except Exception:  # noqa: BLE001 - best effort, as on Ray
            return 0
        return 1

    def slots(self, resources: Resources) -> int:
        """Workers; with GPUs, as many units as share this machine's one GPU (several GPUs: use Ray,
        which gives each unit its own)."""
        if resources.gpus > 0:
            return max(1, min(self.workers, int(1 / resources.gpus)))
        return self.workers

    def close(self) -> None:
        self._drop_pool(wait=True)
        self._markers.cleanup()

    def _ensure_pool(self, fn: Callable[[Any], Any]) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_local_worker,
                initargs=(self.threads, fn.__module__, os.getpid()),
            )
            # Start every worker with the pool, as CPython does for fork pools "so that their
            # sentinels are known": a spawn pool adds workers on demand, and one added after its
            # manager thread began waiting goes unwatched, so its death went unnoticed until
            # another unit finished (seen here: a killed worker noticed only 20 s later).
            self._pool._safe_to_dynamically_spawn_children = False
        return self._pool

    def _drop_pool(self, *, wait: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None

    def _drop_broken_pool(self) -> set[int]:
        """Shut a broken pool down; return the pids of workers that died by anything but the SIGTERM
        the pool then sends the rest. Empty when unknown: every unit that had started then counts."""
        processes = dict(getattr(self._pool, "_processes", None) or {})
        self._drop_pool(wait=True)  # joins the workers, so their exit codes are known
        return {pid for pid, p in processes.items() if p.exitcode is not None and p.exitcode != -signal.SIGTERM}


_worker_threads = 1  # this pool worker's torch threads, set by _init_local_worker


def _init_local_worker(threads: int, module: str, driver_pid: int) -> None:
    global _worker_threads
    die_with_driver(driver_pid)
    _worker_threads = threads
    os.environ["OMP_NUM_THREADS"] = str(threads)  # torch reads it when a unit first imports torch
    importlib.import_module(module)  # the units' code (and torch) load now, while the pool starts


def _run_local(fn: Callable[[Any], Any], unit: Any, marker: str) -> Any:
    Path(marker).write_text(str(os.getpid()))  # tells the driver this unit started, and where
    if "torch" in sys.modules:  # already imported (with fn's module): set it explicitly
        sys.modules["torch"].set_num_threads(_worker_threads)
    return fn(unit)


def _read_pid(marker: Path) -> int | None:
    try:
        return int(marker.read_text())
    except (OSError, ValueError):
        return None


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks on a cluster (`address`) or a local Ray instance, scheduled by `resources`; Ray gives
    each task OMP_NUM_THREADS = its CPUs. Ray neither sandboxes nor enforces memory: each unit still
    starts its own sandbox on whichever node runs it. A unit asking for GPUs the cluster lacks waits
    for the autoscaler, as Ray tasks do."""

    remote = True

    def __init__(self, cfg: ExecutorConfig) -> None:
        super().__init__(cfg)
        try:
            import ray
        except ImportError:
            raise HarnessError(
                "executor 'ray' needs the ray package, which is not installed; "
                "run `pip install 'unlearning-harness[ray]'` or set executor.kind: local"
            ) from None
        self._ray = ray
        self._shared: dict[str, Shared] = {}
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self._owns = not ray.is_initialized()  # a process already connected keeps its connection
        if self._owns and cfg.address:
            ray.init(address=cfg.address)
        elif self._owns:
            ray.init()

    def submit_all(
        self, fn: Callable[[Any], Any], units: Iterable[Any], *, resources: Resources | None = None
    ) -> Iterator[tuple[Any, Any]]:
        _check_fn(fn)
        ray = self._ray
        units = list(units)
        resources = resources or self.default_resources()
        options: dict[str, Any] = {
            "num_cpus": resources.cpus,
            "num_gpus": resources.gpus,
            "max_retries": self.cfg.max_retries,  # re-runs after a lost worker or node
            "retry_exceptions": False,  # never after the unit's own exception
        }
        if resources.gpus > 0:
            options["max_calls"] = 1  # a fresh process per GPU unit, so its GPU memory is released
        remote = ray.remote(fn).options(**options)
        window = self.cfg.max_in_flight or 2 * self.slots(resources)
        queue = collections.deque(range(len(units)))
        pending: dict[Any, int] = {}
        try:
            while queue or pending:
                while queue and len(pending) < window:
                    index = queue.popleft()
                    pending[remote.remote(units[index])] = index
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    yield units[pending.pop(ref)], self._outcome(ref)
        finally:
            for ref in pending:
                ray.cancel(ref)

    def share(self, key: str, value: Any) -> Shared:
        if key not in self._shared:
            self._shared[key] = Shared(key=key, ref=self._ray.put(value))
        return self._shared[key]

    def unit_threads(self, resources: Resources) -> int:
        return max(1, int(resources.cpus))

    def on_every_node(self, fn: Callable[[Any], Any], arg: Any) -> int:
        _check_fn(fn)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = self._ray.remote(fn)
        refs = [
            remote.options(num_cpus=0, max_retries=0,  # no CPU: it must not wait behind busy units
                           scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(arg)
            for node in self._ray.nodes() if node.get("Alive")
        ]
        if not refs:
            return 0
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=NODE_TIDY_S)
        ran = 0
        for ref in ready:
            try:
                self._ray.get(ref)
                ran += 1
            except self._ray.exceptions.RayError:
                pass  # that node is gone or failed: nothing left to tidy we can reach
        for ref in set(refs) - set(ready):
            self._ray.cancel(ref, force=True)
        return ran

    def close(self) -> None:
        self._shared.clear()
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False

    def slots(self, resources: Resources) -> int:
        """How many units the cluster can run at once now."""
        total = self._ray.cluster_resources()
        slots = total.get("CPU", 0) / resources.cpus
        if resources.gpus > 0:
            slots = min(slots, total.get("GPU", 0) / resources.gpus)
        return max(1, int(slots))

    def _outcome(self, ref: Any) -> Any:
        exceptions = self._ray.exceptions
        try:
            return copy.deepcopy(self._ray.get(ref))  # own the arrays: Ray's are read-only views of its store
        except exceptions.RayTaskError as error:
            cause = error.cause if isinstance(error.cause, BaseException) else error
            return UnitFailure("exception", _one_line(cause), str(error)[-DETAIL_CHARS:])
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.LocalRayletDiedError,
                exceptions.OutOfMemoryError) as error:
            return _lost(self.cfg.max_retries + 1, error)
        except exceptions.RayError as error:
            return UnitFailure("lost", f"Ray could not run the unit: {_one_line(error)}", str(error)[-DETAIL_CHARS:])


def _gpus(configured: float, device: str) -> float:
    """Units computing on a GPU hold one unless the config shares it out: never a free-for-all."""
    return configured if configured > 0 or not device.startswith("cuda") else 1.0


def _failure(error: BaseException) -> UnitFailure:
    remote = error.__cause__  # concurrent.futures keeps the worker's traceback here
    detail = str(remote) if remote is not None else "".join(traceback.format_exception(error))
    return UnitFailure("exception", _one_line(error), detail[-DETAIL_CHARS:])


def _lost(attempts: int, error: BaseException) -> UnitFailure:
    return UnitFailure(
        "lost", f"its worker died on each of {attempts} attempts: {_one_line(error)}", str(error)[-DETAIL_CHARS:]
    )


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _check_fn(fn: Callable[[Any], Any]) -> None:
    qualname = getattr(fn, "__qualname__", "")
    if not callable(fn) or "<" in qualname:
        raise HarnessError(
            f"executors run module-level functions that worker processes can import, got {qualname or fn!r}; "
            "define the unit's function at the top level of a module"
        )
