"""Unit tests of the sandbox's pure parts: spec, control lines, logs, statuses, command and container specs,
bounded walks, the seccomp filter and cgroups.

The real sandbox (bubblewrap, hostile submissions) is exercised in test_sandbox_hostile.py.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from harness.config import SandboxConfig
from harness.errors import HarnessError
from harness.sandbox import BACKENDS, BwrapPlan, Status, bwrap_command, docker_run_kwargs, resolve_backend
from harness.sandbox import fsguard
from harness.sandbox.backends import Exchange, SandboxUnavailable, bwrap_status, check_readable, docker_status, python_paths
from harness.sandbox.limits import Rlimits, acquire_uid, cores_for, count_tasks, exec_command, rlimits_for
from harness.sandbox.logs import CappedLog, LogSplitter
from harness.sandbox.outcomes import ExitInfo, classify_exit, exception_status, exit_from_returncode, one_line
from harness.sandbox.protocol import MARKER, MARKER_END, ControlLine, WorkerSpec, parse_control_line, parse_spec

SPEC = {"model": "small-cnn", "num_classes": 10, "in_channels": 3, "batch_size": 64, "device": "cpu", "seeds": [1, 2]}


# -- spec -------------------------------------------------------------------------------------
def test_parse_spec_reads_seeds_or_runs():
    assert parse_spec(SPEC).seeds == (1, 2)
    runs = {**{k: v for k, v in SPEC.items() if k != "seeds"}, "runs": [{"index": 5, "seed": 7}, {"index": 6, "seed": 8}]}
    spec = parse_spec(runs)
    assert spec.seeds == (7, 8) and spec.batch_format == "dict" and spec.time_cap_s is None


def test_worker_spec_round_trips_through_json():
    import json

    spec = WorkerSpec(model="small-cnn", num_classes=10, in_channels=3, batch_size=64, batch_format="tuple",
                      device="cpu", seeds=(3, 4), time_cap_s=2.5)
    assert parse_spec(json.loads(spec.to_json())) == spec


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"seeds": []}, "'seeds' must be a non-empty list of integers"),
        ({"seeds": [1, "2"]}, "'seeds' must be a non-empty list of integers"),
        ({"batch_format": "list"}, "'batch_format' must be one of"),
        ({"batch_format_override": "nested"}, "'batch_format_override' must be one of"),
        ({"model": None}, None),
    ],
    ids=["no-seeds", "string-seed", "bad-format", "bad-override", "model-none-is-a-string"],
)
def test_parse_spec_rejects_bad_values(change, match):
    data = {**SPEC, **change}
    if match is None:
        parse_spec(data)
        return
    with pytest.raises(HarnessError, match=match):
        parse_spec(data)


def test_parse_spec_names_missing_keys():
    with pytest.raises(HarnessError, match=r"missing keys \['device'\]"):
        parse_spec({k: v for k, v in SPEC.items() if k != "device"})


# -- control lines ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("ready", ControlLine("ready")),
        ("started 3 4711", ControlLine("started", index=3, pid=4711)),
        ("started -1 12", ControlLine("started", index=-1, pid=12)),
        ('exited 3 code:0 0 {"status": "ok", "reason": null}', ControlLine("exited", index=3, how="code:0", left=0,
                                                                          claim={"status": "ok", "reason": None})),
        ("exited 2 signal:9 0 null", ControlLine("exited", index=2, how="signal:9", left=0, claim=None)),
        ("exited 2 signal:9 0 [1]", ControlLine("exited", index=2, how="signal:9", left=0, claim=None)),
        ("started x 1", None),
        ("exited 1 code:0", None),
        ("stop 0 0.000001", None),
        ("", None),
    ],
    ids=["ready", "started", "probe", "exited", "no-claim", "claim-not-object", "bad-index", "short", "old-protocol", "empty"],
)
def test_parse_control_line(line, parsed):
    assert parse_control_line(line) == parsed


# -- logs -------------------------------------------------------------------------------------
def test_capped_log_keeps_head_and_tail():
    log = CappedLog(100)
    for i in range(1000):
        log.write(f"{i:04d}\n".encode())
    text = log.text()
    assert text.startswith("0000\n") and text.rstrip().endswith("0999")
    assert "bytes cut" in text and log.cut == 5000 - 100 and len(text) < 300


def test_log_splitter_routes_output_by_markers_across_chunk_boundaries():
    splitter = LogSplitter(limit=1000)
    stream = (f"loading\n{MARKER}0 seed 7\nrun zero says hi\n{MARKER_END}0\nsetting up one\n"
              f"{MARKER}1 seed 8\nrun one\x1e not a marker\n").encode()
    for i in range(0, len(stream), 7):  # markers split across chunks
        splitter.feed(stream[i : i + 7])
    splitter.close()
    assert splitter.text(None) == "loading\n"
    assert splitter.text(0) == "run zero says hi\n"
    assert splitter.text(1) == "setting up one\nrun one\x1e not a marker\n"
    assert splitter.wait_for_end(0, timeout=0) and splitter.last_line(1) == "run one\x1e not a marker"


def test_log_splitter_keeps_the_host_probes_lines_out_of_every_run_and_the_preamble():
    # the probes (-1, -2) run before run 0: a failed run 0's log is the preamble plus its own, so
    # the probes' markers would otherwise be the "log tail" of a timed-out run that printed nothing
    splitter = LogSplitter(limit=1000)
    splitter.feed((f"booted\n{MARKER}-1 seed 0\nprobe one\n{MARKER_END}-1\n{MARKER}-2 seed 0\n{MARKER_END}-2\n"
                   f"{MARKER}0 seed 3\nmine\n").encode())
    splitter.close()
    assert splitter.text(None) == "booted\n" and splitter.text(0) == "mine\n"
    assert splitter.last_line(-1) == "probe one" and splitter.wait_for_end(-2, timeout=0)


# -- statuses ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (MemoryError(), Status.OUT_OF_MEMORY),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory"), Status.OUT_OF_MEMORY),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), Status.OUT_OF_MEMORY),
        (ValueError("bad"), Status.EXCEPTION),
        (SystemExit(0), Status.EXCEPTION),
    ],
    ids=["memory-error", "cpu-allocator", "cuda-oom", "value-error", "sys-exit"],
)
def test_exception_status(exc, status):
    assert exception_status(exc) is status


@pytest.mark.parametrize(
    ("info", "log", "status", "words"),
    [
        (ExitInfo(code=137, oom_killed=True), "", Status.OUT_OF_MEMORY, "out-of-memory killer"),
        (ExitInfo(signal=signal.SIGKILL, kernel_oom_kills=1), "", Status.OUT_OF_MEMORY, "out-of-memory killer fired"),
        (ExitInfo(signal=signal.SIGKILL), "", Status.WORKER_DIED, "signal 9 (SIGKILL)"),
        (ExitInfo(signal=signal.SIGABRT), "terminate called after throwing 'std::bad_alloc'", Status.OUT_OF_MEMORY, "allocation failure"),
        (ExitInfo(signal=signal.SIGSEGV), "", Status.WORKER_DIED, "SIGSEGV"),
        (ExitInfo(code=3), "", Status.WORKER_DIED, "exited with code 3"),
    ],
    ids=["docker-oom", "kernel-oom", "sigkill", "bad-alloc", "segfault", "exit-code"],
)
def test_classify_exit(info, log, status, words):
    got, reason = classify_exit(info, log_tail=log)
    assert got is status and words in reason


@pytest.mark.parametrize(
    ("code", "bwrap", "info"),
    [(-9, False, ExitInfo(signal=9)), (137, True, ExitInfo(signal=9)), (137, False, ExitInfo(code=137)), (3, True, ExitInfo(code=3))],
    ids=["popen-signal", "bwrap-signal", "plain-137", "plain-code"],
)
def test_exit_from_returncode(code, bwrap, info):
    assert exit_from_returncode(code, bwrap=bwrap) == info


def test_one_line_folds_and_cuts():
    assert one_line("a\n  b\tc") == "a b c"
    assert len(one_line("x" * 1000)) == 300


# -- bubblewrap command -----------------------------------------------------------------------
def _plan(**changes) -> BwrapPlan:
    base = dict(
        inbox="/data/inbox",
        outbox="/data/outbox/exchange",
        python="/opt/py/bin/python3",
        python_paths=("/opt/py",),
        harness_dir="/src/harness",
        root_links={"/bin": "usr/bin", "/lib": "usr/lib"},
        root_dirs=(),
        etc_files=("/etc/ld.so.cache",),
        threads=2,
        bwrap="bwrap",
    )
    return BwrapPlan(**{**base, **changes})


def _pairs(args: list[str], flag: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == flag]


def test_bwrap_command_as_root_keeps_four_capabilities_for_the_parent_without_a_user_namespace():
    args = bwrap_command(_plan(drop_to=(60003, 60003)), SandboxConfig())
    sandbox, command = args[: args.index("--")], args[args.index("--") + 1 :]
    assert "--unshare-user" not in sandbox and "--uid" not in sandbox
    caps = [sandbox[i + 1] for i, a in enumerate(sandbox) if a == "--cap-add"]
    assert caps == ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL"]
    assert dict(_pairs(sandbox, "--setenv"))["HARNESS_RUN_UID"] == "60003:60003"  # each run drops to it
    assert command == ["/opt/py/bin/python3", "-m", "harness.sandbox.worker", "/sandbox/inbox", "/sandbox/outbox"]


def test_bwrap_command_unprivileged_maps_nobody_in_a_user_namespace():
    args = bwrap_command(_plan(), SandboxConfig())
    sandbox = args[: args.index("--")]
    assert sandbox[sandbox.index("--unshare-user") :][:5] == ["--unshare-user", "--uid", "65534", "--gid", "65534"]
    assert "--disable-userns" in sandbox and "--cap-add" not in sandbox
    assert dict(_pairs(sandbox, "--setenv"))["HARNESS_RUN_UID"] == ""


def test_bwrap_command_isolates_and_mounts_as_the_design_says():
    scratch = (("/x/scratch/tmp", "/tmp"), ("/x/scratch/kaggle_tmp", "/kaggle/tmp"),
               ("/x/scratch/kaggle_working", "/kaggle/working"), ("/x/scratch/dev_shm", "/dev/shm"))
    plan = _plan(gpu_devices=("/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"), scratch=scratch, control="fd:5,6",
                 seccomp_fd=7, gpu="0")
    args = bwrap_command(plan, SandboxConfig())
    sandbox = args[: args.index("--")]
    for flag in ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                 "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in sandbox
    assert sandbox[sandbox.index("--seccomp") + 1] == "7"
    assert ("/data/inbox", "/sandbox/inbox") in _pairs(sandbox, "--ro-bind")
    writable = _pairs(sandbox, "--bind")  # the only writable binds: the out folder and the scratch the host empties
    assert writable == [*scratch, ("/data/outbox/exchange", "/sandbox/outbox")]
    assert "--tmpfs" not in sandbox  # no tmpfs: nothing a run writes is memory outside the sandbox's limit
    assert ("/src/harness", "/opt/harness/harness") in _pairs(sandbox, "--ro-bind")
    assert ("/opt/py", "/opt/py") in _pairs(sandbox, "--ro-bind") and ("/usr", "/usr") in _pairs(sandbox, "--ro-bind")
    assert _pairs(sandbox, "--dev-bind") == [(d, d) for d in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm")]
    env = dict(_pairs(sandbox, "--setenv"))
    assert env["PYTHONPATH"] == "/opt/harness" and env["OMP_NUM_THREADS"] == "2" and env["HOME"] == "/tmp"
    assert env["HARNESS_CONTROL"] == "fd:5,6" and env["HARNESS_THREADS"] == "2" and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert sandbox.index("--dev") < sandbox.index("/dev/shm")  # /dev/shm's bind sits on the new /dev
    assert ("0755", "--dir") in [(sandbox[i + 1], sandbox[i + 2]) for i, a in enumerate(sandbox) if a == "--perms"]


def test_gpu_device_files_are_the_units_own_gpu_and_the_shared_nodes(monkeypatch):
    from harness.sandbox import backends

    found = ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia-uvm", "/dev/nvidiactl", "/dev/nvidia-modeset"]
    monkeypatch.setattr(backends, "gpu_devices", lambda: sorted(found))
    assert backends.gpu_device_files("1") == ["/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia1", "/dev/nvidiactl"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert backends.unit_gpu() == "1"
    monkeypatch.setattr(backends, "gpu_devices", lambda: [])
    assert backends.unit_gpu() is None and backends.gpu_device_files(None) == []


def test_cores_for_tiles_slots_over_the_cores():
    import os

    cores = sorted(os.sched_getaffinity(0))
    assert cores_for(0, 1) == (cores[0],)
    if len(cores) > 1:
        assert cores_for(1, 1) == (cores[1],) and set(cores_for(0, 1)).isdisjoint(cores_for(1, 1))
    assert cores_for(len(cores), 1) == (cores[0],)  # more slots than cores: they wrap around
    assert cores_for(0, 10**6) == tuple(cores)


def test_bwrap_command_without_gpus_binds_no_device():
    assert "--dev-bind" not in bwrap_command(_plan(), SandboxConfig())


def test_python_paths_cover_this_interpreter():
    import sys

    paths = python_paths()
    assert any(Path(sys.executable).resolve().is_relative_to(p) or sys.executable.startswith(p) for p in paths + ["/usr"])


# -- docker container spec --------------------------------------------------------------------
EXCHANGE = Exchange(out=Path("/w/x/out"), scratch={"/tmp": Path("/w/x/tmp"), "/dev/shm": Path("/w/x/shm")},
                    control_dir=Path("/w/x/control"))


def _docker(**changes):
    base = dict(image="x", inbox="/w/inbox", exchange=EXCHANGE, limits=SandboxConfig(), device="cpu", cpus=(1,))
    return docker_run_kwargs(**{**base, **changes})


def test_docker_run_kwargs_isolate_and_limit():
    limits = SandboxConfig(memory_gb=8, max_processes=128, shm_size_gb=2, cpus=4, scratch_gb=1, max_file_size_mb=512)
    kwargs = _docker(image="unlearning-harness:latest", limits=limits, cpus=(2, 3, 4, 5))
    assert kwargs["network_mode"] == "none" and "network_disabled" not in kwargs
    assert kwargs["read_only"] is True and kwargs["auto_remove"] is False and kwargs["detach"] is True
    assert kwargs["mem_limit"] == "8192m" and kwargs["memswap_limit"] == "8192m"
    assert kwargs["nano_cpus"] == 4_000_000_000 and kwargs["cpuset_cpus"] == "2,3,4,5"
    assert kwargs["pids_limit"] == 128 + 64 and kwargs["shm_size"] == "2048m"
    assert kwargs["user"] == "0:0" and kwargs["cap_drop"] == ["ALL"] and "no-new-privileges" in kwargs["security_opt"]
    assert kwargs["cap_add"] == ["SETUID", "SETGID", "SETPCAP", "KILL"]  # the parent's; each run drops to nobody
    assert kwargs["environment"]["HARNESS_RUN_UID"] == "65534:65534"
    assert kwargs["environment"]["HARNESS_CONTROL"] == "fifo:/sandbox/control"
    assert kwargs["volumes"] == {
        "/w/inbox": {"bind": "/sandbox/inbox", "mode": "ro"},
        "/w/x/out": {"bind": "/sandbox/outbox", "mode": "rw"},
        "/w/x/control": {"bind": "/sandbox/control", "mode": "rw"},
        "/w/x/tmp": {"bind": "/tmp", "mode": "rw"},
        "/w/x/shm": {"bind": "/dev/shm", "mode": "rw"},
    }
    assert "tmpfs" not in kwargs
    assert kwargs["command"] == ["/sandbox/inbox", "/sandbox/outbox"] and kwargs["working_dir"] == "/kaggle/working"
    assert "device_requests" not in kwargs and "PYTHONPATH" not in kwargs["environment"] and "entrypoint" not in kwargs
    fsize = [u for u in kwargs["ulimits"] if u["Name"] == "fsize"][0]
    assert fsize["Hard"] == 512 * 2**20


def test_docker_run_kwargs_request_the_units_gpu_only():
    kwargs = _docker(device="cuda", gpu="3")
    (request,) = kwargs["device_requests"]
    assert request["DeviceIDs"] == ["3"] and request["Capabilities"] == [["gpu"]]
    assert kwargs["environment"]["CUDA_VISIBLE_DEVICES"] == "3"
    assert "device_requests" not in _docker(device="cuda", gpu=None)


def test_docker_run_kwargs_bind_the_host_python_into_a_minimal_image():
    kwargs = _docker(host_python=("/opt/py",), harness_dir="/src/harness", python="/opt/py/bin/python3")
    assert kwargs["volumes"]["/opt/py"] == {"bind": "/opt/py", "mode": "ro"}
    assert kwargs["volumes"]["/src/harness"] == {"bind": "/opt/harness/harness", "mode": "ro"}
    assert kwargs["entrypoint"] == ["/opt/py/bin/python3", "-m", "harness.sandbox.worker"]
    assert kwargs["environment"]["PYTHONPATH"] == "/opt/harness"


def test_docker_run_kwargs_without_cpu_limit_leaves_nano_cpus_out():
    assert "nano_cpus" not in _docker()


# -- choosing a backend -----------------------------------------------------------------------
def test_backends_registry_names():
    assert BACKENDS.names() == ["bubblewrap", "docker", "none"]


def test_resolve_backend_unknown_name_suggests_the_closest():
    with pytest.raises(HarnessError, match="unknown sandbox backend 'bubblewrapp'; did you mean 'bubblewrap'"):
        resolve_backend("bubblewrapp", allow_unsafe_fallback=False)


def test_resolve_backend_none_only_when_named():
    assert resolve_backend("none", allow_unsafe_fallback=False) == "none"


@pytest.mark.skipif(not bwrap_status()[0], reason="bubblewrap does not work on this machine")
def test_resolve_backend_auto_picks_bubblewrap_where_it_works():
    assert resolve_backend("auto", allow_unsafe_fallback=False) == "bubblewrap"


def test_resolve_backend_auto_without_bwrap_falls_back_only_for_dry_runs(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap to be found
    bwrap_status.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="bubblewrap is unavailable .bwrap is not installed"):
            resolve_backend("auto", allow_unsafe_fallback=False)
        with pytest.warns(RuntimeWarning, match="NO SANDBOX"):
            assert resolve_backend("auto", allow_unsafe_fallback=True) == "none"
        with pytest.raises(SandboxUnavailable, match="sandbox backend 'bubblewrap'"):
            resolve_backend("bubblewrap", allow_unsafe_fallback=True)  # named explicitly: never a fallback
    finally:
        bwrap_status.cache_clear()


@pytest.mark.skipif(docker_status()[0], reason="a Docker daemon is reachable here")
def test_resolve_backend_docker_without_daemon_says_so():
    with pytest.raises(SandboxUnavailable, match="no Docker daemon reachable"):
        resolve_backend("docker", allow_unsafe_fallback=False)


# -- limits -----------------------------------------------------------------------------------
def test_rlimits_for_counts_what_the_uid_already_runs():
    import os

    limits = rlimits_for(memory_gb=2, max_processes=100, max_file_size_mb=10, uid=os.getuid())
    assert limits.data_bytes == 2 * 2**30 and limits.fsize_bytes == 10 * 2**20 and limits.core_bytes == 0
    assert limits.nproc >= 100 + 1  # this test process is one of the uid's tasks


def test_limits_exec_wrapper_sets_limits_before_exec():
    import subprocess

    probe = "import resource; print([resource.getrlimit(r)[0] for r in (resource.RLIMIT_DATA, resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE, resource.RLIMIT_CORE)])"
    command = exec_command(Rlimits(data_bytes=2**31, nproc=5000, fsize_bytes=2**20, core_bytes=0), ["python", "-c", probe])
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(command, capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin:" + str(Path(command[0]).parent), "PYTHONPATH": root})
    assert out.stdout.strip() == str([2**31, 5000, 2**20, 0])


def test_acquire_uid_gives_concurrent_sandboxes_distinct_uids():
    first = acquire_uid(61000, slots=3)
    second = acquire_uid(61000, slots=3)
    try:
        assert {first.uid, second.uid} == {61000, 61001}
    finally:
        first.release()
        second.release()
    with acquire_uid(61000, slots=3) as again:
        assert again.uid == 61000
    assert count_tasks(61000) == 0


def test_acquire_uid_rejects_root():
    with pytest.raises(HarnessError, match="first_uid must be a positive unprivileged uid"):
        acquire_uid(0)


def test_check_readable_names_the_unreadable_file(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir(mode=0o755)
    inbox.chmod(0o755)
    (inbox / "retain.npz").write_bytes(b"x")
    (inbox / "retain.npz").chmod(0o600)
    with pytest.raises(SandboxUnavailable, match=r"retain.npz has mode 0o600, which the sandbox's user cannot read"):
        check_readable(inbox)


# -- the image ---------------------------------------------------------------------------------
def test_dockerfile_builds_the_worker_image_with_the_pinned_torch():
    root = Path(__file__).resolve().parents[1]
    dockerfile = (root / "Dockerfile").read_text()
    pyproject = (root / "pyproject.toml").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    for pin in ("torch==2.14.1", "torchvision==0.29.1"):
        assert pin in dockerfile and pin in pyproject
    assert 'ENTRYPOINT ["python", "-m", "harness.sandbox.worker"]' in dockerfile
    assert 'CMD ["/sandbox/inbox", "/sandbox/outbox"]' in dockerfile
    assert _docker()["command"] == ["/sandbox/inbox", "/sandbox/outbox"]


# -- bounded walks -------------------------------------------------------------------------------
def _chain(root: Path, depth: int) -> None:
    """A folder chain deeper than Python's recursion limit and longer than PATH_MAX, made by fd."""
    import os

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.symlink("/etc", "escape", dir_fd=fd)
    os.close(fd)


