"""The lenses beside F: each reads "no difference" on identical distributions within its stated
noise, moves monotonically with a known shift, and agrees with an independent reference
(scipy.stats.ks_2samp, closed forms for two Gaussians, the benchmarks' own code written out)."""

import numpy as np
import pytest
from scipy import stats

from harness.scoring import lenses, metric


def _gauss(n, s, *, shift=0.0, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, s)) * scale + shift


def _identical(n, s, seed=0):
    return _gauss(n, s, seed=seed), _gauss(n, s, seed=seed + 1)


SHIFTS = (0.0, 0.5, 1.0, 2.0)


# ---------------------------------------------------------------------------- KS
@pytest.mark.parametrize("n", [4, 16, 33], ids=lambda n: f"N={n}")
def test_ks_two_sample_agrees_with_scipy_ks_2samp_with_ties(n):
    rng = np.random.default_rng(n)
    u, r = rng.normal(size=(n, 30)), rng.normal(0.4, 1.3, size=(n, 30))
    u[:, :6], r[:, :6] = np.round(u[:, :6]), np.round(r[:, :6])  # ties within and across samples
    r[:, 6] = u[:, 6]  # equal samples
    d, p = lenses.ks_two_sample(u, r)
    for j in range(u.shape[1]):
        ref = stats.ks_2samp(u[:, j], r[:, j])
        assert d[j] == pytest.approx(ref.statistic, abs=1e-12)
        assert p[j] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
    assert d[6] == 0 and p[6] == 1


def test_ks_two_sample_reads_no_difference_on_identical_distributions():
    n = 16
    d, p = lenses.ks_two_sample(*_identical(n, 2000))
    assert d.mean() == pytest.approx(1.2286 / np.sqrt(n), rel=0.1)  # E sup|B| sqrt(2/N)
    assert np.mean(p <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)


def test_ks_two_sample_grows_with_the_shift():
    means = [lenses.ks_two_sample(_gauss(16, 300, shift=d, seed=1), _gauss(16, 300, seed=2))[0].mean() for d in SHIFTS]
    assert np.all(np.diff(means) > 0) and means[-1] > 0.6


# ---------------------------------------------------------------------------- KL
def test_gaussian_kl_is_the_closed_form_for_two_fitted_gaussians():
    u, r = _gauss(4000, 3, shift=1.5, scale=0.5, seed=3), _gauss(4000, 3, seed=4)
    closed = np.log(1 / 0.5) + (0.5**2 + 1.5**2) / 2 - 0.5
    np.testing.assert_allclose(lenses.gaussian_kl(u, r), closed, rtol=0.05)


def test_gaussian_kl_reads_its_small_sample_bias_on_identical_distributions():
    for n in (16, 64):
        kl = lenses.gaussian_kl(*_identical(n, 4000, seed=n))
        assert kl.mean() == pytest.approx(1 / n + 1 / (n - 1), rel=0.15)


def test_gaussian_kl_grows_with_the_shift():
    means = [lenses.gaussian_kl(_gauss(32, 200, shift=d, seed=1), _gauss(32, 200, seed=2)).mean() for d in SHIFTS]
    assert np.all(np.diff(means) > 0)
    assert means[-1] == pytest.approx(2.0**2 / 2, rel=0.25)


def _klom_reference(p_arr, q_arr, bin_count=20, eps=1e-5, lo=-100, hi=100):
    """Georgiev et al.'s benchmark code (data-unlearning-bench src/eval.py), one example at a time."""
    p_arr, q_arr = np.clip(p_arr, lo, hi), np.clip(q_arr, lo, hi)
    start, end = min(p_arr.min(), q_arr.min()), max(p_arr.max(), q_arr.max())
    if start >= end:
        end = start + 1
    bins = np.linspace(start, end, bin_count + 1)
    p_idx, q_idx = np.digitize(p_arr, bins), np.digitize(q_arr, bins)
    p_c = np.array([np.sum(p_idx == i) for i in range(1, bin_count + 1)])
    q_c = np.array([np.sum(q_idx == i) for i in range(1, bin_count + 1)])
    p = p_c / p_c.sum() if p_c.sum() > 0 else np.zeros(bin_count)
    q = q_c / q_c.sum() if q_c.sum() > 0 else np.zeros(bin_count)
    return stats.entropy(pk=p, qk=np.where(p > 0, np.maximum(q, eps), q))


