"""What each baseline costs and does on the dry-run task, against the time cap.

    python scripts/bench_baselines.py [--seeds 2] [--baselines finetune scrub ...] [--files F.py ...] [--device auto]

Builds the default config's task (embedded synthetic faces, small-cnn), trains the original by
the recipe, and times one solo retrain by the recipe: the time cap is time_cap.share() of it (the
runner also adds the measured run-time noise; this does not). Then calls each baseline (and each
--files submission) as the worker does (a fresh copy of the original, loaders from make_loader,
batch 64) and prints its time, its cost in retain-epoch equivalents (REE: one
cross-entropy training pass over retain through the same loader), its share of the cap, and the
retain/test/forget accuracy and mean forget-set logit-scaled confidence it leaves, beside two
models retrained on retain. On the CPU the clock is process time with one thread, so other load
on a shared machine barely moves the figures; on CUDA it is wall time. Takes 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.compete.baselines import BASELINES, baseline_path
from harness.config import load_config, resolve_device
from harness.data.loaders import class_weights, make_loader
from harness.data.task import build_task
from harness.learn.evaluation import evaluate
from harness.learn.models import build_model
from harness.learn.training import train_model, train_plain


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"submission_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def retain_epoch_seconds(model, retain, *, device, repeats=3) -> float:
    """Median time of one plain cross-entropy pass over retain through the submission loader."""
    times = []
    for seed in range(repeats):
        net = copy.deepcopy(model).to(device).train()
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        start = clock(device)
        for batch in make_loader(retain, seed=seed):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(batch["image"].to(device)), batch["age_group"].to(device)).backward()
            optimizer.step()
        times.append(clock(device) - start)
    return float(np.median(times))


def row(ev, seconds=None, ree=None, cap=None) -> str:
    cost = "" if seconds is None else f"{seconds:7.2f}s {seconds / ree:5.2f} REE {seconds / cap:5.2f} cap"
    return (f"{cost:<30} retain {ev.retain_acc:.3f} test {ev.test_acc:.3f} forget {ev.forget_acc:.3f} "
            f"conf {np.mean(ev.forget_confs):+.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="runs per baseline (figures are their means)")
    parser.add_argument("--baselines", nargs="*", default=[n for n in BASELINES.names() if n != "retrain"])
    parser.add_argument("--files", nargs="*", default=[], type=Path,
                        help="submission files to time after the baselines (submissions/examples/*.py)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config()
    device = torch.device(resolve_device(args.device))
    task = build_task(cfg.task)
    splits = {name: task.arrays(name) for name in ("train", "retain", "forget", "val", "test")}
    print(task.description)

    def trained(split: str, seed: int, *, train=train_model):
        torch.manual_seed(seed)
        model = build_model(cfg.model.name, num_classes=task.num_classes, in_channels=task.images.shape[1])
        weights = class_weights(splits[split]["age_group"], task.num_classes)
        start = clock(device)
        train(model, splits[split], cfg.recipe, class_weights=weights, seed=seed, device=device)
        return model, clock(device) - start

    def score(model):
        return evaluate(model, forget=splits["forget"], retain=splits["retain"], test=splits["test"], device=device)

    original, _ = trained("train", cfg.seed)
    # timed as the runner times the cap: through the submissions' DataLoader (train_plain), not
    # train_model's faster tensor path, which would make every submission look dearer than it is
    retrained = [trained("retain", cfg.references.seed + i, train=train_plain) for i in range(2)]
    retrain_s = float(np.median([seconds for _, seconds in retrained]))
    cap = cfg.time_cap.share(cfg.recipe.epochs) * retrain_s  # before the noise margin the runner adds
    ree = retain_epoch_seconds(original, splits["retain"], device=device)
    print(f"device {device}; recipe {cfg.recipe.epochs} epochs at batch {cfg.recipe.batch_size}: "
          f"retrain {retrain_s:.2f}s, cap {cap:.2f}s = {cap / ree:.2f} REE; 1 REE = {ree:.2f}s at batch {cfg.task.batch_size}")
    print(f"{'original':<24} {row(score(original))}")
    for i, (model, _) in enumerate(retrained):
        print(f"{f'retrained {i}':<24} {row(score(model))}")
    entries = [(name, baseline_path(name)) for name in args.baselines] + [(path.stem, path) for path in args.files]
    for name, path in entries:
        module, runs = load(path), []
        for seed in range(args.seeds):
            net = copy.deepcopy(original).to(device).train()
            loaders = [make_loader(splits[s], batch_size=cfg.task.batch_size, seed=seed)
                       for s in ("retain", "forget", "val")]
            torch.manual_seed(seed)
            start = clock(device)
            returned = module.unlearning(net, *loaders)
            seconds = clock(device) - start
            runs.append((seconds, score(returned if isinstance(returned, torch.nn.Module) else net)))
        seconds = float(np.mean([s for s, _ in runs]))
        mean = type(runs[0][1])(
            forget_confs=np.mean([e.forget_confs for _, e in runs], axis=0),
            **{k: float(np.mean([getattr(e, k) for _, e in runs])) for k in ("retain_acc", "test_acc", "forget_acc")},
        )
        print(f"{name:<24} {row(mean, seconds, ree, cap)}")


if __name__ == "__main__":
    main()