def test_bounded_walks_survive_a_chain_that_breaks_recursive_walkers(tmp_path):
    import shutil

    _chain(tmp_path, 1500)
    with pytest.raises(RecursionError):
        shutil.rmtree(tmp_path / "d")  # what the host used before: the walk itself fails
    assert fsguard.measure(tmp_path, max_entries=10**6, max_depth=10**6).depth >= 1000
    capped = fsguard.measure(tmp_path, max_entries=100, max_depth=10**6)
    assert not capped.complete and capped.entries == 101
    assert not fsguard.measure(tmp_path, max_entries=10**6, max_depth=10).complete
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "f").write_text("x")
    (tmp_path / "locked").chmod(0)
    fsguard.clear(tmp_path)
    assert list(tmp_path.iterdir()) == [] and Path("/etc/passwd").exists()  # the link was removed, not followed


# -- seccomp and cgroups ------------------------------------------------------------------------
@pytest.mark.skipif(not bwrap_status()[0], reason="bubblewrap does not work on this machine")
def test_seccomp_filter_denies_namespaces_mounts_and_ptrace_but_not_fork_or_threads():
    import os
    import subprocess

    from harness.sandbox import seccomp

    probe = """
import ctypes, os, threading
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(result): return 0 if result == 0 else ctypes.get_errno()
print("unshare-user", errno_of(libc.unshare(0x10000000)))
print("clone-newuser", errno_of(libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)))
print("ptrace", errno_of(libc.ptrace(16, 1, 0, 0)))
print("mount", errno_of(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)))
pid = os.fork()
if pid == 0: os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
t = threading.Thread(target=print, args=("thread", 0)); t.start(); t.join()
"""
    base = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    fd = seccomp.filter_fd()
    try:
        got = subprocess.run([*base, "--seccomp", str(fd), "--", "python3", "-c", probe], pass_fds=(fd,), capture_output=True,
                             text=True, timeout=60)
    finally:
        os.close(fd)
    results = dict(line.split() for line in got.stdout.splitlines())
    assert results == {"unshare-user": "1", "clone-newuser": "1", "ptrace": "1", "mount": "1", "fork": "7", "thread": "0"}


