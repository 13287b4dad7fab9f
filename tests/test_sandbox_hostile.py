"""The real sandbox against hostile submissions: bubblewrap, run as root the way CI runs it.

One module fixture starts every scenario's worker (concurrently, each in its own sandbox and,
under root, its own uid) and the tests then check each outcome. The hostile submission does one
bad thing per run, chosen by its run's seed, so a single worker covers most attacks, and its
last well-behaved run must come out bit-identical to the same run in a clean worker.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.config import SandboxConfig
from harness.data.loaders import save_split
from harness.learn.models import build_model
from harness.sandbox import RunResult, Status, run_worker
from harness.sandbox.backends import bwrap_status, docker_status
from harness.sandbox.limits import count_tasks

DOCKER_IMAGE = os.environ.get("HARNESS_DOCKER_IMAGE", "unlearning-harness-minbase:latest")  # scripts/docker_engine.sh image


def docker_ready(image: str) -> tuple[bool, str]:
    ok, why = docker_status()
    if not ok:
        return False, f"no Docker engine ({why}); start one with scripts/docker_engine.sh start"
    import docker

    try:
        docker.from_env().images.get(image)
    except Exception as exc:  # noqa: BLE001 - missing image or daemon trouble: not ready either way
        return False, f"no image {image} ({type(exc).__name__}); build it with scripts/docker_engine.sh image"
    return True, ""


def require_backend(name: str) -> None:
    """Skip a backend this machine lacks, except under CI, which must run every backend for real."""
    ok, why = docker_ready(DOCKER_IMAGE) if name == "docker" else bwrap_status()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the hostile tests against {name} for real, and it is not ready: {why}")
        pytest.skip(f"{name} does not work here: {why}")


def limits_for(backend: str, limits: SandboxConfig) -> SandboxConfig:
    if backend == "docker":
        return replace(limits, docker_image=DOCKER_IMAGE, docker_host_python=True)
    return limits


@pytest.fixture(scope="module", params=["bubblewrap", "docker"])
def backend(request) -> str:
    require_backend(request.param)
    return request.param

FIRST_UID = 62000  # away from other tests' sandboxes, so leftovers are ours to count
LIMITS = SandboxConfig(memory_gb=2.0, max_processes=64, max_file_size_mb=64, log_bytes=16 * 1024, cpus=1, scratch_gb=0.25,
                       first_uid=FIRST_UID)
GOOD_SEED = 108
TRAIN = '''
def train(net, retain_loader):
    """One epoch of SGD on retain, modifying net in place (the Kaggle template's way)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()
    for batch in retain_loader:
        images, labels = (batch["image"], batch["age_group"]) if isinstance(batch, dict) else batch
        optimizer.zero_grad()
        F.cross_entropy(net(images), labels).backward()
        optimizer.step()
    net.eval()
'''

HOSTILE = '''
import os, resource, signal, socket, sys, time
import torch
import torch.nn.functional as F

PORT = {port}
SENTINEL = {sentinel!r}
HOST_DIR = {host_dir!r}
ESCAPES = {escapes!r}
{train}

def unlearning(net, retain_loader, forget_loader, val_loader):
    seed = torch.initial_seed()
    if seed == 100:
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=3).close()
            print("NETWORK connected")
        except OSError as exc:
            print(f"NETWORK blocked {{exc}}")
    elif seed == 101:
        for path in (SENTINEL, "/etc/shadow", "/root/.bash_history", "/proc/1/environ"):
            try:
                print(f"READ {{path}} got {{open(path).read()[:80]!r}}")
            except OSError as exc:
                print(f"READ {{path}} blocked {{type(exc).__name__}}")
        print(f"LIST / {{sorted(os.listdir('/'))}}")
    elif seed == 102:
        for path in ESCAPES + ["/kaggle/tmp/ok.txt", "/kaggle/working/ok.txt", "/tmp/ok.txt"]:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as handle:
                    handle.write("escaped")
                print(f"WRITE {{path}} ok")
            except OSError as exc:
                print(f"WRITE {{path}} blocked {{type(exc).__name__}}")
    elif seed == 103:
        parent, forks = os.getpid(), 0
        try:
            while True:
                os.fork()  # every process keeps forking: a classic fork bomb
                forks += 1
        except OSError:
            if os.getpid() == parent:
                print(f"FORK limit after {{forks}} forks")
            raise
    elif seed == 104:
        for _ in range(50_000):
            print("x" * 100)  # 5 MB
    elif seed == 105:
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float("nan"))
    elif seed == 106:
        return torch.nn.Linear(3, 10)
    elif seed == 107:
        hoard = []
        while True:
            hoard.append(bytearray(64 * 2**20))
    elif seed == {good_seed}:
        train(net, retain_loader)
    elif seed == 109:
        raise ValueError("deliberate failure")
    elif seed == 111:
        loader = torch.utils.data.DataLoader(retain_loader.dataset, batch_size=32, num_workers=2)
        print(f"WORKERS ok {{sum(1 for _ in loader)}} batches")  # worker processes pass tensors through /dev/shm
    elif seed == 110:
        limits = {{name: resource.getrlimit(getattr(resource, "RLIMIT_" + name))[0] for name in ("DATA", "NPROC", "FSIZE", "CORE")}}
        caps = {{k: v.strip() for k, v in (line.split(":", 1) for line in open("/proc/self/status")) if k.startswith("Cap")}}
        print("LIMITS " + json.dumps({{"uid": os.getuid(), "limits": limits, "caps": caps}}))
