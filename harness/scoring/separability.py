"""Can two scores be told apart at this N? The seed-to-seed spread of a score, and what it implies.

A score rests on N unlearned runs and N retrained references, each a draw of seeds; drawing
other seeds moves it. That spread is measured, once per task and N, by repeated scoring of
retrained models against retrained models: a pool of P exchangeable retrained models (the
references: every one trained on retain from its own seed) is split at random into two disjoint
sets of m, one scored as the runs and the other as the references, `repeats` times. For a
statistic that compares two samples, the spread over random splits of one pool is the spread
over fresh draws of both (the permutation argument: under exchangeability a split is a draw),
so no model is trained for it. It is a perfect unlearner's spread (runs that vary as retraining
varies); an entry far from retraining spreads less, so the test is conservative near the top of
the board, where it matters.

m is at most P // 2, so at N = P the spread is read off a power law sd(m) = scale * m^-exponent
fitted over m = 4, 8, ..., P // 2 (least squares in log-log, the exponent clipped to [0, 1]; 0,
a flat spread, when only one size is measured). Measured, it is nearly flat: the metric's
buckets widen with N (up to ln(N - 1)), so chance separations cost a perfect unlearner about
as much at any N, and the spread of F is that of a mean over the S forget examples (about
0.005-0.008 at S = 240, m = 4..32). Two entries are told apart when their difference exceeds `z`
(2) standard deviations of a difference of two independent scores, z * sqrt(2) * sd(N); scored
against the same references their difference spreads less, so this errs towards "not told
apart". The runs needed are the smallest N where it would: ((z * sqrt(2) * scale) / |d|) ^
(1 / exponent), rounded up; None when no N up to the metric's MAX_MODELS would (a flat spread:
more runs do not help, more forget examples would). The score's own bias at small N (small N
flatters) moves with N as well; the count is the seeds' part only.

Pure functions: numpy in, arrays and plain dicts out.
"""

from __future__ import annotations

import math

import numpy as np

from harness.scoring import metric

Z = 2.0  # standard deviations of a difference that count as told apart (about 95%, two-sided)
MIN_SIZE = 4  # below 4 models a side the metric has no bucket beyond the first
REPEATS = 64
EXPONENT_RANGE = (0.0, 1.0)
SPREAD_VERSION = 1  # bump when the measurement changes: stored spreads are measured again


def split_scores(confs, retain_acc, test_acc, *, size: int, repeats: int = REPEATS, seed: int = 0) -> np.ndarray:
    """Final scores (F x RA ratio x TA ratio) of `repeats` random splits of a pool of retrained
    models [P, S] into two disjoint sets of `size`, the first scored against the second; float64 [repeats]."""
    confs = np.asarray(confs, dtype=np.float64)
    retain_acc, test_acc = np.asarray(retain_acc, dtype=np.float64), np.asarray(test_acc, dtype=np.float64)
    pool = confs.shape[0]
    if confs.ndim != 2 or retain_acc.shape != (pool,) or test_acc.shape != (pool,):
        raise metric.MetricError(f"confs must be [P, S] with one retain and test accuracy per model; got shapes "
                                 f"{confs.shape}, {retain_acc.shape}, {test_acc.shape}.")
    if size < 2 or 2 * size > pool:
        raise metric.MetricError(f"size must be at least 2 and at most half the pool ({pool} models); got {size}.")
    if repeats < 2:
        raise metric.MetricError(f"repeats must be at least 2 to measure a spread; got {repeats}.")
    rng = np.random.default_rng(seed)
    out = np.empty(repeats, dtype=np.float64)
    for k in range(repeats):
        order = rng.permutation(pool)
        a, b = order[:size], order[size:2 * size]
        f = float(metric.example_points(metric.epsilons(confs[a], confs[b]), size).mean())
        ratios = metric.utility_ratios(float(retain_acc[a].mean()), float(retain_acc[b].mean()),
                                       float(test_acc[a].mean()), float(test_acc[b].mean()))
        out[k] = f * ratios[0] * ratios[1]
    return out