def test_cgroup_confines_cores_and_memory_and_counts_cpu_time():
    import os
    import subprocess

    from harness.sandbox import cgroups

    if not cgroups.available()[0]:
        pytest.skip(cgroups.available()[1])
    group = cgroups.SandboxGroup.create(cpus=(sorted(os.sched_getaffinity(0))[0],), memory_bytes=256 * 2**20, pids_max=50)
    try:
        spin = ("import os, time\nos.sched_setaffinity(0, set(range(os.cpu_count())))\nprint(sorted(os.sched_getaffinity(0)))\n"
                "t = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
                "import mmap\nm = mmap.mmap(-1, 1 << 30, flags=mmap.MAP_SHARED)\nfor i in range(0, 1 << 30, 4096): m[i] = 1\n")
        command = exec_command(Rlimits(None, None, None), ["python3", "-u", "-c", spin], cgroups=tuple(group.procs_files))
        root = str(Path(__file__).resolve().parents[1])
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"], "PYTHONPATH": root})
        assert out.stdout.splitlines()[0] == str(list(group.cpus))  # asking for every core gets the group's
        assert out.returncode == -9 and group.oom_kills() >= 1  # 1 GiB of shared memory is charged and killed
        assert group.cpu_seconds() >= 0.3
    finally:
        group.remove()
    assert not group.path("memory").exists()


