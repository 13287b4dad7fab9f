"""Where the worker runs: bubblewrap (Linux default), Docker (organizers), or a plain process.

Each backend starts `python -m harness.sandbox.worker INBOX OUTBOX` (the warm parent that forks
one process per run, see harness.sandbox.worker) and hands back a `Launched` handle that the
host watches: merged stdout/stderr, exit status, a kill of the whole sandbox, and what the host
can measure from outside (memory, CPU time, processes).

bubblewrap: new mount, pid, network, IPC, UTS and cgroup namespaces; a seccomp filter (no new
namespaces, mounts, ptrace, BPF...); a read-only system (/usr, the Python installation, the
harness source); host folders for /tmp, /dev/shm, /kaggle/tmp and /kaggle/working that the host
empties between runs; the inbox read-only; environment cleared; killed with its parent; inside
a cgroup per controller (cores, memory with shared memory and tmpfs, processes, CPU time) on
hosts that have them. As root, the warm parent keeps only CAP_SETUID, CAP_SETGID, CAP_SETPCAP
and CAP_KILL, and each run drops to the sandbox's own unprivileged uid with no capabilities, so
RLIMIT_NPROC holds and no run can signal, trace or read the parent. As non-root, a user
namespace maps the sandbox's nobody (65534) to the caller.

The pure parts (`bwrap_command`, `docker_run_kwargs`) build the command and the container spec
from plain values, so they are tested without a GPU or a Docker daemon.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import signal
import site
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import harness
from harness.config import SandboxConfig
from harness.errors import HarnessError
from harness.registry import Registry
from harness.sandbox.cgroups import SandboxGroup
from harness.sandbox.limits import UidSlot, acquire_uid, cores_for, current_slot, exec_command, rlimits_for
from harness.sandbox.outcomes import ExitInfo, exit_from_returncode
from harness.sandbox.protocol import CONTROL_ENV, OWN_PID_NAMESPACE_ENV, PARENT_TMP_ENV, RUN_UID_ENV, THREADS_ENV

SANDBOX_INBOX = "/sandbox/inbox"
SANDBOX_OUTBOX = "/sandbox/outbox"
SANDBOX_PARENT_TMP = "/sandbox/parent-tmp"  # the warm parent's temp folder (torch writes there at import)
SANDBOX_HARNESS = "/opt/harness"  # the harness package is bound read-only at /opt/harness/harness
SCRATCH_DIRS = ("/tmp", "/kaggle/tmp", "/kaggle/working", "/dev/shm")  # one host folder each, emptied between runs
ROOT_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL")  # the warm parent's, never a run's
NOBODY = 65534
GIB = 1024**3
# /etc entries the dynamic linker and Python want; nothing else of the host's /etc is visible.
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
ROOT_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


class Launched(Protocol):
    """A running worker, whichever backend started it."""

    def output(self) -> Iterator[bytes]: ...
    def poll(self) -> ExitInfo | None: ...
    def wait(self, timeout: float) -> ExitInfo | None: ...
    def kill(self) -> None: ...
    def memory_mb(self) -> float | None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Exchange:
    """What the host gives one sandbox: the folder a run writes its weights into, the scratch
    folders (sandbox path -> host folder), and a folder for the warm parent's FIFOs (Docker; the
    other backends pass pipe ends in)."""

    out: Path
    scratch: Mapping[str, Path]
    control_dir: Path
    parent_tmp: Path | None = None  # readable and writable by the warm parent only


class Channel:
    """Two pipes to the warm parent: the host keeps `events` (read) and `commands` (write); the
    other ends go into the sandbox and are closed here once it started."""

    def __init__(self) -> None:
        self.events, self._events_child = os.pipe()
        self._commands_child, self.commands = os.pipe()
        os.set_inheritable(self._events_child, True)
        os.set_inheritable(self._commands_child, True)

    @property
    def child_fds(self) -> tuple[int, int]:
        return self._events_child, self._commands_child

    @property
    def env(self) -> str:
        return f"fd:{self._events_child},{self._commands_child}"

    def started(self) -> None:
        for fd in self.child_fds:
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class Placement:
    """Where a sandbox runs: its slot (and so its cores) and the uid its runs drop to."""

    slot: UidSlot
    cpus: tuple[int, ...]
    run_as: tuple[int, int] | None  # None: runs keep the parent's uid (non-root hosts, none)
    group: SandboxGroup | None = None  # cgroups, where the host has them (bubblewrap, none)

    def release(self) -> None:
        try:
            if self.group is not None:
                self.group.remove()
        finally:
            self.slot.release()


class Backend(Protocol):
    """A sandbox backend: registered in BACKENDS under its name; `sandbox.backend` and the
    config's checks take their names from there."""

    name: str

    @staticmethod
    def available() -> tuple[bool, str]: ...  # (works here, why not)
    @staticmethod
    def unavailable(why: str) -> str: ...  # what to do when it does not

    def place(self, limits: SandboxConfig) -> Placement: ...
    def launch(self, *, inbox: Path, exchange: Exchange, limits: SandboxConfig, device: str, placement: Placement) -> Launched: ...


