"""Inside the sandbox: a warm parent that never runs submission code, and one fresh process per run.

    python -m harness.sandbox.worker INBOX OUTBOX

The parent (the "zygote") imports torch and the usual libraries, loads the data and the original
weights, warms torch up on one thread without touching CUDA, then waits for the host's commands
on its control channel. For `run i` it forks a child and tells the host at once (`started i`);
the child drops every privilege, closes the control channel, imports the submission (its import
is part of the run), builds the model and the loaders, calls `unlearning()`, extracts the
registered parameters and buffers with the harness's own code (never an overridable
`state_dict`), writes them to OUTBOX/run_<i>.safetensors and exits. When it has exited, the
parent kills whatever it left behind (processes, and with them their threads) and only then
tells the host (`exited i ...`). The host stamps both lines with its own clock, so the run's
time covers every instruction the submission executed; nothing the submission writes moves it.

The parent cannot be traced, read or signalled by the runs: it is not dumpable, and a run is
another uid (root hosts, Docker) with no capabilities. Control lines (parent -> host):

    ready                                 warm; waiting for commands
    started <i> <pid>                     run i's process exists (i = -1, -2: the host's probes)
    exited <i> <how> <left> <claim>       it and all it started are gone; <claim> is the child's
                                          own JSON report (status, reason, peaks) or null

and commands (host -> parent): `run <i>`, `quit`.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import json
import linecache
import os
import random
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from harness.sandbox.outcomes import Status, exception_status, one_line
from harness.sandbox.protocol import (
    CONTROL_ENV,
    MARKER,
    MARKER_END,
    ORIGINAL,
    OWN_PID_NAMESPACE_ENV,
    PARENT_TMP_ENV,
    RUN_UID_ENV,
    SUBMISSION,
    THREADS_ENV,
    WorkerSpec,
    read_spec,
    weights_name,
)

TRACEBACK_LINES = 30
CHAIN_FRAMES = 5  # frames a public reason names at most; deeper chains keep both ends
CLAIM_BYTES = 64 * 1024
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
# What a typical submission imports at its top: imported once here, so its own import costs milliseconds.
PRELOAD = ("torchvision", "numpy", "scipy", "scipy.stats", "pandas", "sklearn", "sklearn.linear_model",
           "sklearn.model_selection", "sklearn.metrics", "torch.nn.functional", "torch.utils.data")
_libc = ctypes.CDLL(None, use_errno=True)


# -- the control channel ---------------------------------------------------------------------
class Control:
    """Line-based, over two pipes (or FIFOs) that only the parent holds."""

    def __init__(self, events: int, commands: int) -> None:
        self.events, self.commands = events, commands
        self._buffer = b""

    @classmethod
    def from_env(cls) -> Control:
        value = os.environ.get(CONTROL_ENV, "")
        kind, _, where = value.partition(":")
        if kind == "fd":
            events, commands = (int(x) for x in where.split(","))
            return cls(events, commands)
        if kind == "fifo":
            commands = os.open(os.path.join(where, "commands"), os.O_RDONLY | os.O_CLOEXEC)
            events = os.open(os.path.join(where, "events"), os.O_WRONLY | os.O_CLOEXEC)
            return cls(events, commands)
        raise SystemExit(f"worker: {CONTROL_ENV} must be fd:W,R or fifo:DIR, got {value!r}")

    def send(self, line: str) -> None:
        data = (line + "\n").encode()
        while data:
            data = data[os.write(self.events, data):]

    def receive(self) -> str | None:
        """The next command, or None once the host closed its end."""
        while b"\n" not in self._buffer:
            chunk = os.read(self.commands, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        for fd in (self.events, self.commands):
            try:
                os.close(fd)
            except OSError:
                pass


# -- the warm parent -------------------------------------------------------------------------
class Zygote:
    def __init__(self, inbox: Path, outbox: Path, control: Control) -> None:
        self.inbox, self.outbox, self.control = inbox, outbox, control
        self.spec: WorkerSpec = read_spec(inbox)
        self.pid = os.getpid()
        self.own_namespace = os.environ.get(OWN_PID_NAMESPACE_ENV) == "1"
        self.threads = max(1, int(os.environ.get(THREADS_ENV, "1") or 1))
        drop = os.environ.get(RUN_UID_ENV, "")
        self.run_as = tuple(int(x) for x in drop.split(":")) if drop else None

    def setup(self) -> None:
        _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace, no /proc/<pid>/mem, no fd reopening
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # a run's orphans come back here to be killed
        self.run_tmpdir = os.environ.get("TMPDIR", "/tmp")
        if os.environ.get(PARENT_TMP_ENV):  # torch and torchvision want a writable temp folder at import
            os.environ["TMPDIR"] = tempfile.tempdir = os.environ[PARENT_TMP_ENV]
        import torch
        from safetensors.torch import load_file

        from harness.data.loaders import load_split
        from harness.learn.models import build_model

        torch.set_num_threads(1)  # warm up single-threaded: a forked child inherits no thread pool
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a library this machine lacks is the submission's problem
                pass
        self.torch, self.build_model = torch, build_model
        self.arrays = {split: load_split(self.inbox / f"{split}.npz") for split in ("retain", "forget", "val")}
        self.original = load_file(str(self.inbox / ORIGINAL))
        if self.spec.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.warm_up()
        gc.collect()
        gc.freeze()

    def warm_up(self) -> None:
        """Pay torch's one-off costs once (the first optimizer imports torch._dynamo, the first
        forward/backward loads kernels), on the CPU: CUDA initialised here would be unusable in
        the forked runs."""
        import torch.nn.functional as F

        from harness.data.loaders import make_loader

        spec, torch = self.spec, self.torch
        net = self.build_model(spec.model, num_classes=spec.num_classes, in_channels=spec.in_channels)
        net.load_state_dict(self.original)
        net.train()
        batch = next(iter(make_loader(self.arrays["retain"], batch_size=spec.batch_size, batch_format="tuple", seed=0)))
        images, labels = batch[0], batch[1]
        for optimizer in (torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9), torch.optim.Adam(net.parameters(), lr=0.0),
                          torch.optim.AdamW(net.parameters(), lr=0.0)):
            optimizer.zero_grad()
            F.cross_entropy(net(images), labels).backward()
            optimizer.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1).step()
        with torch.no_grad():
            net.eval()(images)
        del net, optimizer

    def serve(self) -> None:
        self.control.send("ready")
        while True:
            command = self.control.receive()
            if command is None or command == "quit":
                return
            kind, _, index = command.partition(" ")
            if kind == "run":
                self.run(int(index))

    def run(self, index: int) -> None:
        read_end, write_end = os.pipe()
        mark(f"{MARKER}{index} seed {self.seed_of(index)}\n")
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_end)
                self.control.close()
                Run(self, index, write_end).main()
            except BaseException:  # noqa: BLE001 - nothing may return into the parent's loop
                try:
                    traceback.print_exc()  # the harness's own step failed (or the submission broke it)
                    flush_std()
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(70)  # only when the run's own code did not exit: the host reports how it ended
        os.close(write_end)
        self.control.send(f"started {index} {pid}")
        _, wait_status = os.waitpid(pid, 0)
        left = self.kill_leftovers(pid)
        claim = read_claim(read_end)
        os.close(read_end)
        mark(f"{MARKER_END}{index}\n")
        self.control.send(f"exited {index} {describe_wait(wait_status)} {left} {json.dumps(claim)}")

    def seed_of(self, index: int) -> int:
        return self.spec.seeds[index] if index >= 0 else 0

    def kill_leftovers(self, child: int) -> int:
        """Kill every process the run left; the count still alive after trying (0 normally)."""
        deadline = time.monotonic() + 5.0
        while True:
            others = self.leftovers(child)
            if not others:
                return 0
            for pid in others:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            reap()
            if time.monotonic() > deadline:
                return len(self.leftovers(child))
            time.sleep(0.002)

    def leftovers(self, child: int) -> list[int]:
        """In a pid namespace of our own: every process but us and its init. Elsewhere (the
        unsafe `none` backend) the run's session, which a process can leave (trusted code only)."""
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid == self.pid:
                continue
            if self.own_namespace:
                if pid != 1:
                    found.append(pid)
            else:
                try:
                    if os.getsid(pid) == child:
                        found.append(pid)
                except OSError:
                    continue
        reap()
        return found


