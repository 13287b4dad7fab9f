"""Does the time cap let honest code through and stop code over the budget?

    python scripts/budget_check.py [--config C] [--repeats 20] [--over 1.5]

The cap allows `time_cap.retain_epochs` epochs of the recipe over the retain set (the
competition's 6), widened by the measured p99 run-time noise. This script writes two plain
fine-tunes by the recipe's own optimiser (harness.compete.budget_probe, the file the cap's noise
is measured with): one that uses exactly the budget and one at `--over` times it; `--calibrate K`
first records K dry runs' run times as this hardware's noise runs (more than the cap's own 16-32), then dry-runs the first `--repeats` times (every run again,
`--fresh`) and the second once, on the config's cached competition, as a participant would.

Targets (issue 12): the budget-sized file is within the cap in at least 19 of 20 dry runs; the
file at 1.5x the budget is rejected (timeout). Also printed: the cap's basis (median solo retrain,
noise runs and their p99), and every budget-sized run's time against the cap.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.compete.budget_probe import write_probe  # noqa: E402
from harness.compete.executors import make_executor  # noqa: E402
from harness.compete.runner import dry_run, prepare, time_cap_file  # noqa: E402
from harness.learn.training import hardware_identity  # noqa: E402
from harness.config import load_config  # noqa: E402

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="a config (the embedded default when omitted)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--over", type=float, default=1.5, help="the second file's multiple of the budget")
    parser.add_argument("--calibrate", type=int, default=0, metavar="K",
                        help="first K dry runs whose run times become this hardware's noise runs (the cap folds them "
                             "in from then on); the checked dry runs follow under that cap")
    args = parser.parse_args()
    cfg = load_config(args.config)
    budget = cfg.time_cap.share(cfg.recipe.epochs) * cfg.recipe.epochs
    quiet = {"progress": False, "log": lambda _msg: None}
    with tempfile.TemporaryDirectory() as tmp, make_executor(cfg.executor) as executor:
        folder = Path(tmp)
        exact = write_probe(folder / "exact", budget, cfg.recipe)
        over = write_probe(folder / "over", budget * args.over, cfg.recipe, share=f"{args.over:g}x")
        start = time.perf_counter()
        if args.calibrate:
            dry_run(exact, cfg, executor=executor, fresh=True, progress=False, log=print)  # builds what is missing
            runs = [t for _ in range(args.calibrate) for t in dry_run(exact, cfg, executor=executor, fresh=True, **quiet)["run_times_s"]]
            prep = prepare(cfg, executor=executor, **quiet)
            path = time_cap_file(cfg.cache_dir, prep.references.cache_key, hardware_identity(prep.device))
            stored = json.loads(path.read_text())
            path.write_text(json.dumps({**stored, "noise_run_times_s": [float(t) for t in runs]}))
            print(f"calibrated: {len(runs)} budget-sized run times (median {np.median(runs):.3f} s, p99 "
                  f"{np.percentile(runs, 99):.3f} s) recorded as the noise runs in {path}")
        first = dry_run(exact, cfg, executor=executor, fresh=True, progress=False, log=print)  # builds what is missing
        basis, cap = first["time_cap_basis"], first["time_cap_s"]
        print(f"\ncap {cap:.3f} s = {basis.get('fraction', 0):.3g} x median solo retrain {basis.get('median_retrain_s', 0):.3f} s "
              f"(retrains {', '.join(f'{t:.2f}' for t in basis.get('retrain_times_s', []))}) x (1 + p99 noise "
              f"{basis.get('noise_p99', 0):.3f}; {len(basis.get('noise_run_times_s', []))} runs of {basis.get('noise_probe')}: "
              f"median {np.median(basis.get('noise_run_times_s', [0])):.3f} s, max {max(basis.get('noise_run_times_s', [0])):.3f} s)")
        print(f"budget {budget:g} retain epochs; {args.repeats} dry runs of {exact.name}, {cfg.submissions.n_runs} runs each\n")
        late = dry_run(over, cfg, executor=executor, fresh=True, **quiet)  # first: the slower file's verdict
        print(f"{over.name} ({args.over:g}x the budget): {late['status']} ({late['error']}); "
              f"runs {', '.join(f'{t:.2f}' for t in late['run_times_s'])} s", flush=True)
        records = [first]
        for i in range(args.repeats):
            if i:
                records.append(dry_run(exact, cfg, executor=executor, fresh=True, **quiet))
            r = records[-1]
            worst = max(r["run_times_s"]) if r["run_times_s"] else float("nan")
            print(f"dry run {i + 1:2d}: {r['status']:8s} worst run {worst:.3f} s = {worst / cap:.3f} of the cap", flush=True)
        times = np.array([t for r in records for t in r["run_times_s"]])
        passed = sum(r["status"] == "ok" for r in records)
        print(f"\nbudget-sized runs: median {np.median(times):.3f} s ({np.median(times) / cap:.3f} of the cap), "
              f"p99 {np.percentile(times, 99):.3f} s, max {times.max():.3f} s ({times.max() / cap:.3f} of the cap)")
        print(f"within the cap: {passed} of {len(records)} dry runs (target: at least {int(np.ceil(0.95 * len(records)))})")
        print(f"{over.name} ({args.over:g}x the budget): {late['status']} ({late['error']}) "
              f"(target: timeout)")
        print(f"\nwall {time.perf_counter() - start:.0f} s")
    ok = passed >= int(np.ceil(0.95 * len(records))) and late["status"] == "timeout"
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
