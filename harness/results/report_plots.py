"""PNG plots for the leaderboard site: arrays in, one file out, nothing recomputed.

Uses matplotlib's object API (`Figure` with the Agg canvas), never pyplot, so it needs no display,
keeps no global state and does not change the backend of a program that imports it. Each plot is
a `*_figure` builder (what tests measure) and a function that saves it (what the site calls).

Readability rules every plot keeps (tests/test_site_render.py measures them): no text smaller
than `MIN_TEXT_PT` at `DPI`, legends outside the plotting area, and the scatter's labels placed
so that none overlaps another label, a marker or the axes' edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox

from harness.errors import HarnessError
from harness.timefmt import seconds_text

DPI = 100
MIN_TEXT_PT = 9  # 12.5 px at DPI: the smallest text a plot may draw
UNLEARNED = "#1f77b4"
RETRAINED = "#ff7f0e"
EPSILON_CAP = 50.0  # harness.scoring.metric.EPSILON_CAP (not imported: the metric loads torch)
CAP_EXPLAINED = (
    "An epsilon of 50 is the organizers' cap: the metric gives it to a forget example whose unlearned "
    "and retrained outputs are perfectly separated (or one set barely varies beside the other), and "
    "such an example earns 0 points."
)
_LEGEND = {"fontsize": MIN_TEXT_PT, "loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0}


def _figure(size: tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas: text can be measured on it before it is saved."""
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write a builder's figure as a PNG, as laid out (builders lay out their own figures)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


# -- epsilon -------------------------------------------------------------------------------------