class Run:
    """One run, in its own process: everything from here on counts toward the run's time."""

    def __init__(self, zygote: Zygote, index: int, claim_fd: int) -> None:
        self.z, self.index, self.claim_fd = zygote, index, claim_fd
        self.spec = zygote.spec
        self.source_name = self.spec.source_name or SUBMISSION

    def main(self) -> None:
        self.isolate()
        self.pid = os.getpid()
        claim = self.perform()
        self.guard_fork()
        flush_std()
        data = json.dumps(claim).encode()[: CLAIM_BYTES - 1]
        try:
            os.write(self.claim_fd, data)
        except OSError:
            pass
        os._exit(0)  # ends every thread the submission started, at once

    def isolate(self) -> None:
        os.setsid()
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.z.pid:
            os._exit(71)
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(number, signal.SIG_DFL)
        try:
            with open("/proc/self/oom_score_adj", "w") as handle:
                handle.write("1000")  # under memory pressure the kernel takes a run, never the parent
        except OSError:
            pass
        if self.z.run_as is not None:
            from harness.sandbox.privdrop import drop

            drop(*self.z.run_as)
        os.environ["TMPDIR"] = self.z.run_tmpdir  # the run's own, emptied after it
        tempfile.tempdir = None
        self.z.torch.set_num_threads(self.z.threads)

    def guard_fork(self) -> None:
        """A process the submission forked never carries on with the harness's code (nor reports)."""
        if os.getpid() != self.pid:
            os._exit(0)

    def perform(self) -> dict:
        if self.index < 0:  # the host's probe: the same path with nothing to import or run
            function, batch_format = (lambda *args: None), self.spec.batch_format
        else:
            imported = self.import_submission()
            if isinstance(imported, dict):
                return imported
            function, batch_format = imported
        return self.call(function, batch_format)

    def import_submission(self):
        path = self.z.inbox / SUBMISSION
        try:
            module = load_module(path, self.source_name)
        except BaseException as exc:  # noqa: BLE001 - SystemExit at import is the submission's too
            self.guard_fork()
            print_traceback(exc, path, self.source_name)
            status = Status.OUT_OF_MEMORY if exception_status(exc) is Status.OUT_OF_MEMORY else Status.IMPORT_ERROR
            return claim(status, f"importing {self.source_name} failed: {describe(exc, path, self.source_name)}")
        function = getattr(module, "unlearning", None)
        if not callable(function):
            found = "is not callable" if function is not None else "is not defined"
            return claim(Status.MISSING_FUNCTION,
                         f"{self.source_name}: unlearning {found}; define def unlearning(net, retain_loader, forget_loader, val_loader)")
        declared = getattr(module, "BATCH_FORMAT", None)
        if declared is not None and declared not in ("dict", "tuple"):
            return claim(Status.IMPORT_ERROR, f"{self.source_name}: BATCH_FORMAT must be 'dict' or 'tuple'")
        return function, self.spec.batch_format_override or declared or self.spec.batch_format

    def call(self, function, batch_format: str) -> dict:
        from harness.data.loaders import make_loader

        torch, spec, z = self.z.torch, self.spec, self.z
        seed = z.seed_of(self.index)
        device = spec.device if self.index >= 0 else "cpu"  # probes never pay CUDA's initialisation
        net = z.build_model(spec.model, num_classes=spec.num_classes, in_channels=spec.in_channels)
        net.load_state_dict(z.original)
        net.to(device)
        net.train()
        seed_everything(seed, cuda=device.startswith("cuda"))
        loaders = [
            make_loader(z.arrays[split], batch_size=spec.batch_size, shuffle=True, batch_format=batch_format, seed=seed)
            for split in ("retain", "forget", "val")
        ]
        reset_peaks(torch, device)
        path = z.inbox / SUBMISSION
        try:
            returned = function(net, *loaders)
            if device.startswith("cuda"):
                torch.cuda.synchronize()  # queued kernels are part of the run's time
            model = unwrap(returned if isinstance(returned, torch.nn.Module) else net, torch)
        except BaseException as exc:  # noqa: BLE001 - whatever it raises is this run's outcome
            self.guard_fork()
            print_traceback(exc, path, self.source_name)
            return claim(exception_status(exc), describe(exc, path, self.source_name), peaks=(peak_rss_mb(), peak_gpu_mb(torch, device)))
        self.guard_fork()
        peaks = (peak_rss_mb(), peak_gpu_mb(torch, device))
        try:
            tensors = extract(model, torch)
            save(tensors, z.outbox / weights_name(self.index))
        except BaseException as exc:  # noqa: BLE001 - a model we cannot read is the submission's
            print_traceback(exc, path, self.source_name)
            status = exception_status(exc)
            return claim(Status.BAD_WEIGHTS if status is Status.EXCEPTION else status,
                         f"the model's weights cannot be read: {describe(exc, path, self.source_name)}", peaks=peaks)
        return claim(Status.OK, None, peaks=peaks)


