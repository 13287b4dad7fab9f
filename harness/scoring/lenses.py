"""Evaluation lenses: other ways to read the same runs, beside the official F, never inside it.

The organizers' findings paper (Triantafillou et al. 2024, "Are we making progress in
unlearning?") reads the per-example comparison of N unlearned against N retrained models through
other lenses (Kolmogorov-Smirnov, Kullback-Leibler); later benchmarks standardised KLoM (Georgiev
et al. 2024, "Attribute-to-delete", appendix E.1) and a per-example U-LiRA; participants know
the starting kit's simple membership-inference attack. Each lens here is a pure function of the
metric's own inputs: [N models, S forget examples] logit-scaled confidences c = log p - log(1 - p)
of the true class (`metric.logit_scaled_confidence`), the unlearned runs' and the retrained
references', plus, for the simple MIA, each run's test-set losses.

Two identities let every lens read what the store already keeps:
- KLoM's margin, logit of the true class minus the log-sum-exp of the other logits, is the
  logit-scaled confidence (log p - log(1 - p) = z_y - logsumexp(z_j, j != y)), up to float32
  rounding; so KLoM reads the stored confidences. (The hinge margin, z_y minus the largest other
  logit, is a different number; the benchmark's code uses log-sum-exp.)
- the cross-entropy loss of the true class is softplus(-c) = -log sigmoid(c), so the forget-set
  losses the simple MIA needs are the forget confidences, transformed.

`LENSES` (a `harness.registry.Registry`) is the one source of lens names: the store's `lenses`
extra, `unlearn metric --json`, the leaderboards' columns and the submission pages' plots list
whatever is registered. A new lens is one function and its `@register_lens(...)` line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special, stats

from harness.errors import HarnessError
from harness.registry import Registry
from harness.scoring import metric

STD_FLOOR = 1e-3  # confidence units; the metric's threshold grid is 0.01 wide, nothing finer is told apart
KLOM_BINS = 20  # Georgiev et al.'s reference code (data-unlearning-bench, src/eval.py): 20 bins,
KLOM_EPS = 1e-5  # a 1e-5 floor on the oracle's bin where the unlearned one has mass,
KLOM_CLIP = 100.0  # margins clipped to [-100, 100]
ATTACK_FPRS = (0.01, 0.001)
MIA_SPLITS = 10  # the starting kit's StratifiedShuffleSplit(n_splits=10, random_state=0)
CP_CONFIDENCE = 0.95
_KLOM_CHUNK = 512  # columns per block in klom


class LensError(HarnessError):
    """A lens's inputs are unusable (shape, count, or values)."""


def _pair(unlearned, retrained) -> tuple[np.ndarray, np.ndarray]:
    """The metric's checks: finite float64 [N, S] arrays of one shape, N >= 2."""
    return metric._check_pair(unlearned, retrained)


