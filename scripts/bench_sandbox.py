"""What the sandbox costs: worker start-up per submission and overhead per run, per backend.

    python scripts/bench_sandbox.py [--runs 8] [--backends bubblewrap none] [--repeats 2]

A do-nothing submission on the small CNN, so every second measured is the harness's own:
start-up = from run_worker() to run 0's start (bwrap, python, torch, data, warm-up, import);
per run = wall time between consecutive runs' results minus the submission's own time.
Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from harness.config import SandboxConfig
from harness.data.loaders import save_split
from harness.learn.models import build_model
from harness.sandbox import run_worker
from harness.sandbox.backends import bwrap_status

DO_NOTHING = "def unlearning(net, retain_loader, forget_loader, val_loader):\n    return net\n"


def make_inbox(folder: Path, *, runs: int, model: str, size: int) -> Path:
    inbox = folder / "inbox"
    inbox.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("retain", 512), ("forget", 64), ("val", 64)):
        save_split(inbox / f"{split}.npz", {
            "image": rng.standard_normal((n, 3, size, size)).astype(np.float32),
            "image_id": np.array([f"i{i}" for i in range(n)]),
            "age_group": rng.integers(0, 10, n),
            "age": rng.integers(0, 90, n),
            "person_id": np.array([f"p{i % 50}" for i in range(n)]),
        })
    torch.manual_seed(0)
    save_file(build_model(model, num_classes=10, in_channels=3).state_dict(), str(inbox / "original.safetensors"))
    (inbox / "submission.py").write_text(DO_NOTHING)
    (inbox / "spec.json").write_text(json.dumps({
        "model": model, "num_classes": 10, "in_channels": 3, "batch_size": 64, "batch_format": "dict",
        "device": "cpu", "seeds": list(range(runs)), "time_cap_s": 600,
    }))
    return inbox


def measure(backend: str, *, runs: int, model: str, size: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        inbox = make_inbox(Path(tmp), runs=runs, model=model, size=size)
        stamps: list[float] = []
        own: list[float] = []
        started = time.monotonic()

        def on_run(result) -> None:
            stamps.append(time.monotonic())
            own.append(result.seconds or 0.0)

        results = run_worker(inbox, Path(tmp) / "outbox", n_runs=runs, time_cap_s=600, backend=backend,
                             limits=SandboxConfig(cpus=1), device="cpu", on_run=on_run)
        total = time.monotonic() - started
    bad = [r for r in results if r.status != "ok"]
    if bad:
        raise SystemExit(f"{backend}: run {bad[0].index} {bad[0].status}: {bad[0].reason}")
    startup = stamps[0] - started - own[0]
    gaps = [stamps[i] - stamps[i - 1] - own[i] for i in range(1, runs)]
    return startup, statistics.median(gaps) if gaps else float("nan"), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--backends", nargs="+", default=["bubblewrap", "none"])
    args = parser.parse_args()
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    print(f"reference: a bare 'python -c \"import torch\"' takes {time.monotonic() - started:.2f} s here")
    for backend in args.backends:
        if backend == "bubblewrap" and not bwrap_status()[0]:
            print(f"{backend}: skipped ({bwrap_status()[1]})")
            continue
        for repeat in range(args.repeats):
            startup, per_run, total = measure(backend, runs=args.runs, model=args.model, size=args.size)
            print(f"{backend:>10} #{repeat}: start-up {startup:5.2f} s, overhead per run {per_run * 1000:6.1f} ms "
                  f"(median of {args.runs - 1}), total {total:5.2f} s for {args.runs} runs of {args.model}")


if __name__ == "__main__":
    main()
