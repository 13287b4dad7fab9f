"""Executors on a real process pool and a real local Ray instance (loopback only), no mocks.

Failure tests count attempts through files each attempt appends its pid to, and kill real worker
processes with SIGKILL while they run a unit. Worker processes import this module for its units, so
it imports torch only inside functions: a restarted worker then starts in a second, not in five.
"""

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from harness.compete.executors import EXECUTORS, LocalExecutor, Resources, UnitFailure, make_executor
from harness.config import ExecutorConfig, RecipeConfig
from harness.errors import ConfigError, HarnessError

TESTS = Path(__file__).resolve().parent
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report leaves the machine
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every Ray process on 127.0.0.1
}
SEEDS = [0, 1]


# ---- units (module level, so worker processes import them) ----


def train_unit(seed: int) -> dict:
    """A tiny real training unit: a small CNN, two epochs on 32 images."""
    import torch

    from harness.learn.models import ModelSpec
    from harness.learn.training import init_model, train_model

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 32)
    images = (rng.normal(size=(32, 3, 8, 8)) * 0.5 + labels[:, None, None, None]).astype(np.float32)
    model = init_model(ModelSpec("small-cnn", num_classes=3, in_channels=3), seed)
    recipe = RecipeConfig(epochs=2, lr=1e-3, weight_decay=1e-4, batch_size=16, class_weighted=False)
    train_model(model, {"image": images, "age_group": labels}, recipe, class_weights=None, seed=seed, device="cpu")
    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    return {"seed": seed, "logits": logits, "weights": {k: v.numpy() for k, v in model.state_dict().items()}}


def threads_unit(_: int) -> int:
    import torch

    return torch.get_num_threads()


