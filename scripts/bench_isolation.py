"""What per-run isolation costs, and whether a greedy neighbour can slow a well-behaved run.

    python scripts/bench_isolation.py [--runs 8] [--cap 1.6]

1. Cost: each run is a fresh process forked from the warm parent, which imports the submission,
   builds the model and loaders, and writes the weights. The host measures that harness part (the
   probe runs' window, subtracted from every run's charge) and the process start alone; both are
   printed against the default task's cap (target: at most 5%).
2. Neighbours: a well-behaved submission (fixed CPU work) is timed in one sandbox while a second
   sandbox runs beside it: first the same well-behaved one, then a greedy one that asks for every
   core, 64 torch threads and forks spinning workers. The ratio of the well-behaved median run
   times (greedy / calm) must stay within 1.10; the same pair on the unsafe `none` backend is the
   baseline that shows what the sandbox prevents.

The data and model are the default task's shapes (small CNN, 16x16 images); nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.config import SandboxConfig  # noqa: E402
from harness.data.loaders import save_split  # noqa: E402
from harness.learn.models import build_model  # noqa: E402
from harness.sandbox import run_worker  # noqa: E402

WELL_BEHAVED = '''
import torch
import torch.nn.functional as F

def unlearning(net, retain_loader, forget_loader, val_loader):
    """A fixed amount of work: one epoch of fine-tuning on the retain set."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for batch in retain_loader:
        optimizer.zero_grad()
        F.cross_entropy(net(batch["image"]), batch["age_group"]).backward()
        optimizer.step()
'''

GREEDY = '''
import os, time
import torch

def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

def unlearning(net, retain_loader, forget_loader, val_loader):
    try:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
    except OSError:
        pass
    torch.set_num_threads(64)
    children = [pid for pid in (os.fork() for _ in range(3)) if pid]
    if len(children) < 3:  # a forked child
        spin(4.0)
        os._exit(0)
    x = torch.randn(512, 512)
    end = time.monotonic() + 4.0
    while time.monotonic() < end:
        x @ x
    for pid in children:
        os.waitpid(pid, 0)
'''

NOTHING = '''
def unlearning(net, retain_loader, forget_loader, val_loader):
    pass
'''


def make_inbox(folder: Path, source: str, n_runs: int, *, model: str = "small-cnn", size: int = 16,
               counts: tuple[int, int, int] = (4000, 200, 600)) -> Path:
    """An inbox with the default task's shapes by default: about 4,000 retain images of 3x16x16."""
    inbox = folder / "inbox"
    inbox.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in zip(("retain", "forget", "val"), counts):
        save_split(inbox / f"{split}.npz", {
            "image": rng.standard_normal((n, 3, size, size)).astype(np.float32),
            "image_id": np.array([f"img{i}" for i in range(n)]),
            "age_group": rng.integers(0, 10, n), "age": rng.integers(0, 90, n),
            "person_id": np.array([f"p{i % 300}" for i in range(n)]),
        })
    torch.manual_seed(0)
    save_file(build_model(model, num_classes=10, in_channels=3).state_dict(), str(inbox / "original.safetensors"))
    (inbox / "submission.py").write_text(source)
    seeds = list(range(n_runs))
    spec = {"model": model, "num_classes": 10, "in_channels": 3, "batch_size": 64, "batch_format": "dict",
            "device": "cpu", "seeds": seeds, "time_cap_s": 60.0}
    (inbox / "spec.json").write_text(json.dumps(spec))
    return inbox


def per_run_cost(root: Path, *, model: str = "small-cnn", size: int = 16, counts=(4000, 200, 600), n_runs: int = 6,
                 backend: str = "bubblewrap") -> dict:
    """A do-nothing submission's runs: the host-seen window per run and the measured harness allowance."""
    inbox = make_inbox(root / f"nothing-{model}", NOTHING, n_runs, model=model, size=size, counts=counts)
    results = run_worker(inbox, root / f"nothing-{model}" / "outbox", n_runs=n_runs, time_cap_s=60.0, backend=backend,
                         limits=SandboxConfig(memory_gb=8.0, first_uid=64000))
    return {"window_s": statistics.median(r.window_s for r in results),
            "allowance_s": statistics.median(r.window_s - r.seconds for r in results),
            "charged_s": statistics.median(r.seconds for r in results)}


def run(root: Path, name: str, source: str, n_runs: int, backend: str, results: dict) -> None:
    inbox = make_inbox(root / name, source, n_runs)
    results[name] = run_worker(inbox, root / name / "outbox", n_runs=n_runs, time_cap_s=60.0, backend=backend,
                               limits=SandboxConfig(memory_gb=4.0, first_uid=64000))


def pair(root: Path, first: tuple[str, str], second: tuple[str, str], n_runs: int, backend: str) -> dict:
    results: dict = {}
    threads = [threading.Thread(target=run, args=(root, name, source, n_runs, backend, results)) for name, source in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def median_ok(results) -> float:
    seconds = [r.seconds for r in results if r.status.value == "ok"]
    return statistics.median(seconds) if seconds else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--cap", type=float, default=1.6, help="the default task's cap (README: 0.2 x a solo retrain)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-isolation-"))

    print("== per-run isolation cost (bubblewrap, one process per run)")
    started = time.monotonic()
    cost = per_run_cost(root, n_runs=args.runs)
    window, allowance, charged = cost["window_s"], cost["allowance_s"], cost["charged_s"]
    print(f"sandbox start, warm-up and probes, plus {args.runs} runs: {time.monotonic() - started:.2f} s")
    print(f"per run: host-seen window {window * 1000:.1f} ms (fork, import, model and loaders, weights out), "
          f"harness allowance {allowance * 1000:.1f} ms, charged to a do-nothing run {charged * 1000:.1f} ms")
    share = window / args.cap
    print(f"isolation per run / cap: {share:.1%} of {args.cap:.2f} s  {'PASS' if share <= 0.05 else 'FAIL'} (target <= 5%)")

    verdicts = []
    for backend in ("bubblewrap", "none"):
        calm = pair(root / f"calm-{backend}", ("calm_a", WELL_BEHAVED), ("calm_b", WELL_BEHAVED), args.runs, backend)
        greedy = pair(root / f"greedy-{backend}", ("good", WELL_BEHAVED), ("greedy", GREEDY), args.runs, backend)
        beside_calm, beside_greedy = median_ok(calm["calm_a"]), median_ok(greedy["good"])
        ratio = beside_greedy / beside_calm
        print(f"== neighbours on {backend}: well-behaved median run {beside_calm:.3f} s beside a well-behaved one, "
              f"{beside_greedy:.3f} s beside a greedy one: ratio {ratio:.2f}")
        verdicts.append((backend, ratio))
    sandboxed = dict(verdicts)["bubblewrap"]
    print(f"neighbour ratio in the sandbox {sandboxed:.2f} (target <= 1.10), without it {dict(verdicts)['none']:.2f}: "
          f"{'PASS' if sandboxed <= 1.10 else 'FAIL'}")
    return 0 if share <= 0.05 and sandboxed <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