def spread_sizes(pool: int) -> list[int]:
    """The sizes measured from a pool: 4, 8, 16, ... below P // 2, and P // 2 itself."""
    top = pool // 2
    if top < MIN_SIZE:
        return []
    sizes = [m for m in (MIN_SIZE * 2 ** k for k in range(32)) if m < top]
    return [*sizes, top]


def fit_spread(sizes, sds) -> tuple[float, float]:
    """(scale, exponent) of sd(m) = scale * m^-exponent through the measured (size, sd) pairs."""
    m, s = np.asarray(sizes, dtype=np.float64), np.asarray(sds, dtype=np.float64)
    keep = s > 0
    m, s = m[keep], s[keep]
    if m.size == 0:
        return 0.0, 0.0
    if m.size == 1:
        exponent = 0.0
    else:
        slope = np.polyfit(np.log(m), np.log(s), 1)[0]
        exponent = float(np.clip(-slope, *EXPONENT_RANGE))
    scale = float(np.exp(np.mean(np.log(s) + exponent * np.log(m))))
    return scale, exponent


def spread_at(n: int, scale: float, exponent: float) -> float:
    """The fitted seed-to-seed standard deviation of one score at N = n."""
    return float(scale * float(n) ** -exponent)


def measure_spread(confs, retain_acc, test_acc, *, n: int, repeats: int = REPEATS, seed: int = 0) -> dict:
    """The spread record stored with the references: per size the scores' mean and sd, the fit,
    and the sd at N = n; `spread` None when the pool has fewer than 8 models."""
    pool = int(np.shape(confs)[0])
    sizes = spread_sizes(pool)
    scores = [split_scores(confs, retain_acc, test_acc, size=m, repeats=repeats, seed=seed + m) for m in sizes]
    sds = [float(np.std(x, ddof=1)) for x in scores]
    scale, exponent = fit_spread(sizes, sds) if sizes else (None, None)
    return {
        "version": SPREAD_VERSION,
        "n": int(n),
        "pool": pool,
        "repeats": int(repeats),
        "seed": int(seed),
        "sizes": sizes,
        "means": [float(np.mean(x)) for x in scores],
        "sds": sds,
        "scale": scale,
        "exponent": exponent,
        "spread": None if scale is None else spread_at(n, scale, exponent),
    }


def runs_needed(diff: float, scale: float, exponent: float, *, z: float = Z) -> int | None:
    """The smallest N at which a score difference `diff` exceeds z * sqrt(2) * sd(N); None when
    no N up to metric.MAX_MODELS does (no difference, or a spread that does not shrink enough)."""
    d = abs(float(diff))
    if d == 0:
        return None
    threshold = z * math.sqrt(2.0) * scale
    if threshold < d:
        return 2
    if exponent <= 0:
        return None
    needed = math.ceil((threshold / d) ** (1.0 / exponent))
    return max(2, needed) if needed <= metric.MAX_MODELS else None


def compare(score: float, other: float, spread: dict, *, n: int, z: float = Z) -> dict:
    """Whether `score` and `other` (two entries' final scores at N = n) are told apart by the
    stored `spread` (measure_spread's record): the difference, its threshold, the verdict and the
    runs needed; `told_apart` None when no spread was measured."""
    diff = float(score) - float(other)
    if spread is None or spread.get("scale") is None:
        return {"diff": diff, "threshold": None, "told_apart": None, "runs_needed": None}
    sd = spread_at(n, spread["scale"], spread["exponent"])
    threshold = z * math.sqrt(2.0) * sd
    return {"diff": diff, "threshold": threshold, "told_apart": bool(abs(diff) > threshold),
            "runs_needed": runs_needed(diff, spread["scale"], spread["exponent"], z=z)}


def separations(scores, *, baseline: float | None, spread: dict | None, n: int, z: float = Z) -> list[dict]:
    """For scores in board order (best first, None for an unscored row): each one's comparison
    with the baseline's score and with the scored entry above it (None where there is none)."""
    out, above = [], None
    for score in scores:
        if score is None:
            out.append({"vs_baseline": None, "vs_above": None})
            continue
        out.append({
            "vs_baseline": None if baseline is None else compare(score, baseline, spread, n=n, z=z),
            "vs_above": None if above is None else compare(score, above, spread, n=n, z=z),
        })
        above = score
    return out
