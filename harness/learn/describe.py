"""`unlearn data describe`: what the task holds, and whether it is worth unlearning on.

Two measurements make a dry run meaningful: the model generalises (test accuracy far above
chance) and it memorises persons (on forget persons, models trained with them are more confident
than models trained without them). The same comparison on held-out test persons, which no model
saw, is the control: an AUC far from 0.5 there would reveal a shortcut (an identity pixel, say),
not memorisation.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from harness.config import Config, resolve_device
from harness.data.loaders import class_weights
from harness.data.task import Task, build_task
from harness.learn.evaluation import evaluate
from harness.learn.models import ModelSpec
from harness.learn.training import init_model, train_model


def describe_task(cfg: Config, *, measure: bool = True, n_models: int = 3) -> dict:
    task = build_task(cfg.task)
    report = {"task": task.description, "fingerprint": task.fingerprint, **counts(task)}
    if measure:
        report["measurements"] = measure_memorisation(task, cfg, n_models=n_models)
    return report


def counts(task: Task) -> dict:
    m = task.manifest
    per_split = task.counts()
    balance = {
        s: np.bincount(task.arrays(s)["age_group"], minlength=task.num_classes).tolist() for s in per_split
    }
    return {
        "images": int(len(m)),
        "persons": int(m["person_id"].nunique()),
        "image_shape": list(task.images.shape[1:]),
        "num_classes": task.num_classes,
        "split_images": {s: c["images"] for s, c in per_split.items()},
        "split_persons": {s: c["persons"] for s, c in per_split.items()},
        "class_balance": balance,
        "age_range": [int(m["age"].min()), int(m["age"].max())],
    }


def measure_memorisation(task: Task, cfg: Config, *, n_models: int = 3) -> dict:
    """Train `n_models` originals (on train) and as many retrained models (on retain) and compare."""
    device = resolve_device(cfg.device)
    train, retain = task.arrays("train"), task.arrays("retain")
    forget, test = task.arrays("forget"), task.arrays("test")
    weights = class_weights(train["age_group"], task.num_classes)
    results: dict[str, list] = {"original": [], "retrained": []}
    for kind, data in (("original", train), ("retrained", retain)):
        for i in range(n_models):
            seed = cfg.seed + 101 * i + (0 if kind == "original" else 50)
            model = init_model(ModelSpec(cfg.model.name, task.num_classes, int(task.images.shape[1])), seed)
            train_model(model, data, cfg.recipe, class_weights=weights, seed=seed, device=device)
            forget_ev = evaluate(model, forget=forget, retain=retain, test=test, device=device)
            control_ev = evaluate(model, forget=test, retain=retain, test=test, device=device)
            results[kind].append((forget_ev, control_ev))
    orig, retr = results["original"], results["retrained"]

    def auc(pick) -> float:
        pos = np.concatenate([pick(r) for r in orig])
        neg = np.concatenate([pick(r) for r in retr])
        return float(roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]))

    return {
        "n_models": n_models,
        "recipe": f"{cfg.model.name}, {cfg.recipe.epochs} epochs, {cfg.recipe.optimizer} lr {cfg.recipe.lr}",
        "test_acc_original": float(np.mean([r[0].test_acc for r in orig])),
        "test_acc_retrained": float(np.mean([r[0].test_acc for r in retr])),
        "chance": 1.0 / task.num_classes,
        "forget_acc_original": float(np.mean([r[0].forget_acc for r in orig])),
        "forget_acc_retrained": float(np.mean([r[0].forget_acc for r in retr])),
        "forget_auc": auc(lambda r: r[0].forget_confs),
        "control_auc": auc(lambda r: r[1].forget_confs),
    }


def format_description(report: dict) -> str:
    lines = [f"task        {report['task']}", f"images      {report['images']} of {report['persons']} persons, shape {report['image_shape']}"]
    for split, n in report["split_images"].items():
        lines.append(f"  {split:<7}   {n:>6} images, {report['split_persons'][split]:>5} persons, classes {report['class_balance'][split]}")
    m = report.get("measurements")
    if m:
        lines += [
            f"generalises test accuracy {m['test_acc_original']:.3f} original / {m['test_acc_retrained']:.3f} retrained (chance {m['chance']:.2f})",
            f"memorises   forget accuracy {m['forget_acc_original']:.3f} original / {m['forget_acc_retrained']:.3f} retrained",
            f"            original-vs-retrained confidence AUC: forget persons {m['forget_auc']:.3f}, held-out persons (control) {m['control_auc']:.3f}",
            f"            ({m['n_models']} models each; {m['recipe']})",
        ]
    return "\n".join(lines)
