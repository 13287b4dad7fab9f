"""A whole competition on a real two-node Ray cluster (loopback only), no mocks: a killed worker
and a removed node mid-unit.

The cluster's nodes are separate raylets on this machine; units reach them through Ray's object
store and run the sandbox where they land. Scores must equal the local executor's for the same
seeds, and a Ray worker killed mid-unit must cost nothing but the time to run its unit again.
"""

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from harness.compete.runner import run_competition
from harness.config import load_config
from harness.results.store import Store

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

TINY = Path(__file__).parent / "data" / "tiny.yaml"
FIGURES = ["final_score", "forget_quality", "retain_acc", "test_acc", "forget_acc"]


@contextlib.contextmanager
def two_node_cluster():
    """A head and one more node, one CPU each, all on 127.0.0.1; yields (cluster, the other node)."""
    from ray._private import ray_constants

    # conftest.py sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported; without it the
    # nodes would bind to this machine's public address and the cluster would hang on 127.0.0.1
    assert not ray_constants.ENABLE_RAY_CLUSTER, "Ray was imported before tests/conftest.py ran"
    head = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"},
    )
    other = head.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    head.wait_for_nodes()
    try:
        yield head, other
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.shutdown()


@pytest.fixture(scope="module")
def cluster():
    with two_node_cluster() as (head, _):
        yield head


def config(tmp_path: Path, name: str, **overrides):
    return load_config(TINY, overrides={
        "output.dir": str(tmp_path / name),
        "submissions.baselines": ["do_nothing", "finetune", "retrain"],
        **overrides,
    })


def scores(table):
    return table.set_index("team")[FIGURES].sort_index()


@pytest.fixture(scope="module")
def local_table(tmp_path_factory):
    cfg = config(tmp_path_factory.mktemp("local"), "runs", **{"executor.kind": "local", "executor.workers": 2})
    return scores(run_competition(cfg, progress=False, log=lambda _: None))


def test_ray_competition_scores_equal_the_local_executor(cluster, local_table, tmp_path):
    node_data = Path(tempfile.gettempdir()) / "unlearning-harness" / "data"  # both nodes' temp folder
    shutil.rmtree(node_data, ignore_errors=True)
    cfg = config(tmp_path, "runs", **{"executor.kind": "ray", "executor.address": cluster.address})
    table = scores(run_competition(cfg, progress=False, log=lambda _: None))
    assert table.notna().all().all(), table
    assert table.equals(local_table), f"ray:\n{table}\nlocal:\n{local_table}"
    assert len(cluster.list_all_nodes()) == 2
    assert not node_data.exists() or not any(node_data.iterdir()), "the nodes kept their copy of the splits"


def record_node(folder: str) -> None:
    """Leaves a file named by the node it ran on."""
    (Path(folder) / ray.get_runtime_context().get_node_id()).touch()


def test_on_every_node_runs_once_on_each_node(cluster, tmp_path):
    from harness.compete.executors import make_executor
    from harness.config import ExecutorConfig

    from ray import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # the cluster's workers cannot import this test file
    try:
        with make_executor(ExecutorConfig(kind="ray", address=cluster.address)) as executor:
            ran = executor.on_every_node(record_node, str(tmp_path))
            nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert ran == len(nodes) == 2
    assert {path.name for path in tmp_path.iterdir()} == nodes


def test_ray_worker_killed_mid_unit_is_retried_and_counted_once(cluster, local_table, tmp_path):
    """SIGKILL the Ray worker running a submission's runs while its sandbox works: Ray runs the unit
    again, the competition completes, every run is stored once and the scores do not move."""
    cfg = config(tmp_path, "runs", **{"executor.kind": "ray", "executor.address": cluster.address,
                                      "submissions.baselines": ["do_nothing", "finetune"]})
    table, acted = compete_and_strike(cfg, lambda pid: os.kill(pid, signal.SIGKILL))
    assert acted, "no Ray worker was seen running a submission unit"
    assert_each_run_stored_once(cfg, table, local_table)


def test_ray_node_lost_mid_unit_is_retried_on_another(local_table, tmp_path):
    """Remove a whole node (its raylet and workers killed) while it runs a submission unit: Ray
    runs the unit again on the node left, and the competition completes with each run once."""
    with two_node_cluster() as (head, doomed):
        raylet = doomed.all_processes["raylet"][0].process.pid
        cfg = config(tmp_path, "runs", **{"executor.kind": "ray", "executor.address": head.address,
                                          "submissions.baselines": ["do_nothing", "finetune"]})
        table, acted = compete_and_strike(cfg, lambda _: head.remove_node(doomed, allow_graceful=False),
                                          where=lambda pid: raylet in _ancestors(pid))
    assert acted, "no submission unit was seen on the node to remove"
    assert_each_run_stored_once(cfg, table, local_table)


def compete_and_strike(cfg, strike, *, where=lambda pid: True):
    """Score `cfg` while a thread calls strike(pid) once, on the first Ray worker seen mid-way
    through a submission unit (its sandbox up) that `where` accepts; returns (scores, struck)."""
    struck = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not struck.is_set():
            for pid in _ray_workers_running("run_submission"):
                if _sandbox_children(pid) and where(pid):
                    strike(pid)
                    struck.set()
                    break
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        table = scores(run_competition(cfg, progress=False, log=lambda _: None))
    finally:
        stop.set()
        watcher.join()
    return table, struck.is_set()


def assert_each_run_stored_once(cfg, table, local_table) -> None:
    runs = Store(cfg.run_dir / "results.sqlite").all_runs()
    pairs = [(r["submission_id"], r["run_index"]) for r in runs]
    assert len(pairs) == len(set(pairs)) == 2 * cfg.submissions.n_runs  # nothing lost, nothing twice
    assert all(r["status"] == "ok" for r in runs)
    assert table.equals(local_table.loc[table.index])


def _ray_workers_running(function: str) -> list[int]:
    """Pids of Ray workers executing `function` now (Ray titles them ray::<function>)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith(f"ray::{function}"):
            pids.append(int(proc.name))
    return pids


def _sandbox_children(pid: int) -> list[int]:
    """The children of `pid` that are a sandboxed worker (not, say, the ldconfig torch runs on import)."""
    found, children = [], []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # any thread may have started it (the host's supervisor does)
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    for child in children:
        try:
            if b"harness.sandbox" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except OSError:
            continue
    return found


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        chain.append(pid)
    return chain
