"""PNG plots for the leaderboard site: arrays in, one file out, nothing recomputed.

Uses matplotlib's object API (`Figure` with the Agg canvas), never pyplot, so it needs no display,
keeps no global state and does not change the backend of a program that imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 80
UNLEARNED = "#1f77b4"
RETRAINED = "#ff7f0e"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    return path


def epsilon_histogram(eps: np.ndarray, points: np.ndarray | None, path: str | Path) -> Path:
    """Per-example epsilon (lower: closer to retraining) and, when stored, the points it earned."""
    eps = np.asarray(eps, dtype=np.float64)
    fig = Figure(figsize=(8, 3) if points is not None else (4.5, 3))
    axes = fig.subplots(1, 2 if points is not None else 1, squeeze=False)[0]
    finite = eps[np.isfinite(eps)]
    axes[0].hist(finite, bins=min(40, max(5, finite.size // 5)), color=UNLEARNED, histtype="stepfilled")
    axes[0].set_xlabel("per-example epsilon")
    axes[0].set_ylabel("forget examples")
    axes[0].set_title(f"epsilon (median {np.median(finite):.2f})" if finite.size else "epsilon")
    if points is not None:
        values, counts = np.unique(np.asarray(points, dtype=np.float64), return_counts=True)
        labels = [f"{v:.3g}" for v in values]
        axes[1].bar(labels, counts, color=UNLEARNED)
        axes[1].set_xlabel("points per example")
        axes[1].set_title(f"points (mean {np.mean(points):.3f})")
    return _save(fig, path)


def confidence_distributions(
    unlearned: np.ndarray, retrained: np.ndarray, eps: np.ndarray, path: str | Path, *, k: int = 2
) -> Path:
    """Unlearned vs retrained confidences of the k most and k least forgotten examples (by epsilon)."""
    order = np.argsort(np.asarray(eps), kind="stable")
    k = min(k, order.size)
    picks = [("most forgotten", j) for j in order[:k]] + [("least forgotten", j) for j in order[::-1][:k]]
    fig = Figure(figsize=(3.2 * len(picks), 2.8))
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    for ax, (label, j) in zip(axes, picks):
        u, r = unlearned[:, j], retrained[:, j]
        lo, hi = np.nanmin([u.min(), r.min()]), np.nanmax([u.max(), r.max()])
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
        ax.hist(r, bins=bins, alpha=0.6, color=RETRAINED, histtype="stepfilled", label=f"retrained ({r.size})")
        ax.hist(u, bins=bins, alpha=0.6, color=UNLEARNED, histtype="stepfilled", label=f"unlearned ({u.size})")
        ax.set_title(f"{label}: #{j}, eps {eps[j]:.2f}", fontsize=9)
        ax.set_xlabel("logit-scaled confidence")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def accuracy_comparison(unlearned: dict[str, np.ndarray], retrained: dict[str, np.ndarray], path: str | Path) -> Path:
    """Retain/test/forget accuracy of each unlearned run beside each retrained model."""
    keys = ("retain", "test", "forget")
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    data, positions, colors = [], [], []
    for i, key in enumerate(keys):
        for offset, (source, color) in zip((-0.2, 0.2), ((unlearned, UNLEARNED), (retrained, RETRAINED))):
            values = np.asarray(source.get(key, []), dtype=np.float64)
            values = values[np.isfinite(values)]
            data.append(values if values.size else np.array([np.nan]))
            positions.append(i + offset)
            colors.append(color)
    parts = ax.boxplot(data, positions=positions, widths=0.35, patch_artist=True, manage_ticks=False)
    for patch, color in zip(parts["boxes"], colors):
        patch.set_facecolor(color)
        patch.set_alpha(0.6)
    ax.set_xticks(range(len(keys)), keys)
    ax.set_ylabel("accuracy")
    ax.set_title("unlearned (blue) vs retrained (orange)")
    return _save(fig, path)


def run_times(
    run_index: Sequence[int], seconds: Sequence[float | None], statuses: Sequence[str], cap_s: float | None, path: str | Path
) -> Path:
    """Each run's wall time, coloured by status, against the time cap."""
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    x = np.asarray(run_index, dtype=np.float64)
    y = np.array([np.nan if s is None else s for s in seconds], dtype=np.float64)
    for status in sorted(set(statuses)):
        mask = np.array([s == status for s in statuses])
        ax.scatter(x[mask], y[mask], s=12, label=status)
    if cap_s is not None:
        ax.axhline(cap_s, color="red", linestyle="--", label=f"cap {cap_s:.1f} s")
    ax.set_xlabel("run")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    return _save(fig, path)


def forgetting_vs_utility(
    labels: Sequence[str], forget_quality: Sequence[float], utility: Sequence[float], calibration: Sequence[bool], path: str | Path
) -> Path:
    """Every scored submission: forgetting quality F against utility (retain ratio x test ratio)."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    f = np.asarray(forget_quality, dtype=np.float64)
    u = np.asarray(utility, dtype=np.float64)
    cal = np.asarray(calibration, dtype=bool)
    ax.scatter(u[~cal], f[~cal], color=UNLEARNED, label="submissions")
    if cal.any():
        ax.scatter(u[cal], f[cal], color=RETRAINED, marker="*", s=150, label="calibration (retrain)")
    for label, x, y in zip(labels, u, f):
        if np.isfinite(x) and np.isfinite(y):
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("utility: retain ratio x test ratio")
    ax.set_ylabel("forgetting quality F")
    ax.legend(fontsize=7)
    return _save(fig, path)