# ---------------------------------------------------------------------------- KS
def ks_two_sample(unlearned, retrained) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample Kolmogorov-Smirnov statistic and two-sided exact p-value per example.

    D = sup_x |F_U(x) - F_R(x)| over the N unlearned and N retrained confidences of an example;
    the p-value is P(D >= d) for two samples of one distribution, exact for equal sizes
    (Gnedenko-Korolyuk: 2 sum_j (-1)^(j+1) C(2N, N - j k) / C(2N, N) with d = k / N), what
    scipy.stats.ks_2samp computes (method 'exact', which its 'auto' picks for N <= 10000), for
    every example at once. Identical distributions: D is about 1.23 / sqrt(N) on average (0.31 at
    N = 16) and p is uniform-ish (P(p <= a) <= a); a shift moves D towards 1 and p towards 0.
    Source: Triantafillou et al. 2024 (KS as a lens on the per-example test).
    """
    u, r = _pair(unlearned, retrained)
    n = u.shape[0]
    pooled = np.concatenate([u, r], axis=0)
    order = np.argsort(pooled, axis=0, kind="stable")
    values = np.take_along_axis(pooled, order, axis=0)
    from_u = (order < n).astype(np.int64)
    gap = np.abs(2 * np.cumsum(from_u, axis=0) - np.arange(1, 2 * n + 1)[:, None])  # n (F_U - F_R) at each value
    last_of_value = np.ones_like(values, dtype=bool)
    last_of_value[:-1] = values[1:] != values[:-1]  # the ECDFs are compared after every copy of a value
    k = np.max(np.where(last_of_value, gap, 0), axis=0)
    return k / n, _ks_exact_pvalues(n)[k]


def _ks_exact_pvalues(n: int) -> np.ndarray:
    """P(D >= k / n) for k = 0..n, two equal samples of size n (two-sided, exact)."""
    k = np.arange(1, n + 1)
    j = np.arange(1, n + 1)[:, None]
    m = n - j * k[None, :]
    log_c = special.gammaln(2 * n + 1) - special.gammaln(m + 1) - special.gammaln(2 * n - m + 1)
    log_c0 = special.gammaln(2 * n + 1) - 2 * special.gammaln(n + 1)
    terms = np.where(m >= 0, np.exp(np.where(m >= 0, log_c, 0) - log_c0), 0.0)
    sign = np.where(j % 2 == 1, 1.0, -1.0)
    p = 2 * np.sum(sign * terms, axis=0)
    return np.concatenate([[1.0], np.clip(p, 0.0, 1.0)])


# ---------------------------------------------------------------------------- KL
def gaussian_kl(unlearned, retrained) -> np.ndarray:
    """KL(U || R) per example between Gaussians fitted to the unlearned and retrained confidences.

    KL = log(s_R / s_U) + (s_U^2 + (m_U - m_R)^2) / (2 s_R^2) - 1/2 with sample means and
    (ddof 1) standard deviations, floored at STD_FLOOR. Why a Gaussian fit: logit scaling makes an
    example's confidences over models close to Gaussian (Carlini et al. 2022, LiRA, chose it for
    that), and with N = 16..512 models a binned estimator is biased and noisy, while the fit has a
    closed form and a known bias. Identical distributions: about 1/N + 1/(N - 1), i.e. ~2/N
    (0.13 at N = 16); two Gaussians N(d, 1) and N(0, 1): d^2 / 2 plus that bias.
    """
    u, r = _pair(unlearned, retrained)
    mu_u, mu_r = u.mean(axis=0), r.mean(axis=0)
    s_u = np.maximum(u.std(axis=0, ddof=1), STD_FLOOR)
    s_r = np.maximum(r.std(axis=0, ddof=1), STD_FLOOR)
    return np.log(s_r / s_u) + (s_u**2 + (mu_u - mu_r) ** 2) / (2 * s_r**2) - 0.5


def klom(unlearned_margins, oracle_margins, *, bins: int = KLOM_BINS, eps: float = KLOM_EPS,
         clip: float = KLOM_CLIP) -> np.ndarray:
    """KLoM per example: binned KL(unlearned || oracle) of margins over the model ensembles.

    As Georgiev et al. 2024 ("Attribute-to-delete", E.1) define it and their benchmark's code
    computes it (data-unlearning-bench, src/eval.py `compute_binned_KL_div`): margins clipped to
    [-clip, clip]; `bins` equal bins over the pooled range of both samples (a range of 0 becomes
    1); counts as np.digitize gives them, so a value on the top edge (the pooled maximum) is in
    no bin; probabilities p (unlearned) and q (oracle); q floored at eps where p > 0; KL as
    scipy.stats.entropy(p, q), which renormalises q. Where no unlearned value is counted (all at
    the pooled maximum), the reference gives NaN; here the top edge then joins the last bin.
    Margins are the logit-scaled confidences (module docstring). Identical distributions: the
    binned estimator's bias, which is large with few models (20 bins, N samples: empty oracle bins
    cost log(p / eps)): about 3.8 at N = 16, 1.6 at N = 32, 0.63 at N = 64, 0.11 at N = 256 for
    Gaussians; it grows with the shift, towards about 10.3 when the supports are disjoint.
    """
    u, r = _pair(unlearned_margins, oracle_margins)
    if u.shape[1] > _KLOM_CHUNK:  # the bin comparisons hold N x bins x columns booleans
        return np.concatenate([klom(u[:, i:i + _KLOM_CHUNK], r[:, i:i + _KLOM_CHUNK], bins=bins, eps=eps, clip=clip)
                               for i in range(0, u.shape[1], _KLOM_CHUNK)])
    u, r = np.clip(u, -clip, clip), np.clip(r, -clip, clip)
    lo = np.minimum(u.min(axis=0), r.min(axis=0))
    hi = np.maximum(u.max(axis=0), r.max(axis=0))
    hi = np.where(lo >= hi, lo + 1, hi)
    edges = np.linspace(lo, hi, bins + 1, axis=0)  # [bins + 1, S], np.linspace's own values

    def counts(x: np.ndarray) -> np.ndarray:
        index = np.sum(x[:, None, :] >= edges[None, :, :], axis=1)  # == np.digitize per column
        return np.stack([np.sum(index == b, axis=0) for b in range(1, bins + 2)])  # [bins + 1, S]

    p_counts, q_counts = counts(u), counts(r)
    none_counted = p_counts[:bins].sum(axis=0) == 0
    p_counts[bins - 1, none_counted] += p_counts[bins, none_counted]
    q_counts[bins - 1, none_counted] += q_counts[bins, none_counted]
    p_counts, q_counts = p_counts[:bins].astype(np.float64), q_counts[:bins].astype(np.float64)
    p = p_counts / p_counts.sum(axis=0)
    q_total = q_counts.sum(axis=0)
    q = np.divide(q_counts, q_total, out=np.zeros_like(q_counts), where=q_total > 0)
    q = np.where(p > 0, np.maximum(q, eps), q)
    q = q / q.sum(axis=0)
    return np.sum(special.rel_entr(p, q), axis=0)


# ---------------------------------------------------------------------------- LiRA-style attack
@dataclass(frozen=True)
class Attack:
    """A LiRA-style attack's result: one guess per (example, held-out model) pair."""

    auc: float
    tpr_at: dict[str, float | None]  # "0.01" -> TPR at FPR <= 1%, None where too few negatives
    why_none: dict[str, str]  # the reason for each None
    n_positive: int  # unlearned (example, model) pairs scored
    n_negative: int  # retrained (example, model) pairs scored
    roc_fpr: np.ndarray = field(repr=False)
    roc_tpr: np.ndarray = field(repr=False)