def test_deliver_calls_on_run_in_order_and_reraises_its_error():
    import queue
    from types import SimpleNamespace

    from harness.sandbox.host import _DONE, _deliver

    reports = queue.SimpleQueue()
    for item in ("a", "b", "c", _DONE):
        reports.put(item)
    seen, session = [], SimpleNamespace(aborted=False)

    def on_run(result):
        seen.append(result)
        if result == "b":
            raise KeyError("store is full")

    with pytest.raises(KeyError, match="store is full"):
        _deliver(reports, session, on_run)
    assert seen == ["a", "b"] and session.aborted is True


class _Compiled:
    """How torch.compile's OptimizedModule holds its model (importing dynamo here costs seconds)."""

    def __new__(cls, model):
        import torch

        holder = torch.nn.Module()
        holder._orig_mod = model
        return holder


@pytest.mark.parametrize("wrap", ["plain", "data-parallel", "compiled", "compiled-data-parallel"])
def test_unwrap_finds_the_model_inside_wrappers(wrap):
    import torch

    from harness.learn.models import build_model
    from harness.sandbox.worker import unwrap

    model = build_model("small-cnn")
    wrappers = {"plain": lambda m: m, "data-parallel": torch.nn.DataParallel, "compiled": _Compiled,
                "compiled-data-parallel": lambda m: _Compiled(torch.nn.DataParallel(m))}
    wrapped = wrappers[wrap](model)
    assert unwrap(wrapped, torch) is model
    assert list(unwrap(wrapped, torch).state_dict()) == list(model.state_dict())