def test_klom_agrees_with_the_benchmarks_code_example_by_example():
    rng = np.random.default_rng(5)
    u, r = rng.normal(size=(16, 50)), rng.normal(0.7, 1.5, size=(16, 50))
    u[:, 0] = r[:, 0] = 3.0  # one constant value on both sides
    u[:, 1] *= 400  # beyond the clip
    r[:, 2] = u[:, 2] - 10  # disjoint supports
    k = lenses.klom(u, r)
    ref = np.array([_klom_reference(u[:, j], r[:, j]) for j in range(u.shape[1])])
    np.testing.assert_allclose(k, ref, rtol=1e-12, atol=1e-12)
    assert k[0] == 0 and k[2] > 10  # about 10.3 when the supports are disjoint


def test_klom_defines_the_case_the_reference_leaves_nan():
    u, r = np.full((8, 1), 5.0), _gauss(8, 1)  # every unlearned margin at the pooled maximum
    assert np.isnan(_klom_reference(u[:, 0], r[:, 0]))
    assert np.isfinite(lenses.klom(u, r)).all() and lenses.klom(u, r)[0] > 5


def test_klom_reads_no_difference_and_grows_with_the_shift():
    for n, bias in ((16, 3.8), (64, 0.63), (256, 0.11)):  # the binned estimator's bias (docstring)
        assert lenses.klom(*_identical(n, 1000, seed=n)).mean() == pytest.approx(bias, rel=0.1)
    means = [lenses.klom(_gauss(64, 300, shift=d, seed=1), _gauss(64, 300, seed=2)).mean() for d in SHIFTS]
    assert np.all(np.diff(means) > 0)


def test_klom_margins_are_the_logit_scaled_confidences():
    rng = np.random.default_rng(8)
    logits = rng.normal(scale=4, size=(200, 10)).astype(np.float32)
    targets = rng.integers(0, 10, size=200)
    z = logits.astype(np.float64)
    others = np.where(np.arange(10) == targets[:, None], -np.inf, z)
    margin = z[np.arange(200), targets] - np.logaddexp.reduce(others, axis=1)
    np.testing.assert_allclose(metric.logit_scaled_confidence(logits, targets), margin, atol=1e-5)
    np.testing.assert_allclose(lenses.losses_from_confidences(margin),
                               np.logaddexp.reduce(z, axis=1) - z[np.arange(200), targets], atol=1e-9)


# ---------------------------------------------------------------------------- LiRA
@pytest.mark.parametrize("d", [0.5, 1.0, 2.0], ids=lambda d: f"d={d}")
def test_lira_attack_auc_is_phi_of_d_over_root_two_for_two_gaussians(d):
    attack = lenses.lira_attack(_gauss(400, 40, shift=d, seed=9), _gauss(400, 40, seed=10))
    assert attack.auc == pytest.approx(stats.norm.cdf(d / np.sqrt(2)), abs=0.015)


def test_lira_attack_reads_chance_on_identical_distributions_and_grows_with_the_shift():
    same = lenses.lira_attack(*_identical(32, 100, seed=11))
    assert abs(same.auc - 0.5) < 4 * 0.3 / np.sqrt(32 * 100)
    aucs = [lenses.lira_attack(_gauss(16, 64, shift=d, seed=1), _gauss(16, 64, seed=2)).auc for d in SHIFTS]
    assert np.all(np.diff(aucs) > 0)


def test_lira_attack_reports_tpr_at_a_low_fpr_only_with_enough_negatives():
    small = lenses.lira_attack(_gauss(16, 16, shift=1, seed=12), _gauss(16, 16, seed=13))
    assert small.n_negative == 256 and small.tpr_at["0.01"] is not None
    assert small.tpr_at["0.001"] is None
    assert small.why_none["0.001"] == "256 retrained (example, model) pairs; FPR 0.001 needs at least 1000 for one false positive"
    big = lenses.lira_attack(_gauss(32, 100, shift=1, seed=12), _gauss(32, 100, seed=13))
    assert big.tpr_at["0.001"] is not None and 0 <= big.tpr_at["0.001"] <= big.tpr_at["0.01"] <= 1


def test_lira_attack_needs_two_models_per_half():
    with pytest.raises(lenses.LensError, match=r"so it needs N >= 4; got N = 3"):
        lenses.lira_attack(_gauss(3, 5), _gauss(3, 5, seed=1))


# ---------------------------------------------------------------------------- simple MIA
def test_simple_mia_is_the_starting_kits_attack_on_one_run():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    rng = np.random.default_rng(14)
    forget, test = rng.exponential(0.5, size=(1, 80)), rng.exponential(1.0, size=(1, 60))
    got = lenses.simple_mia(forget, test, seed=3)
    pick = np.random.default_rng(3)
    f, t = pick.permutation(forget[0])[:60], pick.permutation(test[0])[:60]
    kit = cross_val_score(LogisticRegression(), np.concatenate([t, f]).reshape(-1, 1), [0] * 60 + [1] * 60,
                          cv=StratifiedShuffleSplit(n_splits=10, random_state=0), scoring="accuracy").mean()
    assert got.shape == (1,) and got[0] == kit