def _fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.maximum(x.std(axis=0, ddof=1), STD_FLOOR)


def _log_ratio(x: np.ndarray, fit_u, fit_r) -> np.ndarray:
    return stats.norm.logpdf(x, *fit_u) - stats.norm.logpdf(x, *fit_r)


def lira_attack(unlearned, retrained, *, fprs=ATTACK_FPRS) -> Attack:
    """Tell unlearned from retrained models, per example, by a Gaussian likelihood ratio.

    For every example, Gaussians are fitted to the unlearned models' and the retrained models'
    (LiRA's 'out') confidences; a held-out model's confidence scores log N(c; U) - log N(c; R)
    (high: unlearned). Split: two-fold cross-fitting by model index, the first half (N // 2) is
    scored by the fit on the second and vice versa, so every model is scored once by a fit that
    never saw it. Unit: one guess per (example, model) pair, pooled over examples with one global
    threshold (as LiRA does): N x S positives (unlearned) and N x S negatives (retrained). Reports
    ROC AUC and TPR at FPR 1% and 0.1%; a TPR at FPR a needs at least 1/a negatives, so that the
    threshold admits one false positive (fewer: None, with why). Identical distributions: AUC
    0.5 +- about 0.3 / sqrt(N S); two Gaussians N(d, 1) against N(0, 1): Phi(d / sqrt 2) as the
    fits sharpen. Sources: Carlini et al. 2022 (LiRA); Hayes et al. 2024 (U-LiRA).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    u, r = _pair(unlearned, retrained)
    n, s = u.shape
    if n < 4:
        raise LensError(f"the attack fits Gaussians on each half of the models (2 or more each), so it needs N >= 4; got N = {n}")
    half = n // 2
    folds = [(slice(0, half), slice(half, n)), (slice(half, n), slice(0, half))]
    pos, neg = [], []
    for scored, fitted in folds:
        fit_u, fit_r = _fit(u[fitted]), _fit(r[fitted])
        pos.append(_log_ratio(u[scored], fit_u, fit_r).ravel())
        neg.append(_log_ratio(r[scored], fit_u, fit_r).ravel())
    scores = np.concatenate(pos + neg)
    labels = np.concatenate([np.ones(n * s), np.zeros(n * s)])
    fpr, tpr, _ = roc_curve(labels, scores)
    tpr_at, why = {}, {}
    for a in fprs:
        key = f"{a:g}"
        if n * s < math.ceil(1 / a):
            tpr_at[key] = None
            why[key] = (f"{n * s} retrained (example, model) pairs; FPR {a:g} needs at least "
                        f"{math.ceil(1 / a)} for one false positive")
        else:
            tpr_at[key] = float(tpr[fpr <= a].max())
    return Attack(auc=float(roc_auc_score(labels, scores)), tpr_at=tpr_at, why_none=why,
                  n_positive=n * s, n_negative=n * s, roc_fpr=fpr, roc_tpr=tpr)


# ---------------------------------------------------------------------------- simple MIA
def losses_from_confidences(confs) -> np.ndarray:
    """Cross-entropy loss of the true class from logit-scaled confidences: softplus(-c)."""
    return np.logaddexp(0.0, -np.asarray(confs, dtype=np.float64))


def simple_mia(forget_losses, test_losses, *, n_splits: int = MIA_SPLITS, seed: int = 0) -> np.ndarray:
    """The starting kit's simple MIA per run: cross-validated accuracy of a logistic regression
    telling a run's forget-set losses from its test-set losses.

    As unlearning-challenge/starting-kit (`simple_mia`): the larger side is subsampled to the
    smaller (the kit shuffles its forget losses unseeded; here run i draws with seed + i),
    labels 1 for forget and 0 for test, sklearn's default LogisticRegression on the loss alone,
    StratifiedShuffleSplit(n_splits, random_state=0), mean accuracy over the splits. Inputs:
    [N runs, S] and [N runs, T] losses; returns [N] accuracies. Same distributions: 0.5 +- about
    0.5 / sqrt(n_splits x test fold) (the kit's test fold is 10% of 2 min(S, T)); a loss shift
    between forget and test raises it towards 1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    f, t = np.asarray(forget_losses, dtype=np.float64), np.asarray(test_losses, dtype=np.float64)
    if f.ndim != 2 or t.ndim != 2 or f.shape[0] != t.shape[0]:
        raise LensError(f"forget and test losses must be [N runs, S] and [N runs, T] with the same N; got {f.shape} and {t.shape}")
    size = min(f.shape[1], t.shape[1])
    if size < n_splits:
        raise LensError(f"the simple MIA needs at least {n_splits} forget and test losses per run; got {f.shape[1]} and {t.shape[1]}")
    if not (np.isfinite(f).all() and np.isfinite(t).all()):
        raise LensError("forget and test losses must be finite; check the stored test losses")
    out = np.empty(f.shape[0])
    cv = StratifiedShuffleSplit(n_splits=n_splits, random_state=0)
    for i in range(f.shape[0]):
        rng = np.random.default_rng(seed + i)
        fi = rng.permutation(f[i])[:size]
        ti = rng.permutation(t[i])[:size]
        x = np.concatenate([ti, fi]).reshape(-1, 1)
        y = np.concatenate([np.zeros(size), np.ones(size)])
        out[i] = cross_val_score(LogisticRegression(), x, y, cv=cv, scoring="accuracy").mean()
    return out


# ---------------------------------------------------------------------------- bounded F
def clopper_pearson(n: int, confidence: float = CP_CONFIDENCE, *, side: str = "upper") -> np.ndarray:
    """One-sided Clopper-Pearson bound on a rate for every count k = 0..n of n trials: the upper
    bound Beta(confidence; k + 1, n - k) (1 at k = n), or the lower Beta(1 - confidence; k, n - k + 1)
    (0 at k = 0)."""
    if not 0 < confidence < 1:
        raise LensError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95); got {confidence}")
    if side not in ("upper", "lower"):
        raise LensError(f"side must be 'upper' or 'lower'; got {side!r}")
    k = np.arange(n + 1)
    with np.errstate(invalid="ignore"):
        if side == "upper":
            bound = stats.beta.ppf(confidence, k + 1, n - k)
            bound[n] = 1.0
        else:
            bound = stats.beta.ppf(1 - confidence, k, n - k + 1)
            bound[0] = 0.0
    return bound