'''.replace("import os, resource", "import json, os, resource")

KAGGLE = '''
import os
import torch
import torch.nn.functional as F
{train}

def unlearning(net, retain_loader, forget_loader, val_loader, class_weights=None):
    """Kaggle template style: dict batches, in place, returns None, scratch under /kaggle."""
    print(f"KAGGLE dataset={{len(retain_loader.dataset)}} batch_size={{retain_loader.batch_size}} cwd={{os.getcwd()}}")
    train(net, retain_loader)
    torch.save(net.state_dict(), "/kaggle/tmp/checkpoint.pth")
    with open("/kaggle/working/notes.txt", "w") as handle:
        handle.write("done")
    net.load_state_dict(torch.load("/kaggle/tmp/checkpoint.pth"))
'''

STARTING_KIT = '''
import copy
import torch
import torch.nn.functional as F

BATCH_FORMAT = "tuple"
{train}

def unlearning(net, retain_loader, forget_loader, val_loader):
    """CIFAR-10 starting-kit style: (image, label) batches, returns a model."""
    images, labels = next(iter(retain_loader))
    print(f"KIT batch={{type(next(iter(retain_loader))).__name__}} images={{tuple(images.shape)}}")
    model = copy.deepcopy(net)
    train(model, retain_loader)
    return model
'''

SLEEPER = '''
import time
import torch

def unlearning(net, retain_loader, forget_loader, val_loader):
    if torch.initial_seed() == 2:
        time.sleep(60)
'''

EXITER = '''
import os

def unlearning(net, retain_loader, forget_loader, val_loader):
    os._exit(3)
'''

IMPORT_ERROR = '''
import numpy
import nonexistent_module_xyz
'''

MISSING_FUNCTION = '''
def unlearn(net, retain_loader, forget_loader, val_loader):
    return net
'''

CUDA_PROBE = '''
import torch

def unlearning(net, retain_loader, forget_loader, val_loader):
    print(f"CUDA available={torch.cuda.is_available()} count={torch.cuda.device_count()} net_on={next(net.parameters()).device}")