def test_simple_mia_reads_chance_on_alike_losses_and_grows_with_the_shift():
    rng = np.random.default_rng(15)
    same = lenses.simple_mia(rng.exponential(size=(8, 200)), rng.exponential(size=(8, 200)))
    assert abs(same.mean() - 0.5) < 4 * 0.5 / np.sqrt(10 * 40 * 8)
    test = rng.exponential(size=(8, 200))
    accs = [lenses.simple_mia(rng.exponential(size=(8, 200)) / (1 + d), test).mean() for d in (0.0, 1.0, 3.0)]
    assert np.all(np.diff(accs) > 0)


def test_simple_mia_names_too_few_losses():
    with pytest.raises(lenses.LensError, match=r"at least 10 forget and test losses per run; got 5 and 40"):
        lenses.simple_mia(np.ones((2, 5)), np.ones((2, 40)))


# ---------------------------------------------------------------------------- bounded F
def test_clopper_pearson_bounds_are_the_beta_quantiles_around_the_observed_rate():
    upper, lower = lenses.clopper_pearson(10, 0.95), lenses.clopper_pearson(10, 0.95, side="lower")
    assert upper[0] == pytest.approx(1 - 0.05 ** (1 / 10)) and upper[10] == 1
    assert lower[0] == 0 and lower[10] == pytest.approx(0.05 ** (1 / 10))
    assert upper[3] == pytest.approx(stats.beta.ppf(0.95, 4, 7)) and lower[3] == pytest.approx(stats.beta.ppf(0.05, 3, 8))
    assert np.all(lower <= np.arange(11) / 10) and np.all(np.arange(11) / 10 <= upper)


def test_bounded_epsilons_are_never_above_the_official_ones_and_the_gap_closes_with_n():
    u, r = _gauss(16, 60, shift=0.5, seed=16), _gauss(16, 60, seed=17)
    assert np.all(lenses.bounded_epsilons(u, r) <= metric.epsilons(u, r))
    gaps = []
    for n in (16, 64, 256):
        u, r = _gauss(n, 100, shift=1.0, seed=n), _gauss(n, 100, seed=n + 1)
        gaps.append(lenses.bounded_forget_quality(u, r) - metric.forget_quality(u, r))
    assert np.all(np.diff(gaps) < 0) and gaps[-1] > 0


def test_bounded_forget_quality_reads_about_one_on_identical_distributions():
    for n in (16, 64):
        u, r = _identical(n, 100, seed=n)
        assert lenses.bounded_forget_quality(u, r) > 0.95 > 0.3 > metric.forget_quality(u, r)


def test_bounded_forget_quality_falls_with_the_shift_and_leaves_the_official_f_alone():
    u, r = _gauss(64, 80, shift=0.5, seed=1), _gauss(64, 80, seed=2)
    before = metric.forget_quality(u, r)
    fs = [lenses.bounded_forget_quality(_gauss(64, 80, shift=d, seed=1), _gauss(64, 80, seed=2)) for d in SHIFTS]
    assert np.all(np.diff(fs) < 0)
    assert metric.forget_quality(u, r) == before


def test_bounded_forget_quality_gives_more_points_at_a_higher_confidence():
    u, r = _gauss(64, 60, shift=0.5, seed=19), _gauss(64, 60, seed=20)
    assert metric.forget_quality(u, r) <= lenses.bounded_forget_quality(u, r, confidence=0.5) \
        < lenses.bounded_forget_quality(u, r, confidence=0.99)


def test_bounded_forget_quality_with_lower_rate_bounds_is_degenerate():
    """Why the board bounds the rates from above: from below, every entry scores 0 at any N."""
    for n in (16, 256):
        assert lenses.bounded_forget_quality(*_identical(n, 40, seed=n), rates="lower") < 0.01


# ---------------------------------------------------------------------------- registry
def test_compute_lenses_reads_every_registered_lens_and_says_what_is_missing():
    u, r = _identical(16, 20, seed=21)
    out = lenses.compute_lenses(lenses.LensInputs(unlearned=u, retrained=r))
    assert set(out) == set(lenses.LENSES.names()) >= {"ks", "kl", "klom", "lira", "simple_mia", "bounded_f"}
    assert out["simple_mia"] == {"unavailable": "needs test_losses, which this store does not hold"}
    for name in out.keys() - {"simple_mia"}:
        assert lenses.LENSES.get(name).column in out[name]
    assert abs(out["lira"]["auc"] - 0.5) < 0.1


def test_an_unknown_lens_name_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown lens 'klm'; did you mean 'klom'\?"):
        lenses.LENSES.get("klm")
