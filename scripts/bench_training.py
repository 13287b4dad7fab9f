"""Throughput of the training paths (loop, processes, vmap) and of evaluation, on the dry-run model.

    python scripts/bench_training.py [--models 4] [--epochs 15] [--device auto]

Trains --models small-cnn models per path with the default config's recipe (Adam lr 1e-3,
batch 128) on the embedded synthetic faces at 16 px, prints seconds per model and models per
minute, and which path `auto` picks here. Then times evaluate() against a bare no-grad forward loop over the same images.
Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import torch

from harness.config import load_config, resolve_device
from harness.data.loaders import class_weights
from harness.data.task import build_task
from harness.learn.evaluation import evaluate
from harness.learn.models import ModelSpec
from harness.learn.training import TRAINING_PATHS, choose_path, hardware_description, train_many


def bench_path(path, spec, arrays, recipe, *, n_models, weights, device, workers):
    start = time.perf_counter()
    results = list(train_many(spec, arrays, recipe, seeds=range(n_models), class_weights=weights, device=device,
                              path=path, workers=workers))
    wall = time.perf_counter() - start
    return wall, results


def bench_evaluation(model, splits, *, device, batch_size, repeats):
    images = np.concatenate([s["image"] for s in splits])
    source = torch.from_numpy(images)
    model.to(device).eval()

    def bare():
        with torch.no_grad():
            for i in range(0, len(source), batch_size):
                model(source[i : i + batch_size].to(device))

    def ours():
        evaluate(model, forget=splits[0], retain=splits[1], test=splits[2], device=device, batch_size=batch_size)

    timings = {}
    for name, fn in (("bare forward", bare), ("evaluate()", ours)):
        fn()  # warm-up
        best = min(_timed(fn) for _ in range(repeats))
        timings[name] = len(images) / best
    return timings


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4, help="models per path")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's recipe")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--paths", default=",".join(TRAINING_PATHS))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for loop, vmap and evaluation (default: torch's own); processes use 1 each")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config()
    device = resolve_device(args.device)
    recipe = cfg.recipe if args.epochs is None else dataclasses.replace(cfg.recipe, epochs=args.epochs)
    task = build_task(cfg.task)
    retain, forget, test, train = (task.arrays(split) for split in ("retain", "forget", "test", "train"))
    spec = ModelSpec(cfg.model.name, cfg.model.num_classes, int(task.images.shape[1]))
    weights = class_weights(train["age_group"], cfg.model.num_classes)
    print(f"data: {task.description}")
    print(f"hardware: {hardware_description(device)}; load average {os.getloadavg()[0]:.1f} (other work skews timings)")
    print(
        f"training {args.models} x {spec.name} on {len(train['age_group'])} images {tuple(train['image'].shape[1:])}, "
        f"{recipe.epochs} epochs, {recipe.optimizer} lr {recipe.lr}, batch {recipe.batch_size}"
    )
    print(f"{'path':<10} {'wall s':>8} {'s/model':>8} {'models/min':>10} {'images/s':>10} {'train s/model':>14}")
    last = None
    for path in args.paths.split(","):
        wall, results = bench_path(path, spec, train, recipe, n_models=args.models, weights=weights, device=device,
                                   workers=args.workers)
        per_model = wall / args.models
        images = len(train["age_group"]) * recipe.epochs * args.models / wall
        inside = float(np.mean([r.seconds for r in results]))
        print(f"{path:<10} {wall:8.1f} {per_model:8.2f} {60 / per_model:10.1f} {images:10.0f} {inside:14.2f}")
        last = results[0]
    print(f"load average now {os.getloadavg()[0]:.1f}")
    print(f"auto picks: {choose_path(device, n_models=args.models)} (for {args.models} models on {device})")
    print("(train s/model: inside each model's training; for processes it excludes the pool's start-up, "
          "for vmap it is the ensemble's time shared among its members)")

    model = spec()
    model.load_state_dict(last.state_dict)
    timings = bench_evaluation(model, (forget, retain, test), device=device, batch_size=256, repeats=3)
    bare, ours = timings["bare forward"], timings["evaluate()"]
    print(f"evaluation, batch 256: bare forward {bare:,.0f} img/s, evaluate() {ours:,.0f} img/s "
          f"({100 * ours / bare:.0f}% of bare)")


if __name__ == "__main__":
    main()