def claim(status: Status, reason: str | None, *, peaks: tuple = (None, None)) -> dict:
    return {"status": str(status), "reason": reason, "peak_rss_mb": peaks[0], "peak_gpu_mb": peaks[1]}


def extract(model, torch) -> dict:
    """Registered parameters and persistent buffers, read through nn.Module's own methods on the
    module's own dictionaries, so a subclass overriding state_dict() changes nothing."""
    module_type = torch.nn.Module
    tensors = {}
    for prefix, module in module_type.named_modules(model, remove_duplicate=False):
        params = object.__getattribute__(module, "_parameters")
        buffers = object.__getattribute__(module, "_buffers")
        skip = object.__getattribute__(module, "_non_persistent_buffers_set")
        for name, value in list(dict.items(params)) + [(k, v) for k, v in dict.items(buffers) if k not in skip]:
            if value is None:
                continue
            key = f"{prefix}.{name}" if prefix else name
            tensors[key] = torch.Tensor.contiguous(torch.Tensor.to(torch.Tensor.detach(value), "cpu")).clone()
    return tensors


def save(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def read_claim(fd: int) -> dict | None:
    """The child's report: a bounded read once everything it started is dead."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < CLAIM_BYTES:
            chunk = os.read(fd, CLAIM_BYTES - len(data))
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    try:
        value = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    kept = {key: value.get(key) for key in ("status", "reason", "peak_rss_mb", "peak_gpu_mb")}
    kept["reason"] = None if kept["reason"] is None else one_line(str(kept["reason"]))
    for key in ("peak_rss_mb", "peak_gpu_mb"):
        if not isinstance(kept[key], (int, float)) or isinstance(kept[key], bool):
            kept[key] = None
    return kept


def describe_wait(status: int) -> str:
    """'code:N' or 'signal:N', one token."""
    if os.WIFSIGNALED(status):
        return f"signal:{os.WTERMSIG(status)}"
    return f"code:{os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1}"


def reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def mark(text: str) -> None:
    """A log marker on the real stdout, in stream order with what the runs print."""
    try:
        os.write(1, text.encode())
    except OSError:
        pass


def flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed or replaced by the submission
            pass


def unwrap(model, torch):
    """The model inside nn.DataParallel / DistributedDataParallel / torch.compile wrappers, whose
    keys would otherwise carry 'module.' or '_orig_mod.' prefixes."""
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def seed_everything(seed: int, *, cuda: bool) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if cuda:
        torch.cuda.manual_seed_all(seed)


def reset_peaks(torch, device: str) -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM, the peak resident set size
    except OSError:
        pass
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_rss_mb() -> float | None:
    """Peak resident memory since the last reset (VmHWM), or of any child that ended, in MiB."""
    import resource

    peak_kb = None
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    peak_kb = int(line.split()[1])
    except OSError:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb is None:
        return None
    return round(max(peak_kb, children_kb) / 1024, 1)


def peak_gpu_mb(torch, device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def load_module(path: Path, name: str):
    """Import the inbox's file as module `submission`, its code compiled under the participant's
    own file name, so tracebacks, warnings and frames say `my_method.py`, never the sandbox copy."""
    source = path.read_bytes()
    module_spec = importlib.util.spec_from_file_location("submission", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["submission"] = module
    text = source.decode("utf-8", errors="replace")
    linecache.cache[name] = (len(text), None, text.splitlines(keepends=True), name)  # no mtime: never re-read
    exec(compile(source, name, "exec", dont_inherit=True), module.__dict__)  # noqa: S102 - the run is for this
    return module


def describe(exc: BaseException, path: Path, name: str) -> str:
    """The public reason, a template: 'ValueError at my_method.py:12 in unlearning -> my_method.py:28
    in hessian', the chain of frames in the participant's file from the outermost (unlearning, or
    the module at import) inwards. The message itself can carry anything the submission wants
    published, so it goes to the private log only."""
    text = type(exc).__name__
    if isinstance(exc, SystemExit):
        text = "SystemExit (called sys.exit)"
    if isinstance(exc, SyntaxError) and exc.lineno and str(exc.filename) in (name, str(path)):
        return f"{text} at {name}:{exc.lineno}"
    frames = [f"{name}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__) if _theirs(f.filename, path, name)]
    if len(frames) > CHAIN_FRAMES:  # deep recursion: the outermost, how many were left out, the innermost
        frames = [frames[0], f"({len(frames) - CHAIN_FRAMES + 1} more)", *frames[-(CHAIN_FRAMES - 2):]]
    if frames:
        text += " at " + " -> ".join(frames)
    return one_line(text)


def print_traceback(exc: BaseException, path: Path, name: str) -> None:
    """The traceback into the run's (private) log, from the first frame in the participant's file:
    the harness's own frames that called it are not theirs to read."""
    shown = traceback.TracebackException.from_exception(exc)
    first = next((i for i, f in enumerate(shown.stack) if _theirs(f.filename, path, name)), None)
    if first is None and isinstance(exc, SyntaxError) and exc.filename == name:
        first = len(shown.stack)  # compiling it failed: only where, in their file, is theirs
    if first:
        shown.stack = traceback.StackSummary.from_list(shown.stack[first:])
    lines = "".join(shown.format()).replace(str(path), name).splitlines()
    print("\n".join(lines[-TRACEBACK_LINES:]), file=sys.stderr, flush=True)


def _theirs(filename: str, path: Path, name: str) -> bool:
    return filename in (name, str(path))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m harness.sandbox.worker INBOX OUTBOX", file=sys.stderr)
        return 2
    control = Control.from_env()
    zygote = Zygote(Path(argv[0]), Path(argv[1]), control)
    zygote.setup()  # a failure here ends the worker before 'ready': the host reports sandbox_error
    zygote.serve()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown (seconds with torch loaded)
