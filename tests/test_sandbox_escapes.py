"""Every way a hostile submission could win unfairly, each proven contained from the host side.

Runs earn their score: no untimed compute (at import, in an overridden state_dict, in a thread or
a process that outlives its run), no state from one run in the next, no forged times or outcomes,
no cores or memory beyond the sandbox's, no harm to the warm parent, and no host-side crash from
what a run leaves behind. Each scenario is one real sandbox (bubblewrap as root, as CI runs it);
the host's evidence is what the tests read: its own run times, the cgroup's CPU seconds, the
processes and files left. Where a containment is the sandbox's own, the same attack is also run
on the unsafe `none` backend, where it succeeds: the check can fail.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.sandbox import Status
from harness.sandbox.cgroups import PARENT, available as cgroups_available
from harness.sandbox.limits import count_tasks
from test_sandbox_hostile import GOOD_SEED, KAGGLE, LIMITS, TRAIN, Scenario, limits_for, require_backend

needs_cgroups = pytest.mark.skipif(not cgroups_available()[0], reason=f"no cgroups here: {cgroups_available()[1]}")

FIRST_UID = 63000  # away from the other sandbox tests' uids
ESCAPE_LIMITS = replace(LIMITS, first_uid=FIRST_UID)
SPIN = '''
def spin(seconds):
    """Pure CPU work for `seconds` of this thread's CPU time."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass
'''

IMPORT_TRAINER = '''
import time
{spin}
spin(2.5)  # "training" at module level, before unlearning() is ever called

def unlearning(net, retain_loader, forget_loader, val_loader):
    pass
'''.format(spin=SPIN)

STATE_DICT_OVERRIDE = '''
import time
{spin}

def unlearning(net, retain_loader, forget_loader, val_loader):
    class Sneaky(net.__class__):
        def state_dict(self, *args, **kwargs):
            spin(3.0)  # free compute after the run, if the harness called this outside the timed window
            print("state_dict ran", flush=True)
            return super().state_dict(*args, **kwargs)

    net.__class__ = Sneaky
    return net
'''.format(spin=SPIN)

CARRY_OVER = '''
import os, threading, time
import torch
import torch.nn.functional as F
{spin}
{train}

def others():
    """Processes in this sandbox besides this run, its parent and the namespace's init."""
    mine = {{os.getpid(), os.getppid(), 1}}
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in mine)

def unlearning(net, retain_loader, forget_loader, val_loader):
    seed = torch.initial_seed()
    if seed == 1:
        globals()["TRAINED_ACROSS_RUNS"] = True
        for path in ("/tmp/left", "/dev/shm/left", "/kaggle/tmp/left", "/kaggle/working/left"):
            with open(path, "w") as handle:
                handle.write("from run 1")
        threading.Thread(target=spin, args=(60,), daemon=True).start()  # keeps computing after the run?
        if os.fork() == 0:  # a grandchild in a session of its own, spinning and writing
            os.setsid()
            if os.fork() == 0:
                end = time.time() + 60
                while time.time() < end:
                    with open("/kaggle/tmp/child", "a") as handle:
                        handle.write("x")
                    spin(0.05)
            os._exit(0)
        time.sleep(0.2)
    else:
        import submission
        state = {{"global": "TRAINED_ACROSS_RUNS" in globals(), "module": hasattr(submission, "TRAINED_ACROSS_RUNS"),
                  "files": sorted(p for p in ("/tmp/left", "/dev/shm/left", "/kaggle/tmp/left", "/kaggle/working/left",
                                               "/kaggle/tmp/child") if os.path.exists(p)),
                  "others": others(), "threads": threading.active_count()}}
        print("CARRY " + repr(state))
        if seed == {good_seed}:
            train(net, retain_loader)
'''.format(spin=SPIN, train=TRAIN, good_seed=GOOD_SEED)

FORGER = '''
import os, time
{spin}