def bounded_epsilons(unlearned, retrained, *, confidence: float = CP_CONFIDENCE, rates: str = "upper") -> np.ndarray:
    """The organizers' per-example epsilon with each FPR and FNR replaced by its one-sided
    Clopper-Pearson bound at `confidence`: the same thresholds, count rules (exactly one count of
    0: discarded; both 0: inf), delta, clip and shortcuts as `metric.epsilons`.

    rates='upper' (the board's) is the privacy-auditing construction (Jagielski et al. 2020):
    the epsilon the data prove at that confidence, per threshold. It is never above the official
    epsilon, so its F is never below the official F; the gap is the part of an example's epsilon
    that N models cannot tell from chance, and it closes as N grows. rates='lower' bounds the
    other way and is degenerate: a threshold past one extreme value (a count of 1) then gives
    epsilon ~ log(N / (1 - confidence)), beyond the last scoring bucket at every N, so every
    entry scores 0 (tests pin this). Identical distributions (rates='upper'): F_CP about 0.99 at
    any N, where F reads ~0.19 (chance separations no longer count against the unlearner); a
    shift of 1 sd (Gaussians): 0.92 at N = 16, 0.47 at N = 64, 0.19 at N = 256 (F: 0.10, 0.04,
    0.03), so a small N flatters this lower bound more, not less; perfectly separated examples
    still score 0 (both counts 0).
    """
    u, r = _pair(unlearned, retrained)
    n = u.shape[0]
    if n > metric.MAX_MODELS:
        raise LensError(f"{n} models is more than the {metric.MAX_MODELS} the epsilon tables support")
    tables = metric._tables_from_rates(clopper_pearson(n, confidence, side=rates))
    return metric._epsilons_from_tables(u, r, tables, equal_is_zero=False)