BACKENDS: Registry[type] = Registry("sandbox backend")


# -- environment inside ---------------------------------------------------------------------
def worker_threads(limits: SandboxConfig) -> int:
    """One thread unless sandbox.cpus says otherwise: the time cap's retrains are timed with the
    same count (harness.learn.training.timing_threads), so a run and its cap compare like with like."""
    if limits.cpus is not None:
        return max(1, int(limits.cpus))
    return 1


def sandbox_env(*, threads: int, pythonpath: Sequence[str], path: Sequence[str], home: str = "/tmp",
                own_pid_namespace: bool = True, control: str = "", run_as: tuple[int, int] | None = None,
                gpu: str | None = None, parent_tmp: str = SANDBOX_PARENT_TMP) -> dict[str, str]:
    """The whole environment the worker sees: nothing of the host's but CUDA_VISIBLE_DEVICES."""
    env = {
        "PATH": ":".join(path),
        "HOME": home,
        "TMPDIR": "/tmp" if home == "/tmp" else home,
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "LANG": "C.UTF-8",
        "PYTHONPATH": ":".join(pythonpath),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MPLCONFIGDIR": f"{home}/.matplotlib",
        "XDG_CACHE_HOME": f"{home}/.cache",
        "TORCH_HOME": f"{home}/.torch",
        THREADS_ENV: str(threads),
        PARENT_TMP_ENV: parent_tmp,
        CONTROL_ENV: control,
        RUN_UID_ENV: "" if run_as is None else f"{run_as[0]}:{run_as[1]}",
    }
    if own_pid_namespace:
        env[OWN_PID_NAMESPACE_ENV] = "1"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    elif "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


def unit_gpu() -> str | None:
    """The one GPU this sandbox may use: the first of the host's CUDA_VISIBLE_DEVICES (the local
    pool and Ray set it per unit), or GPU 0; None where there is no GPU."""
    if not gpu_devices():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


def gpu_device_files(gpu: str | None) -> list[str]:
    """The device files for one GPU: its /dev/nvidiaN and the shared control nodes, never another's."""
    found = gpu_devices()
    if gpu is None:
        return []
    shared = [d for d in found if not Path(d).name.removeprefix("nvidia").isdigit()]
    own = [d for d in found if Path(d).name == f"nvidia{gpu}"]
    return sorted(shared + own)


def harness_source_dir() -> Path:
    """The directory of the `harness` package (bound read-only; never the repository around it)."""
    return Path(harness.__file__).resolve().parent


def user_site_packages() -> str | None:
    """`pip install --user` packages, which the worker must see too (its HOME is elsewhere)."""
    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    return os.path.realpath(user_site) if user_site and os.path.isdir(user_site) else None