'''


def _split(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "image": rng.standard_normal((n, 3, 16, 16)).astype(np.float32),
        "image_id": np.array([f"img{i}" for i in range(n)]),
        "age_group": rng.integers(0, 10, n),
        "age": rng.integers(0, 90, n),
        "person_id": np.array([f"p{i % 11}" for i in range(n)]),
    }


@functools.lru_cache(maxsize=1)
def original_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # torch's global RNG: build it once, not from concurrent threads
    return build_model("small-cnn", num_classes=10, in_channels=3).state_dict()


def make_inbox(folder: Path, source: str, seeds: list[int], *, time_cap_s: float | None = 60.0, device: str = "cpu") -> Path:
    """An inbox as the runner writes one: tiny random data, a small CNN's original weights."""
    inbox = folder / "inbox"
    inbox.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("retain", 64), ("forget", 16), ("val", 16)):
        save_split(inbox / f"{split}.npz", _split(rng, n))
    save_file(original_weights(), str(inbox / "original.safetensors"))
    (inbox / "submission.py").write_text(source)
    spec = {"model": "small-cnn", "num_classes": 10, "in_channels": 3, "batch_size": 16, "batch_format": "dict",
            "device": device, "runs": [{"index": i, "seed": s} for i, s in enumerate(seeds)], "seeds": seeds,
            "time_cap_s": time_cap_s}
    (inbox / "spec.json").write_text(json.dumps(spec))
    return inbox


class Scenario:
    def __init__(self, name: str, source: str, seeds: list[int], *, time_cap_s: float | None = 60.0,
                 backend: str = "bubblewrap", limits: SandboxConfig = LIMITS, device: str = "cpu") -> None:
        self.name, self.source, self.seeds = name, source, seeds
        self.time_cap_s, self.backend, self.limits, self.device = time_cap_s, backend, limits, device
        self.results: list[RunResult] = []
        self.reported: list[int] = []
        self.seconds = 0.0

    def run(self, root: Path) -> Scenario:
        folder = root / self.name
        inbox = folder / "inbox" if (folder / "inbox").exists() else self.prepare(root)
        started = time.monotonic()
        self.results = run_worker(inbox, folder / "outbox", n_runs=len(self.seeds), time_cap_s=self.time_cap_s,
                                  backend=self.backend, limits=self.limits, device=self.device,
                                  on_run=lambda r: self.reported.append(r.index))
        self.seconds = time.monotonic() - started
        self.outbox = folder / "outbox"
        return self

    def prepare(self, root: Path) -> Path:
        return make_inbox(root / self.name, self.source, self.seeds, time_cap_s=self.time_cap_s, device=self.device)

    def by_seed(self, seed: int) -> RunResult:
        return self.results[self.seeds.index(seed)]


HOSTILE_SEEDS = [100, 101, 102, 104, 105, 106, 107, GOOD_SEED, 109, 110, 111, 103]  # the fork bomb last: under Docker it may run to the cap


@pytest.fixture(scope="module")
def world(tmp_path_factory, backend):
    """Every scenario's worker, three at a time, plus what the host watched from outside."""
    root = tmp_path_factory.mktemp(f"sandbox-{backend}")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    host_dir = root / "host-only"
    host_dir.mkdir()
    sentinel = host_dir / "sentinel.txt"
    sentinel.write_text("TOP-SECRET-SENTINEL")
    escapes = [str(host_dir / "escaped.txt"), "/escaped.txt", "/usr/escaped.txt", "/opt/harness/harness/escaped.py",
               "/sandbox/inbox/escaped.txt", "/etc/escaped.txt", str(Path(__file__).resolve().parent / "escaped.txt")]
    hostile = HOSTILE.format(port=listener.getsockname()[1], sentinel=str(sentinel), host_dir=str(host_dir),
                             escapes=escapes, train=TRAIN, good_seed=GOOD_SEED)
    limits = limits_for(backend, LIMITS)
    scenarios = [
        Scenario("hostile", hostile, HOSTILE_SEEDS, backend=backend, limits=limits),
        Scenario("kaggle", KAGGLE.format(train=TRAIN), [GOOD_SEED, 7], backend=backend, limits=limits),
        Scenario("sleeper", SLEEPER, [1, 2, 3], time_cap_s=2.0, backend=backend, limits=limits),
        Scenario("kit", STARTING_KIT.format(train=TRAIN), [5], backend=backend, limits=limits),
        Scenario("exiter", EXITER, [1, 2], backend=backend, limits=limits),
        Scenario("import_error", IMPORT_ERROR, [1, 2], backend=backend, limits=limits),
        Scenario("missing_function", MISSING_FUNCTION, [1], backend=backend, limits=limits),
        Scenario("no_room_for_torch", KAGGLE.format(train=TRAIN), [1], limits=replace(limits, memory_gb=0.15), backend=backend),
        Scenario("unsafe_none", STARTING_KIT.format(train=TRAIN), [5], backend="none"),
    ]
    for scenario in scenarios:
        scenario.prepare(root)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = {s.name: s for s in pool.map(lambda s: s.run(root), scenarios)}
    try:
        connection, _ = listener.accept()
        connection.close()
        connected = True
    except BlockingIOError:
        connected = False
    listener.close()
    for scenario in done.values():
        print(f"{scenario.name}: {scenario.seconds:.1f} s, {[str(r.status) for r in scenario.results]}")
    return {"scenarios": done, "listener_connected": connected, "escapes": escapes, "sentinel": sentinel,
            "host_dir": host_dir, "seconds": time.monotonic() - started, "backend": backend}


def _lines(result: RunResult, tag: str) -> list[str]:
    return [line for line in result.log.splitlines() if line.startswith(tag)]


# -- escapes ----------------------------------------------------------------------------------
def test_network_is_unreachable_even_on_loopback(world):
    result = world["scenarios"]["hostile"].by_seed(100)
    assert result.status is Status.OK
    assert _lines(result, "NETWORK")[0].startswith("NETWORK blocked")
    assert world["listener_connected"] is False


def test_host_files_outside_the_inbox_cannot_be_read(world):
    result = world["scenarios"]["hostile"].by_seed(101)
    assert result.status is Status.OK
    assert "TOP-SECRET-SENTINEL" not in result.log
    reads = {line.split()[1]: line.split()[2] for line in _lines(result, "READ")}
    assert reads[str(world["sentinel"])] == "blocked" and reads["/etc/shadow"] == "blocked"
    visible = _lines(result, "LIST")[0]
    assert "'work'" not in visible  # none of the host's own folders (the image's minimal tree under Docker)
    if world["backend"] == "bubblewrap":
        assert "'root'" in visible and "'home'" not in visible


def test_writes_outside_scratch_leave_the_host_untouched(world):
    result = world["scenarios"]["hostile"].by_seed(102)
    assert result.status is Status.OK
    writes = {line.split()[1]: line.split()[2] for line in _lines(result, "WRITE")}
    for path in ("/escaped.txt", "/usr/escaped.txt", "/opt/harness/harness/escaped.py", "/sandbox/inbox/escaped.txt", "/etc/escaped.txt"):
        assert writes[path] == "blocked", path
    assert writes["/kaggle/tmp/ok.txt"] == writes["/kaggle/working/ok.txt"] == writes["/tmp/ok.txt"] == "ok"
    for path in world["escapes"]:
        assert not Path(path).exists(), f"{path} was written on the host"
    assert sorted(p.name for p in world["host_dir"].iterdir()) == ["sentinel.txt"]
    inbox = world["scenarios"]["hostile"].outbox.parent / "inbox"
    assert sorted(p.name for p in inbox.iterdir()) == sorted(
        ["submission.py", "original.safetensors", "spec.json", "retain.npz", "forget.npz", "val.npz"])


# -- resources --------------------------------------------------------------------------------
def test_fork_bomb_hits_the_process_limit_as_root_and_leaves_a_clean_row(world):
    result = world["scenarios"]["hostile"].by_seed(103)
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork
    if world["backend"] == "docker" and result.status is Status.TIMEOUT:
        return  # the pids cgroup can leave the bomb forking as fast as its processes die: killed at the cap
    assert result.status is Status.EXCEPTION, result.reason
    assert "BlockingIOError" in result.reason and "submission.py" in result.reason
    (line,) = _lines(result, "FORK limit")
    assert 0 < int(line.split()[3]) < LIMITS.max_processes + 64  # RLIMIT_NPROC, or the pids cgroup under Docker
    assert result.seconds < 60  # within the cap: the bomb ended itself
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


def test_limits_hold_inside_the_sandbox(world):
    result = world["scenarios"]["hostile"].by_seed(110)
    probe = json.loads(_lines(result, "LIMITS")[0][len("LIMITS "):])
    if world["backend"] == "docker":  # memory and processes are the container's cgroups, not rlimits
        assert probe["uid"] == 65534 and all(int(value, 16) == 0 for value in probe["caps"].values())
        assert probe["limits"]["FSIZE"] == LIMITS.max_file_size_mb * 2**20 and probe["limits"]["CORE"] == 0
        return
    assert probe["limits"]["DATA"] == int(LIMITS.memory_gb * 2**30)
    assert probe["limits"]["FSIZE"] == LIMITS.max_file_size_mb * 2**20 and probe["limits"]["CORE"] == 0
    assert probe["limits"]["NPROC"] >= LIMITS.max_processes  # on top of what the uid already runs
    assert all(int(value, 16) == 0 for name, value in probe["caps"].items() if name != "CapBnd" or os.getuid() == 0)
    if os.getuid() == 0:
        assert probe["uid"] >= LIMITS.first_uid  # a real unprivileged uid, not root mapped to nobody
        assert probe["limits"]["NPROC"] == LIMITS.max_processes  # a fresh uid of its own runs nothing else
    else:
        assert probe["uid"] == 65534


def test_dataloader_worker_processes_work_inside(world):
    result = world["scenarios"]["hostile"].by_seed(111)
    assert result.status is Status.OK, result.reason
    assert _lines(result, "WORKERS") == ["WORKERS ok 2 batches"]


def test_endless_allocation_is_out_of_memory(world):
    result = world["scenarios"]["hostile"].by_seed(107)
    assert result.status is Status.OUT_OF_MEMORY, result.reason


def test_megabytes_of_output_are_capped(world):
    result = world["scenarios"]["hostile"].by_seed(104)
    assert result.status is Status.OK
    assert len(result.log) < LIMITS.log_bytes + 200 and "bytes cut" in result.log


def test_sleeping_past_the_cap_is_a_timeout_with_the_times(world):
    sleeper = world["scenarios"]["sleeper"]
    first, second, third = sleeper.results
    assert first.status is Status.OK
    assert second.status is Status.TIMEOUT and "past the 2.00 s time cap; killed" in second.reason
    assert 2.0 < second.seconds < 10
    assert third.status is Status.TIMEOUT and third.reason.startswith("not run: run 1 exceeded the 2.00 s time cap")
    assert sleeper.reported == [0, 1, 2]


@pytest.mark.skipif(os.getuid() != 0, reason="sandboxes run as the caller's own uid when not root")
def test_killed_and_finished_workers_leave_no_process_behind(world):
    assert sum(count_tasks(uid) for uid in range(FIRST_UID, FIRST_UID + 10)) == 0
    if world["backend"] == "docker":
        import docker

        assert docker.from_env().containers.list(all=True, filters={"label": f"unlearning-harness.runner={os.getpid()}"}) == []


# -- outcomes ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seed", "status", "words"),
    [
        (105, Status.BAD_WEIGHTS, "non-finite values"),
        (106, Status.BAD_WEIGHTS, "missing keys"),
        (109, Status.EXCEPTION, "ValueError at submission.py:"),
    ],
    ids=["nan-weights", "wrong-architecture", "exception"],
)
def test_bad_returns_get_their_status(world, seed, status, words):
    result = world["scenarios"]["hostile"].by_seed(seed)
    assert result.status is status and words in result.reason and result.weights_path is None


def test_public_reasons_are_templates_and_the_message_stays_in_the_private_log(world):
    result = world["scenarios"]["hostile"].by_seed(109)
    assert result.reason.startswith("ValueError at submission.py:") and "deliberate failure" not in result.reason
    assert "ValueError: deliberate failure" in result.log


def test_os_exit_is_worker_died_and_ends_only_its_own_run(world):
    first, second = world["scenarios"]["exiter"].results
    for result in (first, second):  # one process per run: the second run still ran, and died the same way
        assert result.status is Status.WORKER_DIED and result.reason == "the run's process exited with code 3 without reporting"


def test_import_error_and_missing_function(world):
    for result in world["scenarios"]["import_error"].results:
        assert result.status is Status.IMPORT_ERROR
        assert result.reason == "importing submission.py failed: ModuleNotFoundError at submission.py:3 in <module>"
        assert "No module named 'nonexistent_module_xyz'" in result.log
    (missing,) = world["scenarios"]["missing_function"].results
    assert missing.status is Status.MISSING_FUNCTION and "unlearning is not defined" in missing.reason


def test_a_worker_that_cannot_start_is_a_sandbox_error(world):
    (result,) = world["scenarios"]["no_room_for_torch"].results
    assert result.status is Status.SANDBOX_ERROR and result.reason.startswith("the sandbox failed to start")


def test_good_run_after_hostile_runs_matches_a_clean_worker(world):
    hostile = world["scenarios"]["hostile"].by_seed(GOOD_SEED)
    clean = world["scenarios"]["kaggle"].by_seed(GOOD_SEED)
    assert hostile.status is Status.OK and clean.status is Status.OK
    a, b = load_file(str(hostile.weights_path)), load_file(str(clean.weights_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    original = load_file(str(world["scenarios"]["kaggle"].outbox.parent / "inbox" / "original.safetensors"))
    assert not torch.equal(a["fc.weight"], original["fc.weight"])  # it did train


def test_kaggle_and_starting_kit_styles_both_run(world):
    kaggle = world["scenarios"]["kaggle"]
    assert [r.status for r in kaggle.results] == [Status.OK, Status.OK]
    assert "KAGGLE dataset=64 batch_size=16 cwd=/kaggle/working" in kaggle.results[0].log
    (kit,) = world["scenarios"]["kit"].results
    assert kit.status is Status.OK and "KIT batch=list images=(16, 3, 16, 16)" in kit.log


def test_unsafe_backend_runs_the_same_worker(world):
    (result,) = world["scenarios"]["unsafe_none"].results
    assert result.status is Status.OK, result.reason
    (clean,) = world["scenarios"]["kit"].results
    a, b = load_file(str(result.weights_path)), load_file(str(clean.weights_path))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_host_records_and_cleanup(world):
    scenario = world["scenarios"]["hostile"]
    outbox = scenario.outbox
    assert not (outbox / "exchange").exists()
    rows = [json.loads(line) for line in (outbox / "runs.jsonl").read_text().splitlines()]
    assert [row["seed"] for row in rows] == HOSTILE_SEEDS and scenario.reported == list(range(len(HOSTILE_SEEDS)))
    assert all(row["peak_mem_mb"] and row["peak_mem_mb"] > 50 for row in rows)
    assert (outbox / f"run_{HOSTILE_SEEDS.index(GOOD_SEED)}.safetensors").stat().st_uid == os.getuid()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA on this machine")
def test_cuda_is_visible_inside_whenever_visible_outside(tmp_path):
    scenario = Scenario("cuda", CUDA_PROBE, [1], device="cuda", limits=replace(LIMITS, memory_gb=8.0, cpus=None))
    scenario.prepare(tmp_path)
    scenario.run(tmp_path)
    (result,) = scenario.results
    assert result.status is Status.OK, result.reason
    assert f"CUDA available=True count={torch.cuda.device_count()} net_on=cuda:0" in result.log

