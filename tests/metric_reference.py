"""The organizers' epsilon algorithm written out straightforwardly, one example at a time.

This is the released scoring code's algorithm (google-deepmind/unlearning_evaluation,
`metric.py`) in its own style: for each forget example the candidate thresholds are tiled
against the models and every comparison is materialised, rates are float32 `torch.mean`s,
and the per-threshold epsilons are computed with numpy in float32 as there. It runs on the
CPU. It is slow (hundreds of thousands of thresholds per example) and exists to check
`harness.scoring.metric` against: tests compare the two, and `scripts/bench_metric.py` times both.

It carries the same defined behaviour for the released code's defects as `harness.scoring.metric`
(see that module's docstring): both distributions constant -> 0 when equal, 50 when not;
no surviving threshold -> 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DELTA = 1e-5
EPSILON_CAP = 50.0
NUM_THRESHOLDS_PER_UNIT = 100
BUFFER = 2.0
_CHUNK = 4096  # thresholds tiled at a time (the released code tiles all ~160,000 at once)


def _double_threshold_rates(pos: torch.Tensor, neg: torch.Tensor):
    """tpr, fnr, fpr, tnr for the rule 'inside [left, right] -> the peakier distribution'."""
    pos_diff = pos.max() - pos.min()
    neg_diff = neg.max() - neg.min()
    width = neg_diff if pos_diff > neg_diff else pos_diff
    if pos_diff >= neg_diff:  # 'positive' is the peakier distribution
        pos, neg = neg, pos
    lo = (pos.min() + width - BUFFER).numpy()
    hi = (pos.max() + BUFFER).numpy()
    n_right = int(np.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT))
    right = np.linspace(lo, hi, num=n_right)
    width = width.numpy()
    n_left = int(np.ceil(2 * BUFFER * NUM_THRESHOLDS_PER_UNIT))
    left = np.concatenate(
        [np.linspace(r - width - BUFFER, r - width + BUFFER, num=n_left) for r in right]
    )
    right = np.repeat(right, n_left)
    n_models = pos.shape[0]
    rates = []
    for first in range(0, left.size, _CHUNK):  # the released code tiles all at once
        chunk = slice(first, first + _CHUNK)
        left_t = torch.from_numpy(np.tile(left[None, chunk], (n_models, 1)))
        right_t = torch.from_numpy(np.tile(right[None, chunk], (n_models, 1)))
        pos_t = torch.tile(pos[:, None], (1, left_t.shape[1]))
        neg_t = torch.tile(neg[:, None], (1, left_t.shape[1]))
        pos_in = torch.logical_and(left_t <= pos_t, pos_t <= right_t)
        neg_in = torch.logical_and(left_t <= neg_t, neg_t <= right_t)
        rates.append((
            torch.mean(pos_in.to(torch.float32), 0),
            torch.mean(torch.logical_not(pos_in).to(torch.float32), 0),
            torch.mean(neg_in.to(torch.float32), 0),
            torch.mean(torch.logical_not(neg_in).to(torch.float32), 0),
        ))
    return tuple(torch.cat([r[k] for r in rates]) for k in range(4))


def _single_threshold_rates(pos: torch.Tensor, neg: torch.Tensor):
    """tpr, fnr, fpr, tnr for the rule 'at or above the threshold -> positive'."""
    both = torch.cat([pos, neg])
    lo, hi = both.min(), both.max()
    n = int(torch.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT))
    thresholds = torch.linspace(lo, hi, n, dtype=torch.float32)
    n_models = pos.shape[0]
    thr = torch.tile(thresholds[None, :], (n_models, 1))
    pos_t = torch.tile(pos[:, None], (1, n))
    neg_t = torch.tile(neg[:, None], (1, n))
    tpr = torch.mean((pos_t >= thr).to(torch.float32), 0)
    fpr = torch.mean((neg_t >= thr).to(torch.float32), 0)
    tnr = torch.mean((neg_t < thr).to(torch.float32), 0)
    fnr = torch.mean((pos_t < thr).to(torch.float32), 0)
    return tpr, fnr, fpr, tnr


def example_epsilon(pos: np.ndarray, neg: np.ndarray, *, delta: float = DELTA) -> float:
    """Epsilon of one forget example, before the final clip; pos has the larger median."""
    pos_diff = np.max(pos) - np.min(pos)
    neg_diff = np.max(neg) - np.min(neg)
    if pos_diff == 0 and neg_diff == 0:  # released code: 0/0 -> nan ratio, then a crash
        return 0.0 if pos[0] == neg[0] else EPSILON_CAP
    largest = pos_diff if pos_diff > neg_diff else neg_diff
    smallest = neg_diff if pos_diff > neg_diff else pos_diff
    if smallest / largest < 0.01:
        return EPSILON_CAP
    pos_t, neg_t = torch.from_numpy(pos), torch.from_numpy(neg)
    rates = [_double_threshold_rates(pos_t, neg_t), _single_threshold_rates(pos_t, neg_t)]
    tpr, fnr, fpr, tnr = (torch.cat([r[k] for r in rates]) for k in range(4))
    n = tpr.shape[0]
    thr_eps = torch.zeros(n)
    both_zero = (fpr + fnr == 0) & (tpr + tnr == 2)
    thr_eps = torch.where(both_zero, torch.full((n,), math.inf), thr_eps)
    one_zero = (thr_eps == 0) & (fpr * fnr == 0)
    thr_eps = torch.where(one_zero, torch.full((n,), math.nan), thr_eps)
    fpr_np, fnr_np = fpr.numpy(), fnr.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        candidates = np.clip(
            np.fmax(
                np.log(1 - delta - fpr_np) - np.log(fnr_np),
                np.log(1 - delta - fnr_np) - np.log(fpr_np),
            ),
            0,
            None,
        )
    thr_eps = torch.where(thr_eps == 0, torch.from_numpy(candidates), thr_eps).numpy()
    kept = thr_eps[~np.isnan(thr_eps)]
    if kept.size == 0:  # released code: `assert thr_eps` fails; no evidence -> 0
        return 0.0
    return float(np.max(kept))


def epsilons(unlearned_confs: np.ndarray, retrained_confs: np.ndarray) -> np.ndarray:
    """Per-example epsilon [S] for [N, S] confidences, clipped to [0, 50]."""
    unlearned = np.asarray(unlearned_confs, dtype=np.float64)
    retrained = np.asarray(retrained_confs, dtype=np.float64)
    retrain_is_positive = np.median(retrained, axis=0) > np.median(unlearned, axis=0)
    pos = np.where(retrain_is_positive, retrained, unlearned)
    neg = np.where(retrain_is_positive, unlearned, retrained)
    eps = [example_epsilon(np.ascontiguousarray(pos[:, i]), np.ascontiguousarray(neg[:, i]))
           for i in range(pos.shape[1])]
    return np.clip(np.asarray(eps, dtype=np.float64), 0, EPSILON_CAP)