def python_paths() -> list[str]:
    """The Python installation and its site-packages: what the worker needs to import torch."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()]
    candidates.append(user_site_packages())
    kept: list[str] = []
    for path in sorted({os.path.realpath(p) for p in candidates if p and os.path.isdir(p)}, key=len):
        if path in ("/", "/usr") or path.startswith("/usr/") or any(path.startswith(k + "/") for k in kept):
            continue
        kept.append(path)
    return kept


def gpu_devices() -> list[str]:
    """Every /dev/nvidia* entry: with `--dev /dev` alone CUDA is silently unavailable inside."""
    return sorted(glob.glob("/dev/nvidia*"))


# -- bubblewrap -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BwrapPlan:
    """What the host offers the sandbox; `bwrap_command` renders it, `plan_bwrap` inspects the host."""

    inbox: str
    outbox: str
    python: str
    python_paths: tuple[str, ...]
    harness_dir: str
    root_links: Mapping[str, str]  # /bin -> usr/bin on merged-/usr systems
    root_dirs: tuple[str, ...]  # top-level system dirs to bind where they are real directories
    etc_files: tuple[str, ...]
    gpu_devices: tuple[str, ...] = ()
    drop_to: tuple[int, int] | None = None  # (uid, gid) each run drops to when the host is root
    threads: int = 1
    scratch: tuple[tuple[str, str], ...] = ()  # (host folder, sandbox path)
    parent_tmp: str | None = None  # host folder bound at SANDBOX_PARENT_TMP
    control: str = ""  # the parent's control channel, as CONTROL_ENV carries it
    seccomp_fd: int | None = None
    gpu: str | None = None
    cpu_sysfs: bool = True
    disable_userns: bool = True
    bwrap: str = "bwrap"
    extra_pythonpath: tuple[str, ...] = ()  # the caller's user site-packages (HOME differs inside)
    extra_env: Mapping[str, str] = field(default_factory=dict)


def bwrap_command(plan: BwrapPlan, limits: SandboxConfig) -> list[str]:
    """The full bwrap argv for one worker (pure: every host fact comes in through `plan`)."""
    args = [plan.bwrap, "--die-with-parent", "--new-session"]
    args += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if plan.drop_to is None:
        args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
        if plan.disable_userns:
            args += ["--disable-userns"]
    else:  # root: no user namespace (it would map nobody to uid 0); each run sheds these four
        for cap in ROOT_CAPS:
            args += ["--cap-add", cap]
    if plan.seccomp_fd is not None:
        args += ["--seccomp", str(plan.seccomp_fd)]
    args += ["--hostname", "sandbox"]
    args += ["--ro-bind", "/usr", "/usr"]
    for link, target in sorted(plan.root_links.items()):
        args += ["--symlink", target, link]
    for directory in plan.root_dirs:
        args += ["--ro-bind-try", directory, directory]
    for path in plan.etc_files:
        args += ["--ro-bind-try", path, path]
    made: set[str] = {"/", "/usr", "/dev", *plan.root_links, *plan.root_dirs}
    for path in plan.python_paths:
        args += _parents(path, made) + ["--ro-bind", path, path]
    args += _parents(f"{SANDBOX_HARNESS}/harness", made) + ["--ro-bind", plan.harness_dir, f"{SANDBOX_HARNESS}/harness"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    if plan.cpu_sysfs:
        args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    for device in plan.gpu_devices:
        args += ["--dev-bind", device, device]
    for host, inside in plan.scratch:
        args += _parents(inside, made) + ["--bind", host, inside]
    args += _parents(SANDBOX_INBOX, made) + ["--ro-bind", plan.inbox, SANDBOX_INBOX, "--bind", plan.outbox, SANDBOX_OUTBOX]
    if plan.parent_tmp is not None:
        args += ["--bind", plan.parent_tmp, SANDBOX_PARENT_TMP]
    args += ["--chdir", "/kaggle/working", "--clearenv"]
    env = sandbox_env(
        threads=plan.threads,
        pythonpath=[SANDBOX_HARNESS, *plan.extra_pythonpath],
        path=["/usr/local/bin", "/usr/bin", "/bin", os.path.dirname(plan.python)],
        control=plan.control,
        run_as=plan.drop_to,
        gpu=plan.gpu,
    )
    for key, value in sorted({**env, **plan.extra_env}.items()):
        args += ["--setenv", key, value]
    worker = [plan.python, "-m", "harness.sandbox.worker", SANDBOX_INBOX, SANDBOX_OUTBOX]
    return [*args, "--", *worker]


def _parents(dest: str, made: set[str]) -> list[str]:
    """Create `dest`'s missing parents world-readable (bwrap would make them 0700, hiding binds)."""
    args: list[str] = []
    parts = Path(dest).parts
    for depth in range(2, len(parts)):
        parent = str(Path(*parts[:depth]))
        if parent not in made:
            made.add(parent)
            args += ["--perms", "0755", "--dir", parent]
    return args


