"""The organizers' forgetting-quality metric, exact and fast; plus calibration.

This reproduces the NeurIPS 2023 Machine Unlearning Challenge's released scoring code
(google-deepmind/unlearning_evaluation: `metric.py` and the final score in `main.py`) number
for number; `tests/metric_reference.py` is the same algorithm written out straightforwardly.

Per forget example, with N unlearned and N retrained confidences:
1. The distribution with the larger median is 'positive' (retrained only when its median is
   strictly larger).
2. If smallest/largest of the two ranges (max - min) is below 0.01, epsilon = 50.
3. Two families of decision rules give (fpr, fnr) pairs. Double threshold: 'inside [l, r]'
   means the peakier distribution (smaller range; the originally negative one on a tie);
   r runs over linspace(min + width - 2, max + 2, ceil(100 * span)) of the peakier one
   (width = its range) and, for each r, l over linspace(r - width - 2, r - width + 2, 400),
   all float64. Single threshold: 'at or above t' means positive, t over
   torch.linspace(min, max, ceil(100 * (max - min))) of both distributions in float32.
   Rates are float32 means over the N models, i.e. float32(count) / float32(N).
4. A threshold with fpr = fnr = 0 gives inf; one with exactly one of them 0 is discarded; the
   rest give max(log(1 - delta - fpr) - log(fnr), log(1 - delta - fnr) - log(fpr)) in float32,
   clipped below at 0 (a term that is nan, from a rate of 1, is ignored; both nan: discarded).
5. Epsilon is the largest surviving value, clipped to [0, 50]; delta = 1e-5.
Then points: buckets of width 0.5 from 0 up to ceil(ln(N - 1)), 1 point for the first and half
as many for each next one; an epsilon at or beyond the last bucket's end scores 0 (so at N = 2
every example scores 0). F is the mean over examples, and the final score is
F x (RA_U / RA_R) x (TA_U / TA_R) with mean accuracies over the models.

The released code's defects are defined here instead of copied:
- `assert thr_eps` on an array fails whenever more than one threshold survives (it was run as
  `thr_eps.size > 0`, which is how the reference vectors were made); here no surviving
  threshold at all gives epsilon 0 (no evidence of a difference) instead of an error.
- both distributions constant: ranges 0/0 give a nan ratio that passes the test, and then every
  threshold is discarded (a crash) when the constants are equal; here: equal -> 0, different
  -> 50 (what the released code gives when its thresholds separate the two constants).
  One constant distribution and one not is the ratio test's case (ratio 0 -> 50), as released.
- `compute_logit_scaled_confidence` subtracts the row maximum from the caller's logits in
  place; `logit_scaled_confidence` here leaves its input untouched.

Speed without changing a number: each distribution's confidences are sorted once, so a rate
is a count of values below a threshold (equal to the comparison sum; counted through fine
buckets, with a binary search only for thresholds that share a bucket with a value); the
epsilon of every (fpr count, fnr count) pair is tabulated once per N with the same float32
operations; and the ~160,000 double thresholds of an example are visited in blocks along l
(32, then 4, then one by one). Along l (fixed r) the fpr count only falls and the fnr count
only rises, so a suffix maximum of the table at (fpr at a block's end, fnr at its start)
bounds the whole block, and blocks that cannot beat the best value found so far are skipped.
Equal samples give 0 at once (every rule then has fpr = 1 - fnr). Examples are processed one
at a time, so memory beyond the inputs stays small. Inputs must be finite, |conf| <= 1e4
(logit-scaled confidences lie within about +-104), and N <= 4096 (tables grow as N^2).
Rates equal float32(count) / float32(N), which is what torch.mean gives on the CPU (where the
reference vectors were made); the single-family thresholds are torch.linspace's own float32
values (dtype pinned, not taken from torch's default).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from harness.errors import HarnessError

HIGHER_IS_BETTER = True  # for the forgetting quality F and the final score alike
DELTA = 1e-5
EPSILON_CAP = 50.0
BUCKET_SIZE = 0.5
NUM_THRESHOLDS_PER_UNIT = 100
BUFFER = 2.0
NUM_LEFT_THRESHOLDS = math.ceil(2 * BUFFER * NUM_THRESHOLDS_PER_UNIT)  # 400
MAX_MODELS = 4096  # per-N epsilon tables hold (N+1)^2 float32 values each
MAX_ABS_CONFIDENCE = 1e4  # logit-scaled confidences lie within about +-104

# F of a perfect unlearner (retrained models against other retrained models) by N, measured
# with an exact port on Gaussian confidences, 300 examples (shared/reference/README.md).
PERFECT_UNLEARNER_F = {16: 0.176, 32: 0.179, 64: 0.196, 128: 0.188, 512: 0.185}

_BUCKETS_PER_VALUE = 16  # fine enough that few queries need a binary search
_BLOCKS = (32, 4)  # block lengths along l, coarse to fine, for skipping double thresholds


class MetricError(HarnessError):
    """Inputs to the metric are unusable (shape, count, or non-finite values)."""


# ---------------------------------------------------------------------------- confidences
def logit_scaled_confidence(logits, targets) -> np.ndarray:
    """log(p_correct) - log(1 - p_correct) per row, computed as the released code does.

    Floating logits keep their precision (float32 model outputs: exp in float32, then the rest
    in float64, as released); other dtypes become float32. The caller's array is not modified.
    """
    x = np.array(logits, copy=True)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2:
        raise MetricError(
            f"logits must be a 2-D array [n examples, C classes] with C >= 2; got shape "
            f"{x.shape}. Pass the model's raw outputs for a batch."
        )
    if x.dtype.kind != "f":
        if x.dtype.kind not in "iub":
            raise MetricError(f"logits must be numeric; got dtype {x.dtype}.")
        x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x)))
        raise MetricError(
            f"logits contain {bad} NaN/inf value(s); confidences need finite logits: check the "
            f"model (diverged weights or overflow)."
        )
    t = np.asarray(targets)
    if t.ndim != 1 or t.shape[0] != x.shape[0] or t.dtype.kind not in "iu":
        raise MetricError(
            f"targets must be a 1-D integer array with one label per logits row ({x.shape[0]}); "
            f"got dtype {t.dtype} and shape {t.shape}."
        )
    if t.size and (t.min() < 0 or t.max() >= x.shape[1]):
        raise MetricError(
            f"targets must lie in [0, {x.shape[1] - 1}] (the logits' classes); got values from "
            f"{t.min()} to {t.max()}."
        )
    rows = np.arange(x.shape[0])
    x -= np.max(x, axis=1, keepdims=True)
    probs = np.array(np.exp(x), dtype=np.float64)
    probs /= np.sum(probs, axis=1, keepdims=True)
    prob_correct = probs[rows, t]
    probs[rows, t] = 0
    prob_wrong = np.sum(probs, axis=1)
    return np.log(prob_correct + 1e-45) - np.log(prob_wrong + 1e-45)


# ---------------------------------------------------------------------------- validation
def _as_confs(name: str, confs) -> np.ndarray:
    x = np.asarray(confs)
    if x.dtype.kind not in "fiu":
        raise MetricError(f"{name} must be a numeric array; got dtype {x.dtype}.")
    if x.ndim != 2:
        raise MetricError(
            f"{name} must be a 2-D array [N models, S forget examples]; got {x.ndim}-D with "
            f"shape {x.shape}. Stack one row of forget-set confidences per model."
        )
    n, s = x.shape
    if n < 2:
        raise MetricError(
            f"{name} has {n} model(s) (rows); the metric compares distributions over models "
            f"and needs at least 2. Score more runs."
        )
    if s == 0:
        raise MetricError(f"{name} has no forget examples (shape {x.shape}); the forget set is empty.")
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        raise MetricError(
            f"{name} contains {int((~finite).sum())} NaN/inf value(s) (first at model {i}, "
            f"example {j}, value {x[i, j]}); confidences must be finite: check the model's logits."
        )
    big = np.abs(x).max()
    if big > MAX_ABS_CONFIDENCE:
        raise MetricError(
            f"{name} has a value of magnitude {big:.3g}; logit-scaled confidences lie within "
            f"about +-104 (at most {MAX_ABS_CONFIDENCE:g} is accepted). Pass the output of "
            f"logit_scaled_confidence, not logits or probabilities."
        )
    return x


def _check_pair(unlearned_confs, retrained_confs) -> tuple[np.ndarray, np.ndarray]:
    u = _as_confs("unlearned_confs", unlearned_confs)
    r = _as_confs("retrained_confs", retrained_confs)
    if u.shape != r.shape:
        raise MetricError(
            f"unlearned_confs and retrained_confs must have the same shape [N models, S forget "
            f"examples]; got {u.shape} and {r.shape}. Use as many retrained models as unlearned "
            f"runs, on the same forget examples in the same order."
        )
    return u, r


# ---------------------------------------------------------------------------- epsilon tables
@functools.lru_cache(maxsize=2)
def _tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat [(n+1)^2] float32 tables indexed by fpr_count * (n+1) + fnr_count.

    E: the threshold's epsilon (inf when both rates are 0, -inf when it is discarded), with
    the released code's float32 operations. U[a, b] = max E[a', b'] over a' >= a, b' >= b.
    """
    rate = np.arange(n + 1, dtype=np.float32) / np.float32(n)  # == torch.mean of 0/1 float32
    return _tables_from_rates(rate)


