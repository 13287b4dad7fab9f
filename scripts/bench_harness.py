"""Where a whole competition's time goes, and what one submission costs at competition scale.

1. Scores a fresh competition (nothing cached) on a config (default: the embedded default) and
   splits its wall time into training, submission compute (inside `unlearning()`), evaluation,
   metric and the harness's overhead (task, data hand-off, sandbox start and per-run set-up,
   clean-up, store, worker processes' start), each timed where it runs (harness.compete.timing), and the
   cores left idle while a unit must run alone. Parts are core-seconds: shares are of wall time
   x cores. What no part claims is idle or untimed (cores waiting for the last unit of a phase)
   and is printed, not hidden.
2. Evaluation beside a bare no-grad forward loop of the same model over the same images, on the
   same device and threads: harness.learn.evaluation.evaluate's throughput, and the throughput
   evaluation reached inside the competition.
3. Competition scale (ResNet-18, 32x32, N = 512, the organizers' recipe: 30 epochs, batch 64):
   per-unit costs measured here (a training step, an evaluation pass, a sandbox start, the
   metric at S x 512), and from them the time to score one submission and to train the
   references, on this machine's cores. Dataset sizes are flags (defaults near CASIA-SURF's).

Targets on 2 cores: overhead <= 5%, evaluation >= 80% of the bare loop, metric < 1%.

    python scripts/bench_harness.py [--config configs/default.yaml] [--no-scale] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.compete.runner import run_competition  # noqa: E402
from harness.compete.timing import OVERHEAD, WAITING, WORK, Timings  # noqa: E402
from harness.config import RecipeConfig, load_config  # noqa: E402
from harness.data.task import build_task  # noqa: E402
from harness.learn.evaluation import evaluate  # noqa: E402
from harness.learn.models import build_model, load_weights  # noqa: E402
from harness.learn.training import torch_threads, train_model  # noqa: E402
from harness.results.store import Store  # noqa: E402
from harness.scoring import metric  # noqa: E402

TARGETS = {"overhead": 0.05, "evaluation_vs_bare": 0.80, "metric": 0.01}
EVAL_BATCH = 256  # evaluate()'s batch


def competition(config: str | None, output: Path) -> dict:
    """A fresh competition, timed: wall seconds, cores and the parts."""
    cfg = load_config(config, overrides={"output.dir": str(output)})
    cores = cfg.executor.workers or len(os.sched_getaffinity(0))
    timings = Timings()
    start = time.perf_counter()
    run_competition(cfg, timings=timings, progress=False, log=lambda _: None)
    wall = time.perf_counter() - start
    return {"cfg": cfg, "wall_s": wall, "cores": cores, "parts": dict(timings.seconds), "overhead_s": timings.overhead,
            "sandboxed_workers": timings.counts["sandbox"]}  # one sandbox account per submission unit


def evaluations_done(cfg) -> int:
    """Models evaluated in the competition: every ok run (the oracle's too) and the references."""
    runs = Store(cfg.run_dir / "results.sqlite").all_runs("public")
    return sum(r["status"] == "ok" for r in runs) + cfg.references.n_models


def evaluation_throughput(cfg, *, repeats: int = 3) -> dict:
    """evaluate() and a bare no-grad forward loop on the original model, the same images, 1 thread."""
    task = build_task(cfg.task)
    sets = {name: task.arrays(name) for name in ("forget", "retain", "test")}
    images = np.concatenate([sets[name]["image"] for name in sets])
    model = build_model(cfg.model.name, num_classes=cfg.model.num_classes, in_channels=int(images.shape[1]))
    original = sorted((cfg.run_dir / "cache").glob("original-*.safetensors"))
    if original:
        load_weights(model, original[0])
    model.eval()
    bare, harness = [], []
    with torch_threads(1):  # as a unit evaluates on a 2-core machine
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                for i in range(0, len(images), EVAL_BATCH):
                    model(torch.from_numpy(images[i : i + EVAL_BATCH]))
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            evaluate(model, forget=sets["forget"], retain=sets["retain"], test=sets["test"], device="cpu")
            harness.append(time.perf_counter() - start)
    n = len(images)
    return {"images": n, "bare_img_s": n / min(bare), "evaluate_img_s": n / min(harness)}


def scale_costs(args, *, sandbox_start_s: float) -> dict:
    """Competition-scale per-unit costs measured here, and the totals they imply."""
    channels, size = 3, 32
    model = build_model("resnet18", num_classes=10, in_channels=channels)
    rng = np.random.default_rng(0)
    n_train = 64 * args.scale_steps
    batch = {"image": rng.normal(size=(n_train, channels, size, size)).astype(np.float32),
             "age_group": rng.integers(0, 10, n_train)}
    recipe = RecipeConfig(epochs=1, lr=1e-4, weight_decay=5e-3, batch_size=64, class_weighted=False)
    with torch_threads(1):
        seconds = train_model(model, batch, recipe, class_weights=None, seed=0, device="cpu")
        train_img_s = n_train / seconds
        evaluated = {"image": batch["image"][:1024], "age_group": batch["age_group"][:1024]}
        start = time.perf_counter()
        evaluate(model, forget=evaluated, retain=evaluated, test=evaluated, device="cpu")
        eval_img_s = 3 * 1024 / (time.perf_counter() - start)
    n = 512
    unlearned = rng.normal(size=(n, args.scale_forget))
    retrained = rng.normal(0.2, 1.0, size=(n, args.scale_forget))
    start = time.perf_counter()
    metric.forget_quality(unlearned, retrained)
    metric_s = time.perf_counter() - start

    retrain_s = 30 * args.scale_retain / train_img_s
    cap_s = 0.2 * retrain_s
    eval_s = (args.scale_forget + args.scale_retain + args.scale_test) / eval_img_s
    cores = len(os.sched_getaffinity(0))
    units = cores  # a submission's 512 runs spread over the slots, one sandbox start each
    # each run is its own process: fork, import, a ResNet-18 built and its weights written, measured
    from bench_isolation import per_run_cost

    per_run = per_run_cost(Path(tempfile.mkdtemp(prefix="bench-per-run-")), model="resnet18", size=32,
                           counts=(2048, 300, 300), n_runs=4)
    one_submission_s = (n * (cap_s + eval_s + per_run["window_s"]) + units * sandbox_start_s) / cores + metric_s
    references_s = n * (retrain_s + eval_s) / cores
    return {
        "assumed": {"retain": args.scale_retain, "forget": args.scale_forget, "test": args.scale_test,
                    "epochs": 30, "batch": 64, "n_models": n, "time_cap_fraction": 0.2},
        "train_img_s_1thread": train_img_s, "eval_img_s_1thread": eval_img_s,
        "retrain_s": retrain_s, "time_cap_s": cap_s, "evaluation_per_run_s": eval_s,
        "sandbox_start_s": sandbox_start_s, "metric_s": metric_s, "cores": cores,
        "per_run_process_s": per_run["window_s"], "per_run_allowance_s": per_run["allowance_s"],
        "per_run_vs_cap": per_run["window_s"] / cap_s,
        "one_submission_worst_case_s": one_submission_s, "references_once_s": references_s,
    }


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="a competition config (default: the embedded default)")
    parser.add_argument("--no-scale", action="store_true", help="skip the competition-scale extrapolation")
    parser.add_argument("--scale-retain", type=int, default=24_000, help="retain images at competition scale")
    parser.add_argument("--scale-forget", type=int, default=300, help="forget images at competition scale")
    parser.add_argument("--scale-test", type=int, default=3_000, help="test images at competition scale")
    parser.add_argument("--scale-steps", type=int, default=8, help="ResNet-18 training steps timed")
    parser.add_argument("--json", action="store_true", help="print one JSON record")
    args = parser.parse_args()
    os.chdir(ROOT)  # the config's submissions folder is relative to the repository

    with tempfile.TemporaryDirectory(prefix="bench-harness-") as tmp:
        run = competition(args.config, Path(tmp))
        cfg = run["cfg"]
        throughput = evaluation_throughput(cfg)
        n_evals = evaluations_done(cfg)
    capacity = run["wall_s"] * run["cores"]
    parts = {part: run["parts"].get(part, 0.0) for part in WORK + OVERHEAD + WAITING}
    timed = sum(parts.values())
    eval_images = n_evals * throughput["images"]
    in_competition_img_s = eval_images / parts["evaluation"] if parts["evaluation"] else float("nan")
    ratios = {
        "overhead": run["overhead_s"] / capacity,
        "metric": parts["metric"] / capacity,
        "evaluation_vs_bare": throughput["evaluate_img_s"] / throughput["bare_img_s"],
        "evaluation_in_competition_vs_bare": in_competition_img_s / throughput["bare_img_s"],
    }
    report = {
        "config": cfg.source, "wall_s": run["wall_s"], "cores": run["cores"], "capacity_core_s": capacity,
        "parts_core_s": parts, "idle_or_untimed_core_s": capacity - timed, "ratios": ratios,
        "evaluation": {**throughput, "models_evaluated": n_evals, "in_competition_img_s": in_competition_img_s},
        "targets": TARGETS,
    }
    if not args.no_scale:
        per_unit = parts["sandbox"] / max(1, run["sandboxed_workers"])
        report["scale"] = scale_costs(args, sandbox_start_s=per_unit)
    passed = (ratios["overhead"] <= TARGETS["overhead"] and ratios["metric"] < TARGETS["metric"]
              and ratios["evaluation_vs_bare"] >= TARGETS["evaluation_vs_bare"])
    report["passed"] = passed
    if args.json:
        print(json.dumps(report, indent=1, default=float))
    else:
        _print(report)
    return 0 if passed else 1