def bounded_forget_quality(unlearned, retrained, *, confidence: float = CP_CONFIDENCE, rates: str = "upper") -> float:
    """F from `bounded_epsilons`, turned into points exactly as the official F (metric.example_points)."""
    eps = bounded_epsilons(unlearned, retrained, confidence=confidence, rates=rates)
    return float(metric.example_points(eps, np.shape(unlearned)[0]).mean())


# ---------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class LensInputs:
    """What a lens may read: the metric's [N, S] confidence matrices and, where stored, more."""

    unlearned: np.ndarray  # [N, S] forget-set confidences of the unlearned runs
    retrained: np.ndarray  # [N, S] of the retrained references (the score's first N)
    test_losses: np.ndarray | None = None  # [N, T] per-run test-set losses of the unlearned runs
    seed: int = 0


@dataclass(frozen=True)
class Lens:
    """A registered lens: how it is computed and how a board shows it."""

    name: str
    compute: Callable[[LensInputs], dict[str, Any]]  # JSON-ready values; "per_example" lists for plots
    column: str  # the value a leaderboard column shows
    title: str  # that column's heading
    no_difference: str  # what `column` reads when the unlearned runs are retrained models
    higher_is_better: bool | None  # for `column`, from the unlearner's side; None: no direction
    needs: tuple[str, ...] = ()  # LensInputs fields beyond the confidences


LENSES: Registry[Lens] = Registry("lens")


def register_lens(name: str, *, column: str, title: str, no_difference: str,
                  higher_is_better: bool | None = False, needs: tuple[str, ...] = ()):
    """Register `fn(LensInputs) -> dict` as the lens `name`: the one line a new lens adds."""

    def decorator(fn: Callable[[LensInputs], dict[str, Any]]):
        LENSES.add(name, Lens(name=name, compute=fn, column=column, title=title, no_difference=no_difference,
                              higher_is_better=higher_is_better, needs=tuple(needs)))
        return fn

    return decorator