def sleep_unit(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def span_unit(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@dataclass(frozen=True)
class Job:
    """A unit for the failure tests: each attempt appends its pid to <folder>/<name>.attempts."""

    name: str
    folder: str
    action: str  # ok | hang_once (first attempt waits to be killed) | slow (20 s on its first attempt) | raise | die


def job_unit(job: Job) -> str:
    folder = Path(job.folder)
    log = folder / f"{job.name}.attempts"
    first = not log.exists()
    with log.open("a") as f:
        f.write(f"{os.getpid()}\n")
    if job.action in ("hang_once", "slow"):
        (folder / f"{job.name}.tmp").write_text(str(os.getpid()))
        (folder / f"{job.name}.tmp").rename(folder / f"{job.name}.pid")
    if job.action == "hang_once" and first:
        time.sleep(120)
    if job.action == "slow" and first:
        time.sleep(20)  # still running when its pool breaks, however loaded the machine
    if job.action == "raise":
        raise ValueError(f"unit {job.name} is bad\nsecond line")
    if job.action == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return job.name


def attempts(folder: Path, name: str) -> int:
    path = folder / f"{name}.attempts"
    return len(path.read_text().split()) if path.exists() else 0


def kill_when_started(pid_file: Path, *, after: tuple[Path, ...] = ()) -> threading.Thread:
    """SIGKILL the process whose pid the unit writes, once it (and the `after` units) started."""

    def kill() -> None:
        deadline = time.monotonic() + 120
        while not all(p.exists() for p in (pid_file, *after)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


# ---- fixtures: one pool and one Ray instance for the module ----


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def local_executor():
    with LocalExecutor(ExecutorConfig(kind="local", workers=2)) as executor:
        yield executor


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # Ray's workers inherit this environment; PYTHONPATH lets them import this module's units
    env = {**RAY_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def ray_executor(ray_cluster):
    with make_executor(ExecutorConfig(kind="ray")) as executor:
        yield executor


@pytest.fixture(params=["local", "ray"])
def executor(request):
    return request.getfixturevalue(f"{request.param}_executor")


def executor_with(kind: str, request, **fields):
    """A further executor of `kind` (Ray: on the module's instance) with other settings."""
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    executor = make_executor(ExecutorConfig(kind=kind, **fields))
    request.addfinalizer(executor.close)
    return executor


# ---- results ----


@pytest.fixture(scope="module")
def in_process_results():
    """One thread, as each executor's unit gets here: results are bit-identical only at equal threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {seed: train_unit(seed) for seed in SEEDS}
    finally:
        torch.set_num_threads(threads)


def test_submit_all_results_equal_in_process_results(executor, in_process_results):
    results = dict(executor.submit_all(train_unit, SEEDS))
    assert sorted(results) == SEEDS
    for seed in SEEDS:
        expected, got = in_process_results[seed], results[seed]
        np.testing.assert_array_equal(got["logits"], expected["logits"])
        for key, value in expected["weights"].items():
            np.testing.assert_array_equal(got["weights"][key], value)
        assert got["logits"].flags.writeable


def test_submit_all_yields_as_units_finish(executor):
    order = [unit for unit, _ in executor.submit_all(sleep_unit, [3.0, 0.0])]
    assert order == [0.0, 3.0]


def test_submit_all_accepts_resources(executor):
    results = list(executor.submit_all(sleep_unit, [0.0], resources=Resources(cpus=0.5)))
    assert results == [(0.0, 0.0)]


def test_submit_all_empty_units_yield_nothing(executor):
    assert list(executor.submit_all(sleep_unit, [])) == []


def test_local_executor_splits_cores_into_worker_threads(local_executor):
    cores = len(os.sched_getaffinity(0))
    threads = {result for _, result in local_executor.submit_all(threads_unit, range(4))}
    assert threads == {max(1, cores // local_executor.workers)}


# ---- failures ----


def test_submit_all_reports_exception_without_retry(executor, tmp_path):
    jobs = [Job("bad", str(tmp_path), "raise"), Job("good", str(tmp_path), "ok")]
    results = dict(executor.submit_all(job_unit, jobs))
    failure = results[jobs[0]]
    assert isinstance(failure, UnitFailure)
    assert failure.kind == "exception"
    assert failure.message == "ValueError: unit bad is bad"
    assert "job_unit" in failure.detail  # the traceback travels with it
    assert results[jobs[1]] == "good"
    assert attempts(tmp_path, "bad") == 1


def test_submit_all_retries_unit_whose_worker_is_killed(executor, tmp_path):
    jobs = [Job("victim", str(tmp_path), "hang_once")] + [Job(f"ok{i}", str(tmp_path), "ok") for i in range(3)]
    killer = kill_when_started(tmp_path / "victim.pid")
    results = list(executor.submit_all(job_unit, jobs))
    killer.join()
    assert sorted(unit.name for unit, _ in results) == sorted(job.name for job in jobs)  # each exactly once
    assert all(result == unit.name for unit, result in results)
    assert attempts(tmp_path, "victim") == 2


def test_local_executor_reruns_siblings_of_a_killed_unit_free(request, tmp_path):
    """A lost worker breaks the whole pool; only the unit whose worker died counts the attempt."""
    executor = executor_with("local", request, workers=2, max_retries=0)
    victim, sibling = Job("victim", str(tmp_path), "hang_once"), Job("sibling", str(tmp_path), "slow")
    killer = kill_when_started(tmp_path / "victim.pid", after=(tmp_path / "sibling.pid",))
    results = dict(executor.submit_all(job_unit, [victim, sibling]))
    killer.join()
    assert results[victim].kind == "lost"
    assert results[sibling] == "sibling"
    assert (attempts(tmp_path, "victim"), attempts(tmp_path, "sibling")) == (1, 2)


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_submit_all_gives_up_after_max_retries(kind, request, tmp_path):
    executor = executor_with(kind, request, workers=1, max_retries=1)
    jobs = [Job("crasher", str(tmp_path), "die"), Job("bystander", str(tmp_path), "ok")]
    results = dict(executor.submit_all(job_unit, jobs))
    failure = results[jobs[0]]
    assert isinstance(failure, UnitFailure)
    assert failure.kind == "lost"
    assert "2 attempts" in failure.message
    assert attempts(tmp_path, "crasher") == 2
    assert results[jobs[1]] == "bystander"


def units_dying_at_start(folder: Path, deaths: int, monkeypatch) -> Callable[[int], int]:
    """A unit function whose module kills the first `deaths` pool workers that import it (an OOM
    kill while torch loads, say), before they take any unit."""
    import importlib

    name = f"startup_units_{folder.name}_{deaths}"
    (folder / f"{name}.py").write_text(
        "import multiprocessing, os, pathlib\n"
        f"log = pathlib.Path({str(folder / 'starts')!r})\n"
        "if multiprocessing.parent_process() is not None:\n"
        "    with log.open('a') as f:\n"
        "        f.write(f'{os.getpid()}\\n')\n"
        f"    if len(log.read_text().split()) <= {deaths}:\n"
        "        os._exit(1)\n"
        "def double(x):\n"
        "    return 2 * x\n"
    )
    monkeypatch.syspath_prepend(str(folder))  # spawned workers inherit sys.path
    return importlib.import_module(name).double


def test_local_executor_restarts_a_worker_lost_while_starting_without_spending_retries(request, tmp_path, monkeypatch):
    executor = executor_with("local", request, workers=1, max_retries=0)
    double = units_dying_at_start(tmp_path, deaths=1, monkeypatch=monkeypatch)
    assert dict(executor.submit_all(double, [1, 2, 3])) == {1: 2, 2: 4, 3: 6}
    assert len((tmp_path / "starts").read_text().split()) == 2


def test_local_executor_gives_up_when_workers_never_start(request, tmp_path, monkeypatch):
    executor = executor_with("local", request, workers=1, max_retries=0)
    double = units_dying_at_start(tmp_path, deaths=100, monkeypatch=monkeypatch)
    with pytest.raises(HarnessError, match="broke 3 times before any unit started"):
        list(executor.submit_all(double, [1, 2]))
    assert len((tmp_path / "starts").read_text().split()) == 3


# ---- set-up ----


def test_ray_executor_keeps_an_existing_connection(ray_cluster):
    make_executor(ExecutorConfig(kind="ray")).close()
    assert ray_cluster.is_initialized()


def test_executors_registry_lists_both():
    assert EXECUTORS.names() == ["local", "ray"]


def test_make_executor_unknown_kind_suggests_closest():
    with pytest.raises(HarnessError, match=r"executor.kind must be one of 'local', 'ray', got 'rya' \(did you mean 'ray'\?\)"):
        make_executor(ExecutorConfig(kind="rya"))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"workers": 0}, r"executor.workers must be at least 1, or null for one per core, got 0"),
        ({"cpus_per_unit": 0.0}, r"executor.cpus_per_unit must be a number above 0, got 0.0"),
        ({"gpus_per_unit": -1.0}, r"executor.gpus_per_unit must be a number of at least 0 .*, got -1.0"),
        ({"max_retries": -1}, r"executor.max_retries must be at least 0, got -1"),
        ({"max_in_flight": 0}, r"executor.max_in_flight must be at least 1, or null for the default, got 0"),
    ],
    ids=["no-workers", "no-cpus", "negative-gpus", "negative-retries", "empty-window"],
)
def test_make_executor_rejects_bad_settings(fields, match):
    with pytest.raises(ConfigError, match=match):
        make_executor(ExecutorConfig(kind="local", **fields))


def test_submit_all_rejects_local_function(local_executor):
    def nested(unit):
        return unit

    with pytest.raises(HarnessError, match=r"module-level functions .* got 'test_submit_all_rejects_local_function.<locals>.nested'"):
        list(local_executor.submit_all(nested, [1]))


def test_units_on_a_gpu_hold_one_unless_the_config_shares_it():
    executor_cfg = ExecutorConfig(gpus_per_unit=0.0, reference_gpus_per_unit=0.25)
    with LocalExecutor(executor_cfg) as executor:
        assert executor.default_resources("cpu").gpus == 0.0
        assert executor.default_resources("cuda").gpus == 1.0
        assert executor.reference_resources("cuda:1").gpus == 0.25


def test_local_executor_runs_gpu_units_only_as_many_as_share_the_gpu(request):
    executor = executor_with("local", request, workers=2)
    assert [executor.slots(Resources(gpus=g)) for g in (0.0, 1.0, 0.5, 0.25)] == [2, 1, 2, 2]
    spans = sorted(result for _, result in executor.submit_all(span_unit, [0.4, 0.4, 0.4], resources=Resources(gpus=1.0)))
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))  # one at a time