# -- public reasons ---------------------------------------------------------------------------------
SOURCE = "import torch\n\ndef unlearning(net, a, b, c):\n    return helper(net)\n\ndef helper(net):\n    raise ValueError('x')\n"


@pytest.mark.parametrize(
    ("reason", "public"),
    [
        ("ValueError at mine.py:4 in unlearning -> mine.py:7 in helper", "same"),
        ("importing mine.py failed: ModuleNotFoundError at mine.py:1 in <module>", "same"),
        ("the model's weights cannot be read: ModuleNotFoundError", "same"),
        ("mine.py: unlearning is not defined; define def unlearning(net, retain_loader, forget_loader, val_loader)", "same"),
        ("SystemExit (called sys.exit)", "same"),
        ("ValueError: retain label of img7 is 3", "fallback"),  # the message: a channel out of the sandbox
        ("Label_3_5_7 at mine.py:4 in unlearning", "fallback"),  # an exception class made up from the data
        ("ValueError at mine.py:4 in img7_is_3", "fallback"),  # a function the file does not define
        ("ValueError at mine.py:900 in unlearning", "fallback"),  # a line the file does not have
        ("ValueError at other.py:4 in unlearning", "fallback"),
        (None, "fallback"),
    ],
)
def test_public_reasons_keep_only_the_templates(reason, public):
    from harness.sandbox.reasons import public_reason

    got = public_reason(reason, file="mine.py", source=SOURCE, fallback="FALLBACK")
    assert got == (reason if public == "same" else "FALLBACK")