def compute_lenses(inputs: LensInputs, *, names=None) -> dict[str, dict[str, Any]]:
    """Every registered lens (or `names`) on `inputs`. A lens whose inputs are not stored, or
    that cannot read them, gives {"unavailable": why} instead of stopping the scoring."""
    out = {}
    for name in (LENSES.names() if names is None else names):
        lens = LENSES.get(name)
        missing = [k for k in lens.needs if getattr(inputs, k) is None]
        if missing:
            out[name] = {"unavailable": f"needs {', '.join(missing)}, which this store does not hold"}
            continue
        try:
            out[name] = _json_ready(lens.compute(inputs))
        except (HarnessError, ValueError) as err:
            out[name] = {"unavailable": str(err)}
    return out


def _json_ready(value: Any) -> Any:
    """Plain JSON values, a non-finite number as None (the store's JSON refuses NaN)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _floats(x) -> list[float]:
    return [float(v) for v in np.asarray(x, dtype=np.float64)]


@register_lens("ks", column="mean_statistic", title="KS D", no_difference="about 1.23/sqrt(N)")
def _ks_lens(inputs: LensInputs) -> dict[str, Any]:
    d, p = ks_two_sample(inputs.unlearned, inputs.retrained)
    return {"mean_statistic": float(d.mean()), "median_pvalue": float(np.median(p)),
            "rejected_at_5pct": float(np.mean(p <= 0.05)),
            "per_example": {"statistic": _floats(d), "pvalue": _floats(p)}}


@register_lens("kl", column="mean", title="KL (Gauss)", no_difference="about 2/N")
def _kl_lens(inputs: LensInputs) -> dict[str, Any]:
    kl = gaussian_kl(inputs.unlearned, inputs.retrained)
    return {"mean": float(kl.mean()), "median": float(np.median(kl)), "per_example": {"kl": _floats(kl)}}


@register_lens("klom", column="mean", title="KLoM", no_difference="its bias: 3.8 at N = 16, 0.63 at N = 64, 0.11 at N = 256")
def _klom_lens(inputs: LensInputs) -> dict[str, Any]:
    k = klom(inputs.unlearned, inputs.retrained)
    return {"mean": float(k.mean()), "p95": float(np.quantile(k, 0.95)), "per_example": {"klom": _floats(k)}}


@register_lens("lira", column="auc", title="LiRA AUC", no_difference="0.5")
def _lira_lens(inputs: LensInputs) -> dict[str, Any]:
    a = lira_attack(inputs.unlearned, inputs.retrained)
    keep = np.unique(np.linspace(0, a.roc_fpr.size - 1, min(a.roc_fpr.size, 200)).astype(int))
    return {"auc": a.auc, "tpr_at_fpr": a.tpr_at, "why_none": a.why_none, "unit": "(example, model) pair",
            "split": "two-fold by model index", "n_positive": a.n_positive, "n_negative": a.n_negative,
            "roc": {"fpr": _floats(a.roc_fpr[keep]), "tpr": _floats(a.roc_tpr[keep])}}


@register_lens("simple_mia", column="mean_accuracy", title="MIA acc", no_difference="0.5 (when forget and test are alike)",
               needs=("test_losses",))
def _simple_mia_lens(inputs: LensInputs) -> dict[str, Any]:
    acc = simple_mia(losses_from_confidences(inputs.unlearned), inputs.test_losses, seed=inputs.seed)
    return {"mean_accuracy": float(acc.mean()), "per_run": _floats(acc)}


@register_lens("bounded_f", column="forget_quality", title=f"F (CP {CP_CONFIDENCE:.0%})",
               no_difference="about 1 (F reads ~0.19)", higher_is_better=True)
def _bounded_f_lens(inputs: LensInputs) -> dict[str, Any]:
    eps = bounded_epsilons(inputs.unlearned, inputs.retrained)
    points = metric.example_points(eps, inputs.unlearned.shape[0])
    return {"forget_quality": float(points.mean()), "confidence": CP_CONFIDENCE, "rates": "upper Clopper-Pearson bounds",
            "per_example": {"epsilon": _floats(eps)}}