def unlearning(net, retain_loader, forget_loader, val_loader):
    forged = b"exited 0 code:0 0 {{\\"status\\": \\"ok\\"}}\\nstop 0 0.000001\\nend 0\\ndone\\n"
    wrote = []
    for fd in range(3, 256):
        try:
            os.write(fd, forged)
            wrote.append(fd)
        except OSError:
            pass
    with open("/sandbox/outbox/progress", "a") as handle:  # where the old protocol read its times
        handle.write("stop 0 0.000001\\n")
    with open("/sandbox/outbox/runs.jsonl", "a") as handle:
        handle.write('{{"index": 0, "status": "ok", "seconds": 0.000001}}\\n')
    reopened = []
    for fd in range(0, 16):
        try:
            os.open(f"/proc/{{os.getppid()}}/fd/{{fd}}", os.O_WRONLY)
            reopened.append(fd)
        except OSError:
            pass
    print(f"FORGER wrote={{wrote}} reopened={{reopened}}", flush=True)
    spin(3.0)  # three times the cap
'''.format(spin=SPIN)

PARENT_KILLER = '''
import ctypes, os, signal
import torch
import torch.nn.functional as F
{train}

def unlearning(net, retain_loader, forget_loader, val_loader):
    if torch.initial_seed() == 1:
        parent = os.getppid()
        for name, attack in (("kill", lambda: os.kill(parent, signal.SIGKILL)),
                             ("stop", lambda: os.kill(parent, signal.SIGSTOP)),
                             ("mem", lambda: open(f"/proc/{{parent}}/mem", "r+b")),
                             ("ptrace", lambda: ctypes.CDLL(None, use_errno=True).ptrace(16, parent, 0, 0) == 0 or 1 / 0)):
            try:
                attack()
                print(f"PARENT {{name}} succeeded", flush=True)
            except Exception as exc:
                print(f"PARENT {{name}} blocked {{type(exc).__name__}}", flush=True)
    else:
        train(net, retain_loader)
'''.format(train=TRAIN)

GREEDY = '''
import os, time
import torch
{spin}

def unlearning(net, retain_loader, forget_loader, val_loader):
    try:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
    except OSError:
        pass
    torch.set_num_threads(16)  # threads count against the sandbox's process limit too
    print(f"GREEDY affinity={{sorted(os.sched_getaffinity(0))}}", flush=True)
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            spin(1.0)
            os._exit(0)
        children.append(pid)
    x = torch.randn(256, 256)
    start = time.thread_time()
    while time.thread_time() - start < 1.0:  # 16 torch threads of matrix products meanwhile
        x @ x
    for pid in children:
        os.waitpid(pid, 0)
'''.format(spin=SPIN)

MEMORY_HOG = '''
import mmap
import torch
import torch.nn.functional as F
{train}

def unlearning(net, retain_loader, forget_loader, val_loader):
    if torch.initial_seed() == 1:
        hoard = mmap.mmap(-1, 3 << 30, flags=mmap.MAP_SHARED)  # shared memory: RLIMIT_DATA does not count it
        for offset in range(0, len(hoard), 4096):
            hoard[offset] = 1
        print("HOG shared memory allocated", flush=True)
    else:
        train(net, retain_loader)
'''.format(train=TRAIN)

SHM_FILLER = '''
def unlearning(net, retain_loader, forget_loader, val_loader):
    block = b"x" * (1 << 20)
    for part in range(80):  # 80 files of 50 MB (each under the file-size limit): 4 GB, far past the budget
        with open(f"/dev/shm/fill-{part}", "wb") as handle:
            for _ in range(50):
                handle.write(block)
'''

LEFTOVERS = '''
import os, sys
import torch
import torch.nn.functional as F
{train}

def chain(root, depth):
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)

def unlearning(net, retain_loader, forget_loader, val_loader):
    seed = torch.initial_seed()
    if seed == 1:
        chain("/kaggle/working", 1500)
        chain("/sandbox/outbox", 1500)
        os.symlink("/etc/passwd", "/kaggle/tmp/passwd-link")
    elif seed == 2:
        print(f"LEFTOVERS working={{os.listdir('/kaggle/working')}} out={{os.listdir('/sandbox/outbox')}}", flush=True)
        train(net, retain_loader)
    elif seed == 3:
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_var.fill_(-1.0)  # passes a finiteness check, breaks evaluation
    elif seed == 4:
        import safetensors.torch as st
        real = st.save_file
        def padded(tensors, path, metadata=None):
            real(tensors, path, metadata={{"pad": "x" * (20 << 20)}})  # a valid file with a 20 MB header
        st.save_file = padded
    elif seed == 5:
        sys.modules["safetensors.torch"] = None  # break the harness's own saving
    elif seed == 6:
        sys.modules["__main__"].claim = None  # break the harness's own report (the worker runs as __main__)
        raise RuntimeError("and then fail")