@pytest.mark.parametrize(
    ("reason", "public"),
    [
        ("RecursionError at mine.py:4 in unlearning -> (12 more) -> mine.py:7 in helper", "same"),
        ("RecursionError at (12 more) -> mine.py:7 in helper", "fallback"),  # a chain starts at a frame
        ("RecursionError at mine.py:4 in unlearning -> (img7 is 3) -> mine.py:7 in helper", "fallback"),
    ],
    ids=["elided-middle", "elided-start", "not-a-count"],
)
def test_public_reasons_keep_a_long_chains_count_of_left_out_frames(reason, public):
    from harness.sandbox.reasons import public_reason

    got = public_reason(reason, file="mine.py", source=SOURCE, fallback="FALLBACK")
    assert got == (reason if public == "same" else "FALLBACK")


# -- errors that point at the participant's file ------------------------------------------------
MY_METHOD = """\
import torch


def unlearning(net, retain_loader, forget_loader, val_loader):
    for batch in retain_loader:
        step(net, batch)


def step(net, batch):
    return hessian(net)


def hessian(net):
    raise ValueError("the Hessian of img7 is singular")


def deep(n):
    return deep(n - 1) if n else hessian(None)
"""


def _raised(tmp_path: Path, call: str):
    """Import MY_METHOD from the sandbox's name for it under the participant's name, as a run does."""
    import sys

    from harness.sandbox.worker import load_module

    path = tmp_path / "inbox" / "submission.py"
    path.parent.mkdir()
    path.write_text(MY_METHOD)
    saved = sys.modules.get("submission")
    try:
        module = load_module(path, "my_method.py")
        with pytest.raises(Exception) as info:
            eval(call, vars(module))  # noqa: S307 - the test's own fixed expression
    finally:
        sys.modules.pop("submission", None)
        if saved is not None:
            sys.modules["submission"] = saved
    return info.value, path