def plan_bwrap(*, inbox: Path, exchange: Exchange, limits: SandboxConfig, device: str, placement: Placement,
               seccomp_fd: int | None, control: str) -> BwrapPlan:
    """Inspect this host: its Python, its /bin-style links, its GPU, bwrap's features."""
    links = {d: os.readlink(d) for d in ROOT_DIRS if os.path.islink(d)}
    dirs = tuple(d for d in ROOT_DIRS if d not in links and os.path.isdir(d))
    gpu = unit_gpu()
    return BwrapPlan(
        inbox=str(inbox),
        outbox=str(exchange.out),
        python=sys.executable,
        python_paths=tuple(python_paths()),
        harness_dir=str(harness_source_dir()),
        root_links=links,
        root_dirs=dirs,
        etc_files=tuple(p for p in ETC_FILES if os.path.exists(p)),
        gpu_devices=tuple(gpu_device_files(gpu)),  # its own GPU only, so CUDA inside matches the unit's
        drop_to=placement.run_as,
        threads=len(placement.cpus),
        disable_userns="--disable-userns" in _bwrap_help(),
        bwrap=shutil.which("bwrap") or "bwrap",
        extra_pythonpath=tuple(p for p in [user_site_packages()] if p),
        scratch=tuple((str(host), inside) for inside, host in exchange.scratch.items()),
        parent_tmp=None if exchange.parent_tmp is None else str(exchange.parent_tmp),
        control=control,
        seccomp_fd=seccomp_fd,
        gpu=gpu,  # CUDA still enumerates every GPU the driver has; only this one's node is there
    )