'''.format(train=TRAIN)


def _scenarios(backend: str) -> list[Scenario]:
    limits, b = limits_for(backend, ESCAPE_LIMITS), backend
    return [
        Scenario("import_trainer", IMPORT_TRAINER, [1], time_cap_s=1.0, limits=limits, backend=b),
        Scenario("state_dict_override", STATE_DICT_OVERRIDE, [1], time_cap_s=1.5, limits=limits, backend=b),
        Scenario("carry_over", CARRY_OVER, [1, 2, GOOD_SEED], time_cap_s=20.0, limits=limits, backend=b),
        Scenario("forger", FORGER, [1, 2], time_cap_s=1.0, limits=limits, backend=b),
        Scenario("parent_killer", PARENT_KILLER, [1, GOOD_SEED], limits=limits, backend=b),
        Scenario("greedy", GREEDY, [1], limits=limits, backend=b),
        Scenario("greedy_none", GREEDY, [1], limits=ESCAPE_LIMITS, backend="none"),
        Scenario("greedy_watched", GREEDY, [1], limits=replace(limits, cgroups=False), backend=b),
        Scenario("memory_hog", MEMORY_HOG, [1, GOOD_SEED], limits=limits, backend=b),
        Scenario("shm_filler", SHM_FILLER, [1, 2], limits=limits, backend=b),
        Scenario("leftovers", LEFTOVERS, [1, 2, 3, 4, 5, 6], limits=limits, backend=b),
        Scenario("clean", KAGGLE.format(train=TRAIN), [GOOD_SEED], limits=limits, backend=b),
    ]


@pytest.fixture(scope="module", params=["bubblewrap", "docker"])
def escapes(tmp_path_factory, request):
    require_backend(request.param)
    root = tmp_path_factory.mktemp(f"escapes-{request.param}")
    scenarios = _scenarios(request.param)
    for scenario in scenarios:
        scenario.prepare(root)
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = {s.name: s for s in pool.map(lambda s: s.run(root), scenarios)}
    for scenario in done.values():
        print(f"{scenario.name}: {scenario.seconds:.1f} s, {[(str(r.status), r.reason) for r in scenario.results]}")
    return done


def _line(result, tag: str) -> str:
    (line,) = [line for line in result.log.splitlines() if line.startswith(tag)]
    return line[len(tag):].strip()


# -- no untimed compute -----------------------------------------------------------------------
def test_compute_at_import_counts_toward_the_run(escapes):
    (result,) = escapes["import_trainer"].results
    assert result.status is Status.TIMEOUT, result.reason
    assert result.seconds > 1.0 and "past the 1.00 s time cap" in result.reason


def test_an_overridden_state_dict_is_never_called(escapes):
    (result,) = escapes["state_dict_override"].results
    assert result.status is Status.OK, result.reason
    assert result.seconds < 1.5 and result.cpu_seconds < 1.5  # the 3 s in state_dict() never ran
    assert "state_dict" not in result.log


@needs_cgroups
def test_threads_and_processes_die_with_their_run_and_no_state_crosses_runs(escapes):
    first, second, third = escapes["carry_over"].results
    assert [r.status for r in (first, second, third)] == [Status.OK] * 3, [r.reason for r in (first, second, third)]
    for later in (second, third):
        state = eval(_line(later, "CARRY"))  # noqa: S307 - the test's own submission printed a dict literal
        assert state == {"global": False, "module": False, "files": [], "others": [], "threads": 1}
        assert later.cpu_seconds < later.window_s + 0.2  # nothing of run 1 computes during it
    assert first.cpu_seconds < first.window_s + 0.5  # its thread and grandchild stopped when it ended


def test_identical_seeds_give_identical_runs_wherever_they_fall(escapes):
    late = escapes["carry_over"].results[2]
    (first,) = escapes["clean"].results
    a, b = load_file(str(late.weights_path)), load_file(str(first.weights_path))
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- times and outcomes from host evidence ----------------------------------------------------
def test_forged_control_lines_and_rows_change_nothing(escapes):
    first, second = escapes["forger"].results
    assert first.status is Status.TIMEOUT and first.seconds > 1.0, first.reason
    assert "reopened=[]" in _line(first, "FORGER")  # the parent's channel cannot be reopened
    assert second.status is Status.TIMEOUT and second.reason.startswith("not run: run 0 exceeded the 1.00 s time cap")


@pytest.mark.skipif(os.getuid() != 0, reason="runs share the parent's uid when the host is not root")
def test_a_run_cannot_kill_stop_trace_or_write_the_warm_parent(escapes):
    first, second = escapes["parent_killer"].results
    assert first.status is Status.OK, first.reason
    for attack in ("kill", "stop", "mem", "ptrace"):
        assert f"PARENT {attack} blocked" in first.log, first.log
    assert second.status is Status.OK
    (clean,) = escapes["clean"].results
    a, b = load_file(str(second.weights_path)), load_file(str(clean.weights_path))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the next run is exactly what it would have been


# -- resources per sandbox --------------------------------------------------------------------
@needs_cgroups
def test_a_greedy_run_gets_only_its_cores(escapes):
    (result,) = escapes["greedy"].results
    assert result.status is Status.OK, result.reason
    affinity = eval(_line(result, "GREEDY affinity="))  # noqa: S307
    assert len(affinity) == 1  # asked for every core, got the one it was given
    # four processes spinning 1 s each: on one core the run takes about 4 s and uses about 4 CPU-seconds
    assert result.cpu_seconds <= result.window_s * len(affinity) + 0.2
    assert result.window_s > 3.0


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: nothing to widen")
def test_without_cgroups_a_widened_affinity_is_seen_from_outside_and_killed(escapes):
    (result,) = escapes["greedy_watched"].results
    if escapes["greedy"].backend == "docker":  # the container's cpuset holds whatever the config says
        assert result.status is Status.OK and len(eval(_line(result, "GREEDY affinity="))) == 1  # noqa: S307
        return
    assert result.status is Status.EXCEPTION and "widened its CPU affinity" in result.reason, result.reason


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: nothing to widen")
def test_without_the_sandbox_the_same_greedy_run_takes_every_core(escapes):
    (result,) = escapes["greedy_none"].results
    assert len(eval(_line(result, "GREEDY affinity="))) == os.cpu_count()  # noqa: S307


@needs_cgroups
def test_shared_memory_counts_against_the_sandbox_and_the_next_run_is_unharmed(escapes):
    first, second = escapes["memory_hog"].results
    assert first.status is Status.OUT_OF_MEMORY, first.reason
    assert "HOG shared memory allocated" not in first.log
    assert second.status is Status.OK, second.reason  # the warm parent survived the kill


def test_filling_dev_shm_stops_at_the_scratch_budget(escapes):
    first, second = escapes["shm_filler"].results
    assert first.status is Status.EXCEPTION and "into its scratch folders, over the" in first.reason, first.reason
    assert second.reason.startswith("not run:")
    assert first.scratch_mb is None or first.scratch_mb < 4096


# -- the host survives what runs leave ---------------------------------------------------------
def test_deep_folders_links_and_broken_weights_are_each_their_own_run(escapes):
    results = escapes["leftovers"].results
    chain, after, negative_bn, padded, no_saving, broken_report = results
    assert chain.status is Status.OK, chain.reason  # 1,500 levels: no RecursionError on the host
    assert _line(after, "LEFTOVERS") == "working=[] out=[]" and after.status is Status.OK
    assert negative_bn.status is Status.BAD_WEIGHTS and "negative BatchNorm running variance" in negative_bn.reason
    assert padded.status is Status.BAD_WEIGHTS and "over its" in padded.reason
    assert no_saving.status is Status.BAD_WEIGHTS, no_saving.reason
    assert broken_report.status in (Status.EXCEPTION, Status.WORKER_DIED), broken_report.reason
    assert Status.SANDBOX_ERROR not in [r.status for r in results]
    assert not (escapes["leftovers"].outbox / "exchange").exists()
    assert Path("/etc/passwd").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="sandboxes run as the caller's own uid when not root")
def test_nothing_is_left_running_and_every_cgroup_is_gone(escapes):
    assert sum(count_tasks(uid) for uid in range(FIRST_UID, FIRST_UID + 10)) == 0
    mine = [p for p in Path("/sys/fs/cgroup/memory", PARENT).glob(f"{os.getpid()}-*")]
    assert mine == []

