"""Per-sandbox control groups (cgroup v1): cores, memory (shared memory and tmpfs included),
processes, and the CPU time the host charges to each run.

A sandbox's whole process tree lives in one group per controller, under
`<controller>/unlearning-harness/<runner pid>-<n>`; the exec wrapper moves itself in before it
starts the sandbox, so nothing the submission runs is ever outside. The sandbox cannot leave: it
sees no cgroup file system, and moving a task needs write access to another group's files.
Groups whose runner died are removed by `remove_stale` (the runner calls it at start).

Where the host has no writable cgroup v1 hierarchy (not root, cgroup v2 only), `SandboxGroup`
is not available and the host falls back to a watchdog over the tree's memory and affinity.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PARENT = "unlearning-harness"
CONTROLLERS = ("cpuset", "memory", "pids", "cpuacct", "freezer")
_counter = itertools.count()


def available(root: Path = ROOT) -> tuple[bool, str]:
    """(usable, why not): whether every controller is a writable v1 hierarchy here."""
    if os.geteuid() != 0:
        return False, "cgroups need root (the sandbox falls back to a watchdog)"
    for controller in CONTROLLERS:
        folder = root / controller
        if not (folder / "cgroup.procs").exists():
            return False, f"no cgroup v1 '{controller}' hierarchy at {folder}"
        if not os.access(folder, os.W_OK):
            return False, f"{folder} is not writable"
    return True, ""


@dataclass
class SandboxGroup:
    """One sandbox's groups; create with `SandboxGroup.create`, always `remove` afterwards."""

    name: str
    cpus: tuple[int, ...]
    root: Path = ROOT

    def path(self, controller: str) -> Path:
        return self.root / controller / PARENT / self.name

    @property
    def procs_files(self) -> list[str]:
        """What the exec wrapper writes its own pid into before it starts the sandbox."""
        return [str(self.path(c) / "cgroup.procs") for c in CONTROLLERS]

    @classmethod
    def create(cls, *, cpus: tuple[int, ...], memory_bytes: int | None, pids_max: int | None, root: Path = ROOT) -> SandboxGroup:
        group = cls(name=f"{os.getpid()}-{next(_counter)}-{time.monotonic_ns() % 10**9}", cpus=tuple(cpus), root=root)
        try:
            for controller in CONTROLLERS:
                parent = root / controller / PARENT
                if not parent.exists():
                    parent.mkdir(exist_ok=True)
                    if controller == "cpuset":  # a new cpuset starts empty: inherit the machine's
                        _copy(root / controller, parent, "cpuset.cpus", "cpuset.mems")
                    if controller == "memory":
                        _write(parent / "memory.use_hierarchy", "1", missing_ok=True)
                group.path(controller).mkdir()
            cpuset = group.path("cpuset")
            _write(cpuset / "cpuset.cpus", ",".join(str(c) for c in cpus))
            _write(cpuset / "cpuset.mems", (root / "cpuset" / PARENT / "cpuset.mems").read_text().strip())
            memory = group.path("memory")
            if memory_bytes is not None:
                _write(memory / "memory.limit_in_bytes", str(memory_bytes))
                _write(memory / "memory.memsw.limit_in_bytes", str(memory_bytes), missing_ok=True)  # no swap on top
                _write(memory / "memory.swappiness", "0", missing_ok=True)
            if pids_max is not None:
                _write(group.path("pids") / "pids.max", str(pids_max))
        except BaseException:
            group.remove()
            raise
        return group

    # -- what the host reads --------------------------------------------------------------------
    def cpu_seconds(self) -> float:
        """CPU time used by every task the group ever held (user + system)."""
        return int(_read(self.path("cpuacct") / "cpuacct.usage") or 0) / 1e9

    def memory_bytes(self) -> int:
        return int(_read(self.path("memory") / "memory.usage_in_bytes") or 0)

    def peak_memory_bytes(self) -> int:
        return int(_read(self.path("memory") / "memory.max_usage_in_bytes") or 0)

    def reset_peak_memory(self) -> None:
        _write(self.path("memory") / "memory.max_usage_in_bytes", "0", missing_ok=True)

    def oom_kills(self) -> int:
        """The memory controller's count of OOM kills in this group (0 where the kernel has none)."""
        for line in (_read(self.path("memory") / "memory.oom_control") or "").splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def memory_failures(self) -> int:
        return int(_read(self.path("memory") / "memory.failcnt") or 0)

    def pids(self) -> list[int]:
        text = _read(self.path("pids") / "cgroup.procs") or ""
        return [int(p) for p in text.split()]

    def allowed_cpus(self) -> str:
        return (_read(self.path("cpuset") / "cpuset.cpus") or "").strip()

    # -- ending it ------------------------------------------------------------------------------
    def kill(self, *, timeout: float = 10.0) -> bool:
        """SIGKILL every task, frozen first so a fork bomb cannot outrun the kill; True when empty."""
        freezer = self.path("freezer") / "freezer.state"
        _write(freezer, "FROZEN", missing_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _write(freezer, "THAWED", missing_ok=True)  # frozen tasks die only once thawed
            if not pids:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
            _write(freezer, "FROZEN", missing_ok=True)

    def remove(self) -> None:
        """Kill what is left and remove every group (best effort; a busy group is retried)."""
        if any(self.path(c).exists() for c in CONTROLLERS):
            self.kill()
        for controller in CONTROLLERS:
            folder = self.path(controller)
            for _ in range(100):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def remove_stale(root: Path = ROOT) -> list[str]:
    """Remove the groups of runners that died (the name starts with their pid); their names."""
    removed: set[str] = set()
    for controller in CONTROLLERS:
        parent = root / controller / PARENT
        if not parent.is_dir():
            continue
        for folder in parent.iterdir():
            owner = folder.name.split("-", 1)[0]
            if not folder.is_dir() or not owner.isdigit() or _alive(int(owner)):
                continue
            SandboxGroup(name=folder.name, cpus=(), root=root).remove()
            removed.add(folder.name)
    return sorted(removed)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _copy(source: Path, target: Path, *names: str) -> None:
    for name in names:
        _write(target / name, (source / name).read_text().strip())


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write(path: Path, value: str, *, missing_ok: bool = False) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(value)
    except FileNotFoundError:
        if not missing_ok:
            raise
    except OSError:
        if not missing_ok:
            raise