@functools.lru_cache(maxsize=1)
def _bwrap_help() -> str:
    try:
        return subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def bwrap_status() -> tuple[bool, str]:
    """(works, why not): whether bubblewrap can make a sandbox here, as this user."""
    path = shutil.which("bwrap")
    if path is None:
        return False, "bwrap is not installed (apt-get install bubblewrap)"
    probe = [path, "--die-with-parent", "--unshare-net", "--unshare-pid", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    if os.geteuid() != 0:
        probe += ["--unshare-user"]
    try:
        result = subprocess.run([*probe, "--", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"bwrap failed to start ({exc})"
    if result.returncode != 0:
        return False, f"bwrap cannot create namespaces here: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}"
    return True, ""


class _Measured:
    """What the host reads from a sandbox's cgroups (None where it has none)."""

    group: SandboxGroup | None

    def peak_memory_mb(self) -> float | None:
        return None if self.group is None else round(self.group.peak_memory_bytes() / 2**20, 1)

    def reset_peak_memory(self) -> None:
        if self.group is not None:
            self.group.reset_peak_memory()

    def cpu_seconds(self) -> float | None:
        return None if self.group is None else self.group.cpu_seconds()


class ProcessLaunched(_Measured):
    """A worker started as a local process tree (bubblewrap or none), in its own session."""

    def __init__(self, popen: subprocess.Popen, *, placement: Placement, bwrap: bool, channel: Channel) -> None:
        self.popen, self.placement, self.bwrap = popen, placement, bwrap
        self.events_fd, self.commands_fd = channel.events, channel.commands
        self.group = placement.group
        self._oom_before = kernel_oom_kills()

    def output(self) -> Iterator[bytes]:
        """The merged stdout/stderr until every writer is gone; the pipe closes here, at its end
        (never from another thread, whose read could then hit a reused descriptor)."""
        stream = self.popen.stdout
        try:
            while True:
                try:
                    chunk = os.read(stream.fileno(), 65536)
                except OSError:
                    return
                if not chunk:
                    return
                yield chunk
        finally:
            stream.close()

    def _exit(self, returncode: int) -> ExitInfo:
        info = exit_from_returncode(returncode, bwrap=self.bwrap)
        delta = max(0, kernel_oom_kills() - self._oom_before)
        return ExitInfo(code=info.code, signal=info.signal, kernel_oom_kills=delta)

    def poll(self) -> ExitInfo | None:
        code = self.popen.poll()
        return None if code is None else self._exit(code)

    def wait(self, timeout: float) -> ExitInfo | None:
        try:
            return self._exit(self.popen.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL to the whole process group and cgroup; bwrap's pid namespace takes the rest."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.group is not None:
            self.group.kill()

    def memory_mb(self) -> float | None:
        if self.group is not None:
            return round(self.group.memory_bytes() / 2**20, 1)
        return tree_rss_mb(self.popen.pid)

    def oom_kills(self) -> int:
        return (self.group.oom_kills() if self.group is not None else 0) + max(0, kernel_oom_kills() - self._oom_before)

    def tree(self) -> list[int]:
        """Every process of the sandbox, as the host sees them."""
        return _descendants(self.popen.pid)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.kill()
            self.popen.wait()
        elif self.group is not None:
            self.group.kill()


def _place(limits: SandboxConfig, *, root_uid: bool, cgroups: bool) -> Placement:
    """A slot (its cores; on a root host its uid) and, where the host has them, cgroups."""
    from harness.sandbox import cgroups as cg

    slot = acquire_uid(limits.first_uid) if root_uid else current_slot(limits.first_uid)
    try:
        cpus = cores_for(slot.index, worker_threads(limits))
        placement = Placement(slot=slot, cpus=cpus, run_as=(slot.uid, slot.gid) if root_uid else None)
        if cgroups and limits.cgroups and cg.available()[0]:
            pids = None if limits.max_processes is None else int(limits.max_processes) + 64  # the parent's own threads
            memory = None if limits.memory_gb is None else int(limits.memory_gb * GIB)
            placement.group = SandboxGroup.create(cpus=cpus, memory_bytes=memory, pids_max=pids)
        return placement
    except BaseException:
        slot.release()
        raise


@BACKENDS.register("bubblewrap")
class BubblewrapBackend:
    name = "bubblewrap"

    @staticmethod
    def available() -> tuple[bool, str]:
        return bwrap_status()

    @staticmethod
    def unavailable(why: str) -> str:
        return (f"bubblewrap is unavailable ({why}); install bubblewrap, set sandbox.backend: docker, or pass "
                "--unsafe-no-sandbox for trusted code")

    def place(self, limits: SandboxConfig) -> Placement:
        ok, why = bwrap_status()
        if not ok:
            raise SandboxUnavailable(f"sandbox backend 'bubblewrap' is unavailable: {why}")
        return _place(limits, root_uid=os.geteuid() == 0, cgroups=True)

    def launch(self, *, inbox: Path, exchange: Exchange, limits: SandboxConfig, device: str, placement: Placement) -> Launched:
        from harness.sandbox import seccomp

        make_readable(inbox)
        seccomp_fd = seccomp.filter_fd() if limits.seccomp else None
        channel = Channel()
        try:
            plan = plan_bwrap(inbox=inbox, exchange=exchange, limits=limits, device=device, placement=placement,
                              seccomp_fd=seccomp_fd, control=channel.env)
            uid = placement.run_as[0] if placement.run_as else os.getuid()
            rlimits = rlimits_for(memory_gb=limits.memory_gb, max_processes=limits.max_processes,
                                  max_file_size_mb=limits.max_file_size_mb, uid=uid)
            group = placement.group.procs_files if placement.group is not None else ()
            command = exec_command(rlimits, bwrap_command(plan, limits), cpus=placement.cpus, cgroups=tuple(group))
            fds = channel.child_fds + ((seccomp_fd,) if seccomp_fd is not None else ())
            popen = _spawn(command, pass_fds=fds)
        finally:
            channel.started()
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        return ProcessLaunched(popen, placement=placement, bwrap=True, channel=channel)


@BACKENDS.register("none")
class NoSandboxBackend:
    """A plain subprocess with the same limits but no isolation: trusted code only."""

    name = "none"

    @staticmethod
    def available() -> tuple[bool, str]:
        return True, ""

    @staticmethod
    def unavailable(why: str) -> str:
        return why

    def place(self, limits: SandboxConfig) -> Placement:
        return _place(limits, root_uid=False, cgroups=False)  # no containment at all: trusted code only

    def launch(self, *, inbox: Path, exchange: Exchange, limits: SandboxConfig, device: str, placement: Placement) -> Launched:
        home = exchange.scratch["/tmp"]
        rlimits = rlimits_for(memory_gb=limits.memory_gb, max_processes=limits.max_processes,
                              max_file_size_mb=limits.max_file_size_mb, uid=os.getuid())
        worker = [sys.executable, "-m", "harness.sandbox.worker", str(inbox), str(exchange.out)]
        channel = Channel()
        env = sandbox_env(
            threads=len(placement.cpus),
            pythonpath=[str(harness_source_dir().parent)],
            path=[os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"],
            home=str(home),
            own_pid_namespace=False,
            control=channel.env,
            parent_tmp=str(exchange.parent_tmp or home),
        )
        group = placement.group.procs_files if placement.group is not None else ()
        try:
            popen = _spawn(exec_command(rlimits, worker, cpus=placement.cpus, cgroups=tuple(group)), env=env,
                           cwd=str(exchange.scratch["/kaggle/working"]), pass_fds=channel.child_fds)
        finally:
            channel.started()
        return ProcessLaunched(popen, placement=placement, bwrap=False, channel=channel)


def _spawn(command: list[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
           pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """Start in a new session (so the host can kill the group), limits set by the exec wrapper."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(harness_source_dir().parent)}
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
        pass_fds=pass_fds,
        env={**base, **(env or {})},
        cwd=cwd,
    )


# -- docker ---------------------------------------------------------------------------------
SANDBOX_CONTROL = "/sandbox/control"


def docker_run_kwargs(
    *,
    image: str,
    inbox: str | Path,
    exchange: Exchange,
    limits: SandboxConfig,
    device: str,
    cpus: tuple[int, ...],
    gpu: str | None = None,
    name: str | None = None,
    host_python: Sequence[str] = (),
    harness_dir: str | None = None,
    python: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for docker's `containers.run` (pure; the daemon is not needed to test it).

    The warm parent runs as root inside with only the four capabilities it needs; each run drops
    to nobody. `host_python` (with `harness_dir` and `python`) binds the host's Python and the
    harness read-only into a minimal image instead of using what the image installed.
    """
    from docker.types import DeviceRequest, Ulimit

    volumes = {
        str(inbox): {"bind": SANDBOX_INBOX, "mode": "ro"},
        str(exchange.out): {"bind": SANDBOX_OUTBOX, "mode": "rw"},
        str(exchange.control_dir): {"bind": SANDBOX_CONTROL, "mode": "rw"},
    }
    if exchange.parent_tmp is not None:
        volumes[str(exchange.parent_tmp)] = {"bind": SANDBOX_PARENT_TMP, "mode": "rw"}
    for inside, host in exchange.scratch.items():
        volumes[str(host)] = {"bind": inside, "mode": "rw"}
    pythonpath: list[str] = []
    for path in host_python:
        volumes[path] = {"bind": path, "mode": "ro"}
    if harness_dir is not None:
        volumes[harness_dir] = {"bind": f"{SANDBOX_HARNESS}/harness", "mode": "ro"}
        pythonpath = [SANDBOX_HARNESS]
    kwargs: dict[str, Any] = {
        "image": image,
        "command": [SANDBOX_INBOX, SANDBOX_OUTBOX],  # the image's entrypoint is the worker
        "detach": True,
        "auto_remove": False,  # the host reads the logs and the exit state, then removes it
        "network_mode": "none",
        "read_only": True,
        "user": "0:0",
        "cap_drop": ["ALL"],
        "cap_add": [cap.removeprefix("CAP_") for cap in ROOT_CAPS],
        "security_opt": ["no-new-privileges"],
        "mem_limit": f"{int(limits.memory_gb * 1024)}m",
        "memswap_limit": f"{int(limits.memory_gb * 1024)}m",  # no swap on top
        "pids_limit": int(limits.max_processes) + 64,
        "shm_size": f"{int(limits.shm_size_gb * 1024)}m",  # /dev/shm itself is the host folder bound over it
        "cpuset_cpus": ",".join(str(c) for c in cpus),
        "volumes": volumes,
        "working_dir": "/kaggle/working",
        "environment": sandbox_env(threads=len(cpus), pythonpath=pythonpath, path=["/usr/local/bin", "/usr/bin", "/bin"],
                                   control=f"fifo:{SANDBOX_CONTROL}", run_as=(NOBODY, NOBODY), gpu=gpu),
        "ulimits": [
            Ulimit(name="fsize", soft=limits.max_file_size_mb * 1024 * 1024, hard=limits.max_file_size_mb * 1024 * 1024),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "labels": {"unlearning-harness": "worker", "unlearning-harness.runner": str(os.getpid())},
    }
    if not pythonpath:
        kwargs["environment"].pop("PYTHONPATH")  # the image installs the harness
    if python is not None:
        kwargs["entrypoint"] = [python, "-m", "harness.sandbox.worker"]
    if limits.cpus is not None:
        kwargs["nano_cpus"] = int(limits.cpus * 1e9)
    if gpu is not None and (limits.gpus or device.startswith("cuda")):
        kwargs["device_requests"] = [DeviceRequest(device_ids=[gpu], capabilities=[["gpu"]])]
    if name is not None:
        kwargs["name"] = name
    return kwargs


class DockerLaunched(_Measured):
    def __init__(self, container, *, placement: Placement, events_fd: int, commands_fd: int) -> None:
        self.container, self.placement = container, placement
        self.events_fd, self.commands_fd = events_fd, commands_fd
        self.group = _container_group(container)

    def output(self) -> Iterator[bytes]:
        try:
            yield from self.container.logs(stream=True, follow=True, stdout=True, stderr=True)
        except Exception:  # noqa: BLE001 - the daemon dropped the stream; the exit state still tells
            return

    def _state(self) -> dict:
        self.container.reload()
        return self.container.attrs.get("State", {})

    def poll(self) -> ExitInfo | None:
        try:
            state = self._state()
        except Exception:  # noqa: BLE001 - removed meanwhile
            return ExitInfo(signal=9)
        if state.get("Status") not in ("exited", "dead"):
            return None
        info = exit_from_returncode(int(state.get("ExitCode", -1)), bwrap=True)
        return ExitInfo(code=info.code, signal=info.signal, oom_killed=bool(state.get("OOMKilled")))

    def wait(self, timeout: float) -> ExitInfo | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.poll()
            if info is not None:
                return info
            time.sleep(0.05)
        return self.poll()

    def kill(self) -> None:
        try:
            self.container.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass

    def memory_mb(self) -> float | None:
        return None if self.group is None else round(self.group.memory_bytes() / 2**20, 1)

    def oom_kills(self) -> int:
        return 0 if self.group is None else self.group.oom_kills()

    def tree(self) -> list[int]:
        return [] if self.group is None else self.group.pids()

    def close(self) -> None:
        try:
            self.container.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


class _DockerGroup(SandboxGroup):
    """A container's own cgroups (cgroupfs driver: <controller>/docker/<id>), read-only use."""

    def path(self, controller: str) -> Path:
        return self.root / controller / "docker" / self.name


def _container_group(container) -> SandboxGroup | None:
    group = _DockerGroup(name=container.id, cpus=())
    return group if group.path("cpuacct").exists() else None


@BACKENDS.register("docker")
class DockerBackend:
    name = "docker"

    @staticmethod
    def available() -> tuple[bool, str]:
        return docker_status()

    @staticmethod
    def unavailable(why: str) -> str:
        return f"no Docker daemon reachable ({why}); start Docker or use bubblewrap"

    def place(self, limits: SandboxConfig) -> Placement:
        slot = current_slot(limits.first_uid)
        return Placement(slot=slot, cpus=cores_for(slot.index, worker_threads(limits)), run_as=(NOBODY, NOBODY))

    def launch(self, *, inbox: Path, exchange: Exchange, limits: SandboxConfig, device: str, placement: Placement) -> Launched:
        try:
            import docker

            client = docker.from_env()
            client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means no daemon to talk to
            raise SandboxUnavailable(f"sandbox backend 'docker' is unavailable: {exc}") from None
        make_readable(inbox)
        for folder in (exchange.out, *exchange.scratch.values()):
            if os.geteuid() == 0:
                os.chown(folder, NOBODY, NOBODY)
        os.chmod(exchange.control_dir, 0o700)  # root's only: the runs (nobody) cannot open the FIFOs
        for name in ("events", "commands"):
            os.mkfifo(exchange.control_dir / name, 0o600)
        # both ends held here read-write, so neither open blocks before the container opens its own;
        # the parent's end is then seen by the container's exit, not by an end of file
        events = os.open(exchange.control_dir / "events", os.O_RDWR | os.O_CLOEXEC)
        commands = os.open(exchange.control_dir / "commands", os.O_RDWR | os.O_CLOEXEC)
        host = limits.docker_host_python
        kwargs = docker_run_kwargs(
            image=limits.docker_image, inbox=inbox, exchange=exchange, limits=limits, device=device, cpus=placement.cpus,
            gpu=unit_gpu(), host_python=tuple(python_paths()) if host else (),
            harness_dir=str(harness_source_dir()) if host else None, python=sys.executable if host else None,
        )
        try:
            container = client.containers.run(**kwargs)
        except Exception as exc:  # noqa: BLE001 - image missing, bad spec: the sandbox's fault
            os.close(events)
            os.close(commands)
            raise SandboxUnavailable(f"docker could not start the worker from image {limits.docker_image!r}: {exc}") from None
        return DockerLaunched(container, placement=placement, events_fd=events, commands_fd=commands)


# -- choosing one ---------------------------------------------------------------------------
class SandboxUnavailable(HarnessError):
    """The chosen backend cannot start a sandbox on this machine."""


def docker_status() -> tuple[bool, str]:
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # noqa: BLE001 - no SDK, no daemon, no permission: all mean no
        return False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return True, ""


AUTO_BACKEND = "bubblewrap"  # what sandbox.backend: auto means where it works


def resolve_backend(name: str, *, allow_unsafe_fallback: bool) -> str:
    """The backend to use: 'auto' is bubblewrap where it works, else (dry runs only) none, loudly."""
    if name != "auto" and name not in BACKENDS:
        raise HarnessError(BACKENDS.unknown_message(name) + ", auto")
    chosen = AUTO_BACKEND if name == "auto" else name
    ok, why = BACKENDS.get(chosen).available()
    if ok:
        return chosen
    if name == "auto" and allow_unsafe_fallback:
        message = (
            f"NO SANDBOX: bubblewrap is unavailable ({why}); the submission runs as a plain process "
            "with your permissions. Only run code you trust; install bubblewrap to sandbox it. Not held here: "
            "no network, a read-only system, hidden host files, cores/memory/processes per sandbox (cgroups), "
            "the system-call filter, and runs that cannot signal the timing parent. Still held: one process per "
            "run, import inside the timed window, host-side timing, scratch emptied between runs, weights validated."
        )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        print(f"WARNING: {message}", file=sys.stderr, flush=True)
        return "none"
    raise SandboxUnavailable(f"sandbox backend {name!r}: {BACKENDS.get(chosen).unavailable(why)}")


def remove_stale(backend: str) -> list[str]:
    """What killed runners left: their cgroups and, on Docker, their labelled containers. Called
    by the runner at start; a live runner's sandboxes are never touched (their pid is alive)."""
    from harness.sandbox import cgroups

    removed = [f"cgroup {name}" for name in cgroups.remove_stale()] if cgroups.available()[0] else []
    if backend == "docker" and docker_status()[0]:
        import docker

        for container in docker.from_env().containers.list(all=True, filters={"label": "unlearning-harness=worker"}):
            owner = container.labels.get("unlearning-harness.runner", "")
            if owner.isdigit() and not cgroups._alive(int(owner)):
                container.remove(force=True)
                removed.append(f"container {container.short_id}")
    return removed


def get_backend(name: str) -> Backend:
    return BACKENDS.get(name)()


# -- host-side helpers ----------------------------------------------------------------------
def check_readable(inbox: Path) -> None:
    """The sandbox's unrelated uid reads the inbox through 'others' permissions."""
    for path in [inbox, *sorted(inbox.iterdir())]:
        mode = path.stat().st_mode
        need = 0o005 if path.is_dir() else 0o004
        if mode & need != need:
            raise SandboxUnavailable(
                f"inbox entry {path} has mode {oct(mode & 0o777)}, which the sandbox's user cannot read; "
                "create the inbox with umask 022 (or chmod o+r)"
            )


def make_readable(inbox: Path) -> None:
    """Let the sandbox's unrelated uid read the inbox (safetensors writes 0600 files).

    Only the inbox and its files change; a hard-linked file is first replaced by a copy, so a
    cache file it shares an inode with keeps its mode. Inside the sandbox only these modes
    matter; on the host the inbox's parent folders still decide who can reach it.
    """
    for path in sorted(inbox.iterdir()):
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o004:
            continue
        if info.st_nlink > 1:
            tmp = path.with_name(f".{path.name}.readable")
            shutil.copyfile(path, tmp)
            os.replace(tmp, path)
        path.chmod((path.stat().st_mode & 0o777) | 0o444)
    inbox.chmod((inbox.stat().st_mode & 0o777) | 0o555)
    check_readable(inbox)


def kernel_oom_kills() -> int:
    """The kernel's count of out-of-memory kills since boot (0 where it is not exposed)."""
    try:
        with open("/proc/vmstat") as handle:
            for line in handle:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            threads = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as handle:
                    children = [int(c) for c in handle.read().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def _process_mb(pid: int) -> float:
    """Proportional set size (shared pages split between sharers, so forks are not counted twice);
    resident size where smaps_rollup is not readable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE_MB
    except (OSError, ValueError, IndexError):
        return 0.0


def tree_rss_mb(pid: int) -> float | None:
    """Memory of every process under `pid` (not `pid` itself), in MiB."""
    return round(sum(_process_mb(child) for child in _descendants(pid)), 1)