def _print(r: dict) -> None:
    print(f"competition: {r['config']}, wall {r['wall_s']:.1f} s on {r['cores']} cores "
          f"= {r['capacity_core_s']:.1f} core-s")
    print(f"{'part':<28}{'core-s':>10}{'share':>9}")
    for part, seconds in r["parts_core_s"].items():
        kind = "overhead: " if part in OVERHEAD else "waiting: " if part in WAITING else ""
        print(f"{kind + part:<28}{seconds:>10.2f}{seconds / r['capacity_core_s']:>9.1%}")
    idle = r["idle_or_untimed_core_s"]
    print(f"{'idle or untimed':<28}{idle:>10.2f}{idle / r['capacity_core_s']:>9.1%}")
    ra, t = r["ratios"], r["targets"]
    ev = r["evaluation"]
    print(f"overhead {ra['overhead']:.1%} (target <= {t['overhead']:.0%}); metric {ra['metric']:.2%} "
          f"(target < {t['metric']:.0%})")
    print(f"evaluation: evaluate() {ev['evaluate_img_s']:.0f} img/s vs bare forward loop {ev['bare_img_s']:.0f} img/s "
          f"= {ra['evaluation_vs_bare']:.2f} (target >= {t['evaluation_vs_bare']:.2f}); inside the competition "
          f"{ev['in_competition_img_s']:.0f} img/s over {ev['models_evaluated']} models = "
          f"{ra['evaluation_in_competition_vs_bare']:.2f}")
    if "scale" in r:
        s = r["scale"]
        a = s["assumed"]
        print(f"competition scale (ResNet-18 32x32, N = {a['n_models']}, retain {a['retain']}, forget {a['forget']}, "
              f"test {a['test']}; measured here at 1 thread per unit, {s['cores']} cores):")
        print(f"  training {s['train_img_s_1thread']:.0f} img/s -> one retrain {_hours(s['retrain_s'])}, "
              f"time cap {_hours(s['time_cap_s'])}; evaluation {s['eval_img_s_1thread']:.0f} img/s -> "
              f"{s['evaluation_per_run_s']:.1f} s per run; sandbox {s['sandbox_start_s']:.1f} s per unit; "
              f"metric {s['metric_s']:.2f} s")
        print(f"  one process per run (fork, import, ResNet-18 built, weights out): {s['per_run_process_s'] * 1000:.0f} ms "
              f"= {s['per_run_vs_cap']:.3%} of the cap (target <= 5%)")
        print(f"  one submission (every run at the cap): {_hours(s['one_submission_worst_case_s'])}; "
              f"the 512 references, once: {_hours(s['references_once_s'])}")
    print("PASS" if r["passed"] else "FAIL: a target was missed")


if __name__ == "__main__":
    raise SystemExit(main())
