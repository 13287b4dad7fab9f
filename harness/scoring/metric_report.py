"""`unlearn metric`: score two saved confidence matrices and say what the number means.

Loads [N models, S forget examples] .npy files, computes the official forgetting quality F
(`harness.scoring.metric`), a bootstrap interval over forget examples, a summary of the per-example
epsilons and where they fall in the scoring buckets, and a calibration: what a perfect
unlearner scores at this N (retrained against retrained models: about 0.18-0.20, not 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.scoring import metric
from harness.scoring.metric import MetricError

CI_LEVEL = 0.95
N_BOOT = 1000


def _load(role: str, path: str | Path) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise MetricError(
            f"{role} file {str(p)!r} does not exist; pass a .npy file holding a float array "
            f"[N models, S forget examples] (np.save)."
        )
    try:
        x = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise MetricError(f"{role} file {str(p)!r} is not a readable .npy array ({err}); save it with np.save.") from None
    if isinstance(x, np.lib.npyio.NpzFile):
        names = ", ".join(x.files)
        x.close()
        raise MetricError(
            f"{role} file {str(p)!r} is an .npz archive (arrays: {names}); pass one .npy array "
            f"[N models, S forget examples], e.g. np.save(path, archive[name])."
        )
    if x.ndim != 2 or x.dtype.kind != "f":
        raise MetricError(
            f"{role} file {str(p)!r} must hold a 2-D float array [N models, S forget examples]; "
            f"got a {x.ndim}-D {x.dtype} array of shape {x.shape}."
        )
    return x


def _nearest_perfect(n: int) -> tuple[int, float]:
    known = min(metric.PERFECT_UNLEARNER_F, key=lambda k: abs(np.log(k) - np.log(n)))
    return known, metric.PERFECT_UNLEARNER_F[known]


def metric_report(unlearned_path: str | Path, retrained_path: str | Path, *,
                  test_losses_path: str | Path | None = None) -> dict:
    """Everything `unlearn metric` prints, as a JSON-ready dict."""
    unlearned = _load("unlearned", unlearned_path)
    retrained = _load("retrained", retrained_path)
    test_losses = None if test_losses_path is None else _load("test losses", test_losses_path)
    if unlearned.shape != retrained.shape:
        raise MetricError(
            f"unlearned {unlearned.shape} and retrained {retrained.shape} must have the same "
            f"shape [N models, S forget examples]: as many retrained models as unlearned runs, "
            f"on the same forget examples in the same order."
        )
    eps = metric.epsilons(unlearned, retrained)
    n, s = unlearned.shape
    points = metric.example_points(eps, n)
    f = float(points.mean())
    low, high = metric.bootstrap_ci_from_points(points, n_boot=N_BOOT, level=CI_LEVEL)
    edges, values = metric.bucket_points(n)
    slot = np.searchsorted(edges, eps, side="right")
    counts = np.bincount(slot, minlength=edges.size + 1)
    buckets = [
        {"from": float(e - metric.BUCKET_SIZE), "to": float(e), "points": float(v), "count": int(c)}
        for e, v, c in zip(edges, values, counts)
    ]
    buckets.append({"from": float(edges[-1]) if edges.size else 0.0, "to": None, "points": 0.0,
                    "count": int(counts[-1])})

    half = n // 2
    floor = metric.noise_floor(retrained[:half], retrained[half:2 * half]) if half >= 2 else None
    known_n, known_f = _nearest_perfect(n)
    text = (
        f"a perfect unlearner scores about 0.18-0.20 at any N, not 1 "
        f"({known_f:.3f} at N = {known_n}, retrained vs retrained Gaussian confidences)"
    )
    if floor is not None:
        text += f"; half of these retrained models against the other half score {floor:.3f} (N = {half})"
    text += f"; this F is {f / known_f:.2f} x that ceiling"
    return {
        "unlearned": str(unlearned_path),
        "retrained": str(retrained_path),
        "n_models": n,
        "n_examples": s,
        "forget_quality": f,
        "higher_is_better": metric.HIGHER_IS_BETTER,
        "ci": [low, high],
        "ci_level": CI_LEVEL,
        "epsilon": {
            "mean": float(eps.mean()),
            "median": float(np.median(eps)),
            "p90": float(np.quantile(eps, 0.9)),
            "max": float(eps.max()),
            "at_cap": int(np.sum(eps >= metric.EPSILON_CAP)),
            "zero": int(np.sum(eps == 0)),
        },
        "buckets": buckets,
        "noise_floor": floor,
        "noise_floor_n": half if floor is not None else None,
        "perfect_unlearner_f": known_f,
        "calibration": text,
        "lenses": report_lenses(unlearned, retrained, test_losses=test_losses),
    }


def report_lenses(unlearned: np.ndarray, retrained: np.ndarray, *, test_losses: np.ndarray | None = None) -> dict:
    """Every registered lens, without its per-example arrays and curves (the store keeps those), and
    with the value its board column shows and what that reads when nothing differs."""
    from harness.scoring import lenses

    values = lenses.compute_lenses(lenses.LensInputs(unlearned=unlearned, retrained=retrained, test_losses=test_losses))
    out = {}
    for name, value in values.items():
        lens = lenses.LENSES.get(name)
        shown = {k: v for k, v in value.items() if k not in ("per_example", "roc", "per_run")}
        shown.update(title=lens.title, column=lens.column, no_difference=lens.no_difference)
        out[name] = shown
    return out


def _lens_line(value: dict) -> str:
    if "unavailable" in value:
        return f"{value['title']}: unavailable ({value['unavailable']})"
    v = value.get(value["column"])
    return f"{value['title']} {v:.4f} (no difference: {value['no_difference']})"


def format_metric_report(d: dict) -> str:
    """The report as a few aligned lines of text."""
    e = d["epsilon"]
    shown = [b for b in d["buckets"] if b["count"]]
    buckets = "  ".join(
        f"[{b['from']:g},{'inf' if b['to'] is None else format(b['to'], 'g')}): {b['count']}"
        for b in shown
    )
    return "\n".join([
        f"forgetting quality F = {d['forget_quality']:.4f}  ({d['ci_level']:.0%} CI "
        f"{d['ci'][0]:.4f} - {d['ci'][1]:.4f}; higher is better; N = {d['n_models']} models, "
        f"S = {d['n_examples']} forget examples)",
        f"epsilon     median {e['median']:.3f}, mean {e['mean']:.3f}, 90th percentile "
        f"{e['p90']:.3f}, max {e['max']:.3f}; {e['at_cap']} at the cap of "
        f"{metric.EPSILON_CAP:g}, {e['zero']} at 0",
        f"buckets     {buckets or 'none (N = 2 has no scoring buckets)'}",
        f"calibration {d['calibration']}",
        *(f"{'lenses' if i == 0 else '':<11} {_lens_line(v)}" for i, v in enumerate(d["lenses"].values())),
    ])