def _tables_from_rates(rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_tables` for the rate each count k of n stands for (`rate[k]`, in its own dtype): the
    count's fraction here, a confidence bound on it in harness.scoring.lenses. The rules go by
    counts: a threshold with exactly one count of 0 is discarded, both 0 is inf."""
    n = rate.shape[0] - 1
    eps = np.empty((n + 1, n + 1), dtype=rate.dtype)
    rows = max(1, 2**20 // (n + 1))
    for first in range(0, n + 1, rows):  # in row blocks: temporaries stay small at large N
        fpr = rate[first:first + rows, None]
        fnr = rate[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            block = np.clip(
                np.fmax(
                    np.log(1 - DELTA - fpr) - np.log(fnr),
                    np.log(1 - DELTA - fnr) - np.log(fpr),
                ),
                0,
                None,
            )
        fpr_zero = (np.arange(first, first + fpr.shape[0]) == 0)[:, None]  # a count of 0 (its rate is 0 here)
        fnr_zero = (np.arange(n + 1) == 0)[None, :]
        block[np.isnan(block) | (fpr_zero != fnr_zero)] = -np.inf
        eps[first:first + rows] = block
    eps[0, 0] = np.inf
    upper = eps[::-1, ::-1].copy()
    np.maximum.accumulate(upper, axis=0, out=upper)
    np.maximum.accumulate(upper, axis=1, out=upper)
    upper = np.ascontiguousarray(upper[::-1, ::-1]).ravel()
    eps = eps.ravel()
    eps.setflags(write=False)
    upper.setflags(write=False)
    return eps, upper


# ---------------------------------------------------------------------------- one example
class _Below:
    """Counts of a's and b's values strictly below query points, exactly, without a binary
    search per query: values fall into fine buckets by a monotone function (the same for
    data and queries), a query in a bucket holding no data value is answered from cumulative
    bucket counts, and only queries in occupied buckets are searched for."""

    def __init__(self, a: np.ndarray, b: np.ndarray, lo: float, hi: float):
        self.a, self.b = a, b
        self.lo = lo
        self.top = _BUCKETS_PER_VALUE * (a.size + b.size) - 1
        self.scale = (self.top + 1) / (hi - lo)
        ha = np.bincount(self._bucket(a), minlength=self.top + 1)
        hb = np.bincount(self._bucket(b), minlength=self.top + 1)
        self.occupied = (ha + hb) > 0
        self.a_below = np.cumsum(ha) - ha
        self.b_below = np.cumsum(hb) - hb

    def swapped(self) -> _Below:
        """The same counts with the roles of a and b exchanged."""
        other = object.__new__(_Below)
        other.__dict__.update(self.__dict__)
        other.a, other.b = self.b, self.a
        other.a_below, other.b_below = self.b_below, self.a_below
        return other

    def _bucket(self, x: np.ndarray) -> np.ndarray:
        t = np.subtract(x, self.lo)
        t *= self.scale
        np.maximum(t, 0, out=t)
        np.minimum(t, self.top, out=t)
        return t.astype(np.intp)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(#a < x, #b < x) elementwise, shaped like x."""
        k = self._bucket(x)
        a_below, b_below = self.a_below[k], self.b_below[k]
        fix = self.occupied[k]
        if fix.any():
            x_fix = x[fix]
            a_below[fix] = self.a.searchsorted(x_fix, side="left")
            b_below[fix] = self.b.searchsorted(x_fix, side="left")
        return a_below, b_below


def _single_family_best(pos: np.ndarray, neg: np.ndarray, below: _Below,
                        table: np.ndarray) -> float:
    """Best epsilon of 'at or above t -> positive' over torch.linspace float32 thresholds."""
    lo = min(pos[0], neg[0])
    hi = max(pos[-1], neg[-1])
    count = int(math.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT))
    if count <= 0:
        return -np.inf
    thr = torch.linspace(float(lo), float(hi), count, dtype=torch.float32).numpy()
    pos_below, neg_below = below(thr.astype(np.float64))
    n = pos.shape[0]
    fpr_count = n - neg_below  # neg >= t
    return float(table[fpr_count * (n + 1) + pos_below].max())


def _double_family_best(peaky: np.ndarray, other: np.ndarray, width: float, below: _Below,
                        eps_table: np.ndarray, upper: np.ndarray, best: float) -> float:
    """Best epsilon of 'inside [l, r] -> the peakier distribution', skipping hopeless blocks.

    `below` counts (peaky, other) values below a point. Row j is a right threshold r_j; along
    a row the left index i runs over np.linspace(r_j - width - 2, r_j - width + 2, 400).
    """
    n = peaky.shape[0]
    lo = (peaky[0] + width) - BUFFER
    hi = peaky[-1] + BUFFER
    right = np.linspace(lo, hi, num=int(np.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT)))
    starts = (right - width) - BUFFER
    stops = (right - width) + BUFFER
    # np.linspace(starts, stops, 400) row by row is i * step + start, and stop at the end.
    step = (stops - starts) / (NUM_LEFT_THRESHOLDS - 1)
    peaky_right = np.searchsorted(peaky, right, side="right")  # peaky <= r
    other_right = np.searchsorted(other, right, side="right")
    last = NUM_LEFT_THRESHOLDS - 1

    def parts(left: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray]:
        """(fpr count x (n+1), fnr count) of the thresholds (left, right[rows])."""
        peaky_below, other_below = below(left)
        fpr_part = np.maximum(other_right[rows] - other_below, 0) * (n + 1)
        fnr_part = n - np.maximum(peaky_right[rows] - peaky_below, 0)
        return fpr_part, fnr_part

    # Level 0: every row cut at multiples of the first block length, and at its last index.
    size = _BLOCKS[0]
    edges = np.append(np.arange(0, last, size), last)
    left = edges[:, None].astype(np.float64) * step + starts
    left[-1] = stops
    fpr_part, fnr_part = parts(left, slice(None))
    best = max(best, float(eps_table[fpr_part + fnr_part].max()))
    # Along a row the fpr count only falls and the fnr count only rises, so the table's
    # suffix maximum at (fpr at a block's end, fnr at its start) bounds the whole block.
    keep = upper[fpr_part[1:] + fnr_part[:-1]] > best
    block, row = np.nonzero(keep)
    start, end = edges[block], edges[block + 1]
    start_fnr, end_fpr = fnr_part[block, row], fpr_part[block + 1, row]
    for finer in _BLOCKS[1:] + (1,):
        if row.size == 0:
            return best
        cut = np.minimum(start[:, None] + finer * np.arange(1, -(-size // finer) + 1), end[:, None])
        inner = cut < end[:, None]
        i = cut[inner]
        rows = np.broadcast_to(row[:, None], cut.shape)[inner]
        left = np.where(i == last, stops[rows], i * step[rows] + starts[rows])
        fpr_in, fnr_in = parts(left, rows)
        best = max(best, float(eps_table[fpr_in + fnr_in].max(initial=-np.inf)))
        if finer == 1:
            return best
        cut_fpr = np.broadcast_to(end_fpr[:, None], cut.shape).copy()
        cut_fnr = np.zeros_like(cut)
        cut_fpr[inner], cut_fnr[inner] = fpr_in, fnr_in
        sub_start = np.concatenate([start[:, None], cut[:, :-1]], axis=1).ravel()
        sub_fnr = np.concatenate([start_fnr[:, None], cut_fnr[:, :-1]], axis=1).ravel()
        sub_end, sub_fpr = cut.ravel(), cut_fpr.ravel()
        keep = (sub_end - sub_start > 1) & (upper[sub_fpr + sub_fnr] > best)
        row = np.repeat(row, cut.shape[1])[keep]
        start, end, start_fnr, end_fpr = sub_start[keep], sub_end[keep], sub_fnr[keep], sub_fpr[keep]
        size = finer
    return best


def _example_epsilon(pos: np.ndarray, neg: np.ndarray, eps_table: np.ndarray,
                     upper: np.ndarray, *, equal_is_zero: bool = True) -> float:
    """Epsilon of one example from sorted positive / negative confidences (unclipped).

    `equal_is_zero` is the shortcut for equal samples, valid for the official table only (a
    table of bounded rates, harness.scoring.lenses, can give equal samples an epsilon above 0).
    """
    pos_diff = pos[-1] - pos[0]
    neg_diff = neg[-1] - neg[0]
    if pos_diff == 0 and neg_diff == 0:
        return 0.0 if pos[0] == neg[0] else EPSILON_CAP
    if equal_is_zero and np.array_equal(pos, neg):
        # Equal samples give every rule fpr = 1 - fnr, so every surviving threshold's
        # epsilon is below 0 before the clip (the float32 error is ~1e-7, delta is 1e-5).
        return 0.0
    largest = pos_diff if pos_diff > neg_diff else neg_diff
    smallest = neg_diff if pos_diff > neg_diff else pos_diff
    if smallest / largest < 0.01:
        return EPSILON_CAP
    peaky, other, width = (neg, pos, neg_diff) if pos_diff >= neg_diff else (pos, neg, pos_diff)
    lo = min(pos[0], neg[0], peaky[0] - 2 * BUFFER)
    hi = max(pos[-1], neg[-1], peaky[-1] + BUFFER)
    below = _Below(pos, neg, lo, hi)
    best = _single_family_best(pos, neg, below, eps_table)
    best = _double_family_best(peaky, other, width, below.swapped() if peaky is neg else below,
                               eps_table, upper, best)
    return 0.0 if best == -np.inf else best


# ---------------------------------------------------------------------------- public API
def epsilons(unlearned_confs, retrained_confs, *, chunk: int = 256) -> np.ndarray:
    """Per-example epsilon, float64 [S], from [N, S] confidences; clipped to [0, 50]."""
    u, r = _check_pair(unlearned_confs, retrained_confs)
    n, s = u.shape
    if n > MAX_MODELS:
        raise MetricError(
            f"{n} models is more than the {MAX_MODELS} supported: the metric's epsilon tables "
            f"grow as N^2 (the competition used 512); score a subset of the runs."
        )
    return _epsilons_from_tables(u, r, _tables(n), chunk=chunk, equal_is_zero=True)


def _epsilons_from_tables(u: np.ndarray, r: np.ndarray, tables: tuple[np.ndarray, np.ndarray], *,
                          chunk: int = 256, equal_is_zero: bool) -> np.ndarray:
    """The per-example epsilons of checked [N, S] pairs with an epsilon table by (fpr, fnr) count."""
    eps_table, upper = tables
    n, s = u.shape
    out = np.empty(s, dtype=np.float64)
    for lo in range(0, s, chunk):
        cols = slice(lo, min(lo + chunk, s))
        uc, rc = u[:, cols], r[:, cols]
        retrain_is_positive = np.median(rc, axis=0) > np.median(uc, axis=0)
        us = np.ascontiguousarray(np.sort(uc, axis=0).T)
        rs = np.ascontiguousarray(np.sort(rc, axis=0).T)
        for k, positive in enumerate(retrain_is_positive):
            pos, neg = (rs[k], us[k]) if positive else (us[k], rs[k])
            out[lo + k] = _example_epsilon(pos, neg, eps_table, upper, equal_is_zero=equal_is_zero)
    return np.clip(out, 0, EPSILON_CAP)


def bucket_points(n_models: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket upper edges, points) for N models: edges 0.5, 1.0, ... <= ceil(ln(N - 1))."""
    if n_models < 2:
        raise MetricError(f"n_models must be at least 2; got {n_models}.")
    max_epsilon = np.ceil(np.log(n_models - 1))
    edges, points = [], []
    start, value = 0.0, 1.0
    while start + BUCKET_SIZE <= max_epsilon:
        edges.append(start + BUCKET_SIZE)
        points.append(value)
        value /= 2
        start += BUCKET_SIZE
    return np.asarray(edges, dtype=np.float64), np.asarray(points, dtype=np.float64)


def example_points(eps, n_models: int) -> np.ndarray:
    """Points per example: those of the first bucket whose end exceeds epsilon, else 0."""
    e = np.asarray(eps, dtype=np.float64)
    if e.ndim != 1 or np.isnan(e).any():
        raise MetricError(f"eps must be a 1-D array without NaN; got shape {e.shape}.")
    edges, points = bucket_points(n_models)
    idx = np.searchsorted(edges, e, side="right")  # first edge > e
    return np.append(points, 0.0)[idx]


def forget_quality(unlearned_confs, retrained_confs) -> float:
    """F: mean points over forget examples (1 best, 0 worst); a perfect unlearner gets ~0.19."""
    eps = epsilons(unlearned_confs, retrained_confs)
    return float(example_points(eps, np.shape(unlearned_confs)[0]).mean())


def _mean_accuracy(name: str, value) -> float:
    a = np.asarray(value, dtype=np.float64)
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise MetricError(f"{name} must be finite, non-negative accuracies; got {value!r}.")
    return float(np.mean(a))


def final_score(forget_quality: float, *, retain_acc_unlearned, retain_acc_retrained,
                test_acc_unlearned, test_acc_retrained) -> float:
    """F x (RA_U / RA_R) x (TA_U / TA_R); accuracies may be per-model arrays (their mean)."""
    if not np.isfinite(forget_quality) or not 0 <= forget_quality <= 1:
        raise MetricError(f"forget_quality must lie in [0, 1]; got {forget_quality!r}.")
    ra_u = _mean_accuracy("retain_acc_unlearned", retain_acc_unlearned)
    ra_r = _mean_accuracy("retain_acc_retrained", retain_acc_retrained)
    ta_u = _mean_accuracy("test_acc_unlearned", test_acc_unlearned)
    ta_r = _mean_accuracy("test_acc_retrained", test_acc_retrained)
    retain_ratio, test_ratio = utility_ratios(ra_u, ra_r, ta_u, ta_r)
    return float(forget_quality * (retain_ratio * test_ratio))


def utility_ratios(retain_unlearned: float, retain_retrained: float, test_unlearned: float,
                   test_retrained: float) -> tuple[float, float]:
    """RA_U / RA_R and TA_U / TA_R of mean accuracies. Over a zero reference accuracy a ratio is 0
    (so the score is 0), not an error: a competition scores every entry, and a degenerate task's
    scores say so on the board rather than stopping it."""
    return (retain_unlearned / retain_retrained if retain_retrained > 0 else 0.0,
            test_unlearned / test_retrained if test_retrained > 0 else 0.0)


def noise_floor(retrained_a, retrained_b) -> float:
    """F of one set of retrained models scored against another: what a perfect unlearner
    can expect at this N (about 0.18-0.20 at any N, not 1)."""
    return forget_quality(retrained_a, retrained_b)


def bootstrap_ci_from_points(points, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                             accuracy_factor: float = 1.0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(points) x accuracy_factor over examples."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise MetricError(f"points must be a non-empty 1-D array; got shape {p.shape}.")
    if n_boot < 1:
        raise MetricError(f"n_boot must be at least 1; got {n_boot}.")
    if not 0 < level < 1:
        raise MetricError(f"level must lie strictly between 0 and 1 (e.g. 0.95); got {level}.")
    rng = np.random.default_rng(seed)
    per_chunk = max(1, 4_000_000 // p.size)
    means = np.concatenate([
        p[rng.integers(0, p.size, size=(min(per_chunk, n_boot - k), p.size))].mean(axis=1)
        for k in range(0, n_boot, per_chunk)
    ])
    low, high = np.quantile(means * accuracy_factor, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_ci(unlearned_confs, retrained_confs, *, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0, accuracy_factor: float = 1.0) -> tuple[float, float]:
    """Bootstrap interval over forget examples for F (x accuracy_factor: the final score).

    Epsilons are computed once; the per-example points are resampled.
    """
    eps = epsilons(unlearned_confs, retrained_confs)
    points = example_points(eps, np.shape(unlearned_confs)[0])
    return bootstrap_ci_from_points(points, n_boot=n_boot, level=level, seed=seed,
                                    accuracy_factor=accuracy_factor)
