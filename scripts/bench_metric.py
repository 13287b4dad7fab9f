"""Time harness.scoring.metric.epsilons at competition scale, beside the straightforward algorithm.

Default: S = 3000 forget examples, N = 512 models (target: <= 10 s on 2 cores, peak memory
< 2 GiB). The straightforward implementation (tests/metric_reference.py: thresholds tiled
against models, one example at a time, as the released code does) runs on a few examples of
the same data; its time is scaled to S and both must agree exactly on those examples.

    python scripts/bench_metric.py [--examples 3000] [--models 512] [--reference-examples 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from harness.scoring import metric

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test oracle
import metric_reference  # noqa: E402


def confidences(n: int, s: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, s] unlearned / retrained logit-scaled confidences, a realistic mix per column:
    mostly shared or shifted distributions, some peaky, separated, heavy-tailed or tied."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(2.0, 3.0, size=s)
    sd = rng.uniform(0.3, 2.5, size=s)
    retrained = mu + sd * rng.normal(size=(n, s))
    kind = rng.choice(6, size=s, p=[0.4, 0.3, 0.1, 0.05, 0.1, 0.05])
    z = rng.normal(size=(n, s))
    shift = np.select([kind == 1, kind == 3], [0.5, 6.0], 0.0)
    scale = np.where(kind == 2, 0.4, 1.0)
    unlearned = mu + sd * (shift + scale * z)
    tails = kind == 4
    unlearned[:, tails] = mu[tails] + sd[tails] * rng.standard_t(2.0, size=(n, tails.sum()))
    ties = kind == 5
    unlearned[:, ties] = np.round(unlearned[:, ties], 1)
    retrained[:, ties] = np.round(retrained[:, ties], 1)
    return unlearned, retrained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--models", type=int, default=512)
    ap.add_argument("--reference-examples", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the reference's reductions crawl with threads on a shared box

    unlearned, retrained = confidences(args.models, args.examples, args.seed)
    print(f"N = {args.models} models, S = {args.examples} forget examples")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metric._tables.cache_clear()
    wall, cpu = time.perf_counter(), time.process_time()
    eps = metric.epsilons(unlearned, retrained)
    fast_wall, fast_cpu = time.perf_counter() - wall, time.process_time() - cpu
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    f = float(metric.example_points(eps, args.models).mean())
    print(f"fast        {fast_wall:7.2f} s wall, {fast_cpu:7.2f} s CPU  "
          f"({1e3 * fast_cpu / args.examples:.3f} ms CPU per example)  F = {f:.4f}")

    metric._tables.cache_clear()
    tracemalloc.start()  # a second run: tracing slows numpy's allocations down
    metric.epsilons(unlearned, retrained)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    inputs = (unlearned.nbytes + retrained.nbytes) / 2**20
    print(f"memory      peak traced allocations in epsilons {traced_peak / 2**20:.1f} MiB (inputs "
          f"{inputs:.1f} MiB, held by the caller); process max RSS {rss_before:.0f} MiB before, "
          f"{rss_after:.0f} MiB after")

    # A hard case for skipping blocks: near-copies (best epsilon small everywhere).
    m = min(500, args.examples)
    near = retrained[:, :m] + 1e-6 * np.random.default_rng(args.seed).normal(size=(args.models, m))
    cpu = time.process_time()
    metric.epsilons(near, retrained[:, :m])
    cpu = time.process_time() - cpu
    print(f"hard case   unlearned = retrained + 1e-6 noise: {1e3 * cpu / m:.3f} ms CPU per example "
          f"({cpu * args.examples / m:.1f} s CPU scaled to S)")

    k = min(args.reference_examples, args.examples)
    if k <= 0:
        return
    cols = np.linspace(0, args.examples - 1, k).astype(int)
    wall, ref_cpu = time.perf_counter(), time.process_time()
    ref = metric_reference.epsilons(unlearned[:, cols], retrained[:, cols])
    wall, ref_cpu = (time.perf_counter() - wall) / k, (time.process_time() - ref_cpu) / k
    agree = np.array_equal(ref, eps[cols])
    print(f"reference   {wall:7.2f} s wall, {ref_cpu:.2f} s CPU per example on {k} examples -> "
          f"{wall * args.examples / 3600:.2f} h wall for {args.examples} (scaled)")
    print(f"speed-up    {wall * args.examples / fast_wall:.0f}x wall, "
          f"{ref_cpu * args.examples / fast_cpu:.0f}x CPU (reference scaled to S); "
          f"epsilons agree exactly on those examples: {agree}")


if __name__ == "__main__":
    main()