def test_reason_names_the_participants_file_and_the_chain_from_unlearning(tmp_path):
    from harness.sandbox.reasons import public_reason
    from harness.sandbox.worker import describe

    exc, path = _raised(tmp_path, "unlearning(None, [{}], None, None)")
    reason = describe(exc, path, "my_method.py")
    assert reason == "ValueError at my_method.py:6 in unlearning -> my_method.py:10 in step -> my_method.py:14 in hessian"
    assert public_reason(reason, file="my_method.py", source=MY_METHOD, fallback="FALLBACK") == reason
    assert "img7" not in reason  # the exception's text is the log's only


def test_reason_of_a_deep_chain_keeps_both_ends_and_says_how_many_are_left_out(tmp_path):
    from harness.sandbox.reasons import public_reason
    from harness.sandbox.worker import CHAIN_FRAMES, describe

    exc, path = _raised(tmp_path, "deep(40)")
    reason = describe(exc, path, "my_method.py")
    frames = reason.split(" at ", 1)[1].split(" -> ")
    assert len(frames) == CHAIN_FRAMES
    assert frames[0] == "my_method.py:18 in deep" and frames[1] == f"({41 + 1 - CHAIN_FRAMES + 1} more)"
    assert frames[-1] == "my_method.py:14 in hessian"
    assert public_reason(reason, file="my_method.py", source=MY_METHOD, fallback="FALLBACK") == reason


def test_traceback_in_the_log_starts_in_the_participants_file_and_names_it(tmp_path, capsys):
    from harness.sandbox.worker import print_traceback

    exc, path = _raised(tmp_path, "unlearning(None, [{}], None, None)")
    print_traceback(exc, path, "my_method.py")
    log = capsys.readouterr().err
    lines = log.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1] == '  File "my_method.py", line 6, in unlearning'  # not the harness's frames that called it
    assert '  File "my_method.py", line 14, in hessian' in lines and "    raise ValueError(\"the Hessian of img7 is singular\")" in lines
    assert lines[-1] == "ValueError: the Hessian of img7 is singular"
    assert "submission.py" not in log and str(tmp_path) not in log