def epsilon_figure(eps: np.ndarray, points: np.ndarray | None, *, cap: float = EPSILON_CAP) -> Figure:
    """Per-example epsilon (lower: closer to retraining) and, when stored, the points it earned.

    Examples at the cap get their own bar and y scale beside the histogram, so that the others
    keep their resolution (one example at 50 would otherwise squash every other bar against 0 on
    the x axis, and many at 50 would squash them on a shared y axis).
    """
    eps = np.asarray(eps, dtype=np.float64)
    eps = eps[np.isfinite(eps)]
    below, at_cap = eps[eps < cap], int(np.count_nonzero(eps >= cap))
    fig = _figure((10, 3.4) if points is not None else (6.5, 3.4))
    grid = fig.add_gridspec(1, 3 if points is not None else 2, width_ratios=[4, 1, 4][: 3 if points is not None else 2])
    main = fig.add_subplot(grid[0, 0], label="epsilon")
    side = fig.add_subplot(grid[0, 1], label="epsilon at cap")  # its own y scale: many at the cap squash no bar
    if below.size:
        main.hist(below, bins=min(40, max(5, below.size // 5)), color=UNLEARNED, edgecolor="white")
        main.set_title(f"below the cap: {below.size} of {eps.size}, median {np.median(below):.2f}", fontsize=MIN_TEXT_PT + 1)
    else:
        main.text(0.5, 0.5, "no example below the cap", ha="center", va="center", transform=main.transAxes, fontsize=MIN_TEXT_PT)
        main.set_title(f"below the cap: 0 of {eps.size}", fontsize=MIN_TEXT_PT + 1)
    main.set_xlabel("per-example epsilon")
    main.set_ylabel("forget examples")
    main.yaxis.set_major_locator(MaxNLocator(integer=True))
    side.bar([f"eps = {cap:g}"], [at_cap], color=RETRAINED, width=0.6)
    side.set_xlim(-0.8, 0.8)
    side.set_title(f"at the cap: {at_cap}", fontsize=MIN_TEXT_PT + 1)
    side.set_xlabel("perfectly separated\n(the organizers' cap,\n0 points)", fontsize=MIN_TEXT_PT)
    side.yaxis.set_major_locator(MaxNLocator(integer=True))
    if points is not None:
        ax = fig.add_subplot(grid[0, 2], label="points")
        values, counts = np.unique(np.asarray(points, dtype=np.float64), return_counts=True)
        ax.bar([f"{v:.3g}" for v in values], counts, color=UNLEARNED)
        ax.set_xlabel("points per example")
        ax.set_title(f"points (mean {np.mean(points):.3f})", fontsize=MIN_TEXT_PT + 1)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def epsilon_histogram(eps: np.ndarray, points: np.ndarray | None, path: str | Path, *, cap: float = EPSILON_CAP) -> Path:
    return save(epsilon_figure(eps, points, cap=cap), path)


# -- confidences, accuracies, run times ---------------------------------------------------------

def confidence_figure(unlearned: np.ndarray, retrained: np.ndarray, eps: np.ndarray, *, k: int = 2) -> Figure:
    """Unlearned vs retrained confidences of the k most and k least forgotten examples (by epsilon)."""
    order = np.argsort(np.asarray(eps), kind="stable")
    k = min(k, order.size)
    picks = [("most forgotten", j) for j in order[:k]] + [("least forgotten", j) for j in order[::-1][:k]]
    fig = _figure((3.2 * len(picks) + 1.6, 3.0))
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    for ax, (label, j) in zip(axes, picks):
        u, r = unlearned[:, j], retrained[:, j]
        lo, hi = np.nanmin([u.min(), r.min()]), np.nanmax([u.max(), r.max()])
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
        ax.hist(r, bins=bins, alpha=0.6, color=RETRAINED, histtype="stepfilled", label=f"retrained ({r.size})")
        ax.hist(u, bins=bins, alpha=0.6, color=UNLEARNED, histtype="stepfilled", label=f"unlearned ({u.size})")
        ax.set_title(f"{label}: #{j}, eps {eps[j]:.2f}", fontsize=MIN_TEXT_PT + 1)
        ax.set_xlabel("logit-scaled confidence")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].legend(**_LEGEND)
    fig.tight_layout()
    return fig


def confidence_distributions(unlearned: np.ndarray, retrained: np.ndarray, eps: np.ndarray, path: str | Path, *, k: int = 2) -> Path:
    return save(confidence_figure(unlearned, retrained, eps, k=k), path)


def accuracy_figure(unlearned: dict[str, np.ndarray], retrained: dict[str, np.ndarray]) -> Figure:
    """Retain/test/forget accuracy of each unlearned run beside each retrained model."""
    keys = ("retain", "test", "forget")
    fig = _figure((7, 3.2))
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
    ax.legend(handles=[Patch(color=UNLEARNED, alpha=0.6, label="unlearned runs"),
                       Patch(color=RETRAINED, alpha=0.6, label="retrained models")], **_LEGEND)
    fig.tight_layout()
    return fig


def accuracy_comparison(unlearned: dict[str, np.ndarray], retrained: dict[str, np.ndarray], path: str | Path) -> Path:
    return save(accuracy_figure(unlearned, retrained), path)


# -- lenses --------------------------------------------------------------------------------------

def lens_examples_figure(per_example: dict[str, Sequence[float]], eps: Sequence[float], *, cap: float = EPSILON_CAP) -> Figure:
    """Each per-example lens (title -> [S] values) against the official epsilon of the same
    examples: where the lenses and F agree on which examples are told apart, and where not."""
    eps = np.asarray(eps, dtype=np.float64)
    names = list(per_example)
    fig = _figure((3.0 * max(1, len(names)) + 1.8, 3.0))
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    at_cap = eps >= cap
    for ax, name in zip(axes, names):
        values = np.asarray(per_example[name], dtype=np.float64)
        if values.shape != eps.shape:
            raise HarnessError(f"lens {name!r} has {values.size} per-example values for {eps.size} epsilons; rescore the entry")
        ax.scatter(eps[~at_cap], values[~at_cap], s=14, color=UNLEARNED, alpha=0.7, label="forget examples")
        if at_cap.any():
            ax.scatter(np.full(int(at_cap.sum()), cap), values[at_cap], s=14, color=RETRAINED, marker="x",
                       label=f"at the cap ({cap:g})")
        ax.set_title(name, fontsize=MIN_TEXT_PT + 1)
        ax.set_xlabel("official epsilon")
    axes[0].set_ylabel("lens value")
    handles = [Line2D([], [], marker="o", linestyle="", color=UNLEARNED, label="forget examples")]
    if at_cap.any():
        handles.append(Line2D([], [], marker="x", linestyle="", color=RETRAINED, label=f"at the cap ({cap:g})"))
    axes[-1].legend(handles=handles, **_LEGEND)
    fig.tight_layout()
    return fig


def lens_examples(per_example: dict[str, Sequence[float]], eps: Sequence[float], path: str | Path) -> Path:
    return save(lens_examples_figure(per_example, eps), path)


def attack_roc_figure(fpr: Sequence[float], tpr: Sequence[float], *, auc: float) -> Figure:
    """The LiRA-style attack's ROC on log axes (what matters is the TPR at a low FPR), with chance."""
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    fig = _figure((6.5, 3.4))
    ax = fig.subplots()
    keep = (fpr > 0) & (tpr > 0)
    floor = min(1e-3, float(fpr[keep].min())) if keep.any() else 1e-3
    ax.plot(fpr[keep], tpr[keep], color=UNLEARNED, label=f"attack (AUC {auc:.3f})")
    ax.plot([floor, 1], [floor, 1], color="#888888", linestyle="--", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1.05)
    ax.set_xlabel("false positive rate (retrained called unlearned)")
    ax.set_ylabel("true positive rate")
    ax.legend(**_LEGEND)
    fig.tight_layout()
    return fig


def attack_roc(fpr: Sequence[float], tpr: Sequence[float], path: str | Path, *, auc: float) -> Path:
    return save(attack_roc_figure(fpr, tpr, auc=auc), path)


def run_times_figure(run_index: Sequence[int], seconds: Sequence[float | None], statuses: Sequence[str], cap_s: float | None) -> Figure:
    """Each run's wall time, coloured by status, against the time cap."""
    fig = _figure((7, 3.2))
    ax = fig.subplots()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    x = np.asarray(run_index, dtype=np.float64)
    y = np.array([np.nan if s is None else s for s in seconds], dtype=np.float64)
    for status in sorted(set(statuses)):
        mask = np.array([s == status for s in statuses])
        ax.scatter(x[mask], y[mask], s=20, label=status)
    if cap_s is not None:
        ax.axhline(cap_s, color="red", linestyle="--", label=f"cap {seconds_text(cap_s)}")
    ax.set_xlabel("run")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.legend(**_LEGEND)
    fig.tight_layout()
    return fig


def run_times(
    run_index: Sequence[int], seconds: Sequence[float | None], statuses: Sequence[str], cap_s: float | None, path: str | Path
) -> Path:
    return save(run_times_figure(run_index, seconds, statuses, cap_s), path)


# -- forgetting vs utility -----------------------------------------------------------------------

def forgetting_vs_utility_figure(
    labels: Sequence[str], forget_quality: Sequence[float], utility: Sequence[float], calibration: Sequence[bool]
) -> Figure:
    """Every scored submission: forgetting quality F against utility (retain ratio x test ratio).

    Each point is labelled with its team beside it, covering no other label or marker (a leader
    line joins a label set further out; first so that no leader line crosses a label, then
    allowing that). When some label fits nowhere, the points are numbered instead, and a key
    below the plot names them.
    """
    f = np.asarray(forget_quality, dtype=np.float64)
    u = np.asarray(utility, dtype=np.float64)
    cal = np.asarray(calibration, dtype=bool)
    shown = np.isfinite(f) & np.isfinite(u)
    names = [str(label) for label, ok in zip(labels, shown) if ok]
    u, f, cal = u[shown], f[shown], cal[shown]
    for lines_may_cross in (False, True):
        fig, ax = _scatter_axes(u, f, cal, key=None)
        if _place_labels(ax, u, f, names, lines_may_cross=lines_may_cross, force=False):
            return fig
    fig, ax = _scatter_axes(u, f, cal, key=names)
    _place_labels(ax, u, f, [str(i + 1) for i in range(len(names))], lines_may_cross=True, force=True)
    return fig


def forgetting_vs_utility(
    labels: Sequence[str], forget_quality: Sequence[float], utility: Sequence[float], calibration: Sequence[bool], path: str | Path
) -> Path:
    return save(forgetting_vs_utility_figure(labels, forget_quality, utility, calibration), path)


_MARKER_PX = 9  # half the side of the box a label keeps clear around each marker (the star's size)
_PAD_PX = 2
_KEY_COLUMNS = 3


def _scatter_axes(u, f, cal, *, key: list[str] | None) -> tuple[Figure, object]:
    """The scatter without labels, laid out once: labels are placed into this fixed geometry."""
    rows = math.ceil((len(key) + 2) / _KEY_COLUMNS) if key else 0
    fig = _figure((8, 5.2 + 0.22 * (rows + 1)))
    ax = fig.subplots()
    ax.scatter(u[~cal], f[~cal], color=UNLEARNED, s=36, label="submissions", zorder=3)
    if cal.any():
        ax.scatter(u[cal], f[cal], color=RETRAINED, marker="*", s=150, label="calibration (retrain)", zorder=3)
    ax.margins(x=0.25, y=0.2)  # room for labels beside the outermost points
    ax.set_xlabel("utility: retain ratio x test ratio")
    ax.set_ylabel("forgetting quality F")
    if key:  # the markers' legend and the key below the plot, in one legend that the layout makes room for
        handles, names = ax.get_legend_handles_labels()
        blank = [Line2D([], [], linestyle="none")] * len(key)
        ax.legend([*handles, *blank], [*names, *(f"{i + 1}: {name}" for i, name in enumerate(key))], loc="upper center",
                  bbox_to_anchor=(0.5, -0.12), ncols=_KEY_COLUMNS, fontsize=MIN_TEXT_PT, frameon=False)
    else:
        ax.legend(**_LEGEND)
    fig.tight_layout()
    fig.canvas.draw()  # fixes the axes' position and the data-to-pixel transform
    return fig, ax


def _place_labels(ax, xs: np.ndarray, ys: np.ndarray, labels: list[str], *, lines_may_cross: bool, force: bool) -> bool:
    """Annotate each point with its label at the nearest free spot, in the figure's fixed layout.

    Candidates ring each point at growing distances; a spot is free when the label's box stays
    inside the axes and overlaps no label placed before and no marker (and, unless
    `lines_may_cross`, no leader line crosses a label). Returns False, drawing nothing, when some
    label finds no free spot, unless `force`, which takes the spot with the fewest clashes instead.
    """
    renderer = ax.figure.canvas.get_renderer()
    area = ax.get_window_extent(renderer).padded(-_PAD_PX)
    pixels = ax.transData.transform(np.column_stack([xs, ys])) if len(labels) else np.zeros((0, 2))
    markers = [Bbox.from_bounds(x - _MARKER_PX, y - _MARKER_PX, 2 * _MARKER_PX, 2 * _MARKER_PX) for x, y in pixels]
    boxes: list[Bbox] = []
    lines: list[np.ndarray] = []
    spots = []
    for (px, py), label in zip(pixels, labels):
        probe = ax.text(0, 0, label, fontsize=MIN_TEXT_PT)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        w, h = extent.width, extent.height
        best = None
        for radius, angle in _candidates():
            dx, dy = radius * math.cos(angle), radius * math.sin(angle)
            ha = "left" if dx > 0.35 * radius else "right" if dx < -0.35 * radius else "center"
            va = "bottom" if dy > 0.35 * radius else "top" if dy < -0.35 * radius else "center"
            x0 = px + dx - {"left": 0.0, "center": w / 2, "right": w}[ha]
            y0 = py + dy - {"bottom": 0.0, "center": h / 2, "top": h}[va]
            box = Bbox.from_bounds(x0, y0, w, h)
            if not (area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1):
                continue
            line = _leader(px, py, box) if radius > 2 * _MARKER_PX else np.zeros((0, 2))
            clashes = sum(box.padded(_PAD_PX).overlaps(other) for other in boxes + markers)
            if not lines_may_cross:
                clashes += sum(_crosses(line, other) for other in boxes)  # its leader line through a label
                clashes += sum(_crosses(other, box) for other in lines)  # a leader line drawn through it
            if best is None or clashes < best[0]:
                best = (clashes, radius, dx, dy, ha, va, box, line)
            if clashes == 0:
                break
        if best is None or (best[0] and not force):
            if not force:
                return False
            best = (0, 0.0, _MARKER_PX + 3.0, 0.0, "left", "center", Bbox.from_bounds(px + _MARKER_PX, py - h / 2, w, h), np.zeros((0, 2)))
        boxes.append(best[6])
        lines.append(best[7])
        spots.append(best)
    to_points = 72.0 / ax.figure.dpi
    for (px, py), label, (_, radius, dx, dy, ha, va, _, _) in zip(pixels, labels, spots):
        leader = {"arrowstyle": "-", "color": "0.45", "lw": 0.8, "shrinkA": 1, "shrinkB": 4} if radius > 2 * _MARKER_PX else None
        xy = ax.transData.inverted().transform((px, py))
        ax.annotate(label, xy=xy, xytext=(dx * to_points, dy * to_points), textcoords="offset points",
                    ha=ha, va=va, fontsize=MIN_TEXT_PT, arrowprops=leader, zorder=4)
    return True


def _leader(px: float, py: float, box: Bbox) -> np.ndarray:
    """Points along the leader line from a marker's edge to the nearest point of its label's box."""
    end = np.array([min(max(px, box.x0), box.x1), min(max(py, box.y0), box.y1)])
    start = np.array([px, py])
    gap = np.linalg.norm(end - start)
    if gap <= _MARKER_PX:
        return np.zeros((0, 2))
    t = np.linspace(_MARKER_PX / gap, 1.0, 24)[:-1, None]
    return start + t * (end - start)


def _crosses(line: np.ndarray, box: Bbox) -> bool:
    inner = box.padded(_PAD_PX)
    return bool(line.size and np.any((inner.x0 < line[:, 0]) & (line[:, 0] < inner.x1) & (inner.y0 < line[:, 1]) & (line[:, 1] < inner.y1)))


def _candidates():
    """(radius px, angle) around a point, nearest first; right of the point before left, above before below."""
    angles = [0.0, math.pi, math.pi / 2, -math.pi / 2, math.pi / 4, 3 * math.pi / 4, -math.pi / 4, -3 * math.pi / 4]
    for radius in (_MARKER_PX + 3, 22, 34, 48, 64, 82, 104, 130, 160):
        steps = angles if radius < 40 else [i * math.pi / 8 for i in range(16)]
        for angle in steps:
            yield radius, angle