def test_syntax_error_names_the_participants_file_and_line(tmp_path, capsys):
    from harness.sandbox.worker import describe, load_module, print_traceback

    path = tmp_path / "submission.py"
    path.write_text("def unlearning(net, a, b, c):\n    return (\n")
    with pytest.raises(SyntaxError) as info:
        load_module(path, "my_method.py")
    assert describe(info.value, path, "my_method.py") == "SyntaxError at my_method.py:2"
    print_traceback(info.value, path, "my_method.py")
    log = capsys.readouterr().err
    assert log.startswith('  File "my_method.py", line 2\n') and "worker.py" not in log  # no harness frames


# -- hints --------------------------------------------------------------------------------------
def _log(*exception: str) -> str:
    return "\n".join(["epoch 1", "Traceback (most recent call last):", '  File "my_method.py", line 6, in unlearning',
                      "    x = batch[0]", "        ~~~~~^^^", *exception])


NO_DRIVER = "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver"


@pytest.mark.parametrize(
    ("log", "device", "batch_format", "hint"),
    [
        (_log(NO_DRIVER), "cpu", "dict", "CUDA_HINT"),
        (_log("AssertionError: Torch not compiled with CUDA enabled"), "cpu", "tuple", "CUDA_HINT"),
        (_log("RuntimeError: Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you must "
              "use the 'spawn' start method"), "cpu", "dict", "CUDA_HINT"),  # what a run forked on a CPU machine gets
        (_log(NO_DRIVER), "cuda", "dict", None),  # a CUDA machine's driver trouble is not this mistake
        (_log("KeyError: 0"), "cpu", "dict", "DICT_HINT"),
        (_log("ValueError: too many values to unpack (expected 2)"), "cpu", "dict", "DICT_HINT"),
        (_log("AttributeError: 'str' object has no attribute 'to'"), "cpu", "dict", "DICT_HINT"),
        (_log("ValueError: too many values to unpack (expected 2)"), "cpu", "tuple", None),
        (_log("TypeError: list indices must be integers or slices, not str"), "cpu", "tuple", "TUPLE_HINT"),
        (_log("TypeError: list indices must be integers or slices, not str"), "cpu", "dict", None),
        (_log("KeyError: 'img'"), "cpu", "dict", None),
        (_log("ValueError: the Hessian is singular"), "cpu", "dict", None),
        ("printed KeyError: 0 but never raised", "cpu", "dict", None),
    ],
    ids=["no-driver", "cpu-build", "forked", "cuda-machine", "dict-by-int", "dict-unpacked", "dict-key-used", "tuple-unpacked",
         "tuple-by-str", "dict-list-index", "missing-key", "other", "no-traceback"],
)
def test_failure_hint_names_the_common_mistake(log, device, batch_format, hint):
    from harness.sandbox import hints

    assert hints.failure_hint(log, device=device, batch_format=batch_format) == (getattr(hints, hint) if hint else None)


def test_traceback_tail_is_the_last_traceback_cut_to_its_last_lines():
    from harness.sandbox.hints import traceback_tail

    log = "noise\n" + _log("ValueError: first") + "\nmore noise\n" + _log("KeyError: 0")
    assert traceback_tail(log) == _log("KeyError: 0").splitlines()[1:]
    assert traceback_tail(log, lines=2) == ["        ~~~~~^^^", "KeyError: 0"]
    assert traceback_tail("a\n\nb\n") == ["a", "b"]  # no traceback (a timeout): the log's last lines


@pytest.mark.parametrize(
    ("source", "declared"),
    [('BATCH_FORMAT = "tuple"\n', "tuple"), ("BATCH_FORMAT: str = 'dict'\n", "dict"), ("x = 1\n", None),
     ("BATCH_FORMAT = pick()\n", None), ("def f(:\n", None)],
    ids=["tuple", "annotated", "none", "computed", "syntax-error"],
)
def test_declared_batch_format_is_read_without_running_the_file(source, declared):
    from harness.sandbox.hints import declared_batch_format

    assert declared_batch_format(source) == declared


def test_remove_stale_clears_the_cgroups_of_a_killed_runner_only():
    import subprocess

    from harness.sandbox import cgroups

    if not cgroups.available()[0]:
        pytest.skip(cgroups.available()[1])
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the runner that was killed
    left = cgroups.SandboxGroup(name=f"{dead.pid}-0-1", cpus=(0,))
    live = cgroups.SandboxGroup.create(cpus=(0,), memory_bytes=None, pids_max=None)  # ours: this process is alive
    try:
        for controller in cgroups.CONTROLLERS:
            left.path(controller).mkdir(parents=True)
        assert f"{dead.pid}-0-1" in cgroups.remove_stale()
        assert not any(left.path(c).exists() for c in cgroups.CONTROLLERS)
        assert all(live.path(c).exists() for c in cgroups.CONTROLLERS)
    finally:
        live.remove()
        left.remove()
