"""harness.scoring.metric against the organizers' released numbers, hand-checked cases, and the
straightforward implementation of the same algorithm (tests/metric_reference.py)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import metric_reference
from harness.errors import HarnessError
from harness.scoring import metric

VECTORS = Path(__file__).parent / "data" / "metric_vectors.npz"


@pytest.fixture(scope="module")
def vectors():
    with np.load(VECTORS) as d:
        return {k: d[k] for k in d.files}


pytestmark = pytest.mark.usefixtures("one_thread")


def mixed_confs(n: int, s: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, s] unlearned / retrained confidences: one column per kind of difference, cycling."""
    rng = np.random.default_rng(seed)
    u, r = np.empty((n, s)), np.empty((n, s))
    for k in range(s):
        mu, sd = rng.normal(0, 3), rng.uniform(0.05, 3)
        ret = mu + sd * rng.normal(size=n)
        kind = k % 9
        if kind == 0:  # same distribution
            unl = mu + sd * rng.normal(size=n)
        elif kind == 1:  # mean shift
            unl = mu + sd * (0.7 + rng.normal(size=n))
        elif kind == 2:  # peaky unlearned
            unl = mu + 0.3 * sd * rng.normal(size=n)
        elif kind == 3:  # separated
            unl = mu + 10 * sd + sd * rng.normal(size=n)
        elif kind == 4:  # near-constant unlearned (ratio test)
            unl = mu + 1e-4 * sd * rng.normal(size=n)
        elif kind == 5:  # heavy tails
            unl = mu + sd * rng.standard_t(1.5, size=n)
        elif kind == 6:  # ties: values on a 0.1 grid
            unl, ret = np.round(mu + sd * rng.normal(size=n), 1), np.round(ret, 1)
        elif kind == 7:  # peaky retrained
            unl, ret = mu + sd * rng.normal(size=n), mu + 0.3 * sd * rng.normal(size=n)
        else:  # values on the thresholds' own 0.01 grid
            unl, ret = np.round(mu + sd * rng.normal(size=n), 2), np.round(ret + 0.05, 2)
        u[:, k], r[:, k] = unl, ret
    return u, r


# ---------------------------------------------------------------------------- released numbers
@pytest.mark.parametrize("n", [16, 64, 100], ids=["n16", "n64", "n100"])
def test_epsilons_reproduce_released_vectors(vectors, n):
    eps = metric.epsilons(vectors[f"n{n}_unlearned"], vectors[f"n{n}_retrained"])
    np.testing.assert_allclose(eps, vectors[f"n{n}_eps"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [16, 64, 100], ids=["n16", "n64", "n100"])
def test_forget_quality_reproduces_released_score_exactly(vectors, n):
    f = metric.forget_quality(vectors[f"n{n}_unlearned"], vectors[f"n{n}_retrained"])
    assert f == float(vectors[f"n{n}_forget_score"])


def test_logit_scaled_confidence_reproduces_released_values(vectors):
    confs = metric.logit_scaled_confidence(vectors["logits"], vectors["targets"])
    assert confs.dtype == np.float64
    np.testing.assert_allclose(confs, vectors["confs"], rtol=0, atol=1e-9)


def test_logit_scaled_confidence_leaves_logits_untouched(vectors):
    logits = vectors["logits"].copy()
    metric.logit_scaled_confidence(logits, vectors["targets"])
    np.testing.assert_array_equal(logits, vectors["logits"])


def test_logit_scaled_confidence_two_classes_is_the_logit_gap():
    logits = np.array([[2.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    confs = metric.logit_scaled_confidence(logits, torch.tensor([0, 0]))
    np.testing.assert_allclose(confs, [2.0, -3.0], atol=1e-6)


# ---------------------------------------------------------------------------- hand-checked
def test_epsilons_identical_distributions_give_zero():
    u = np.arange(8.0)[:, None] * np.ones((1, 3))
    np.testing.assert_array_equal(metric.epsilons(u, u.copy()), [0.0, 0.0, 0.0])
    assert metric.forget_quality(u, u.copy()) == 1.0


def test_epsilons_shift_by_one_of_four_models():
    # U = 0..3, R = 1..4: the best rules misclassify 1 of 4 one way and 2 of 4 the other
    # (e.g. t in (1, 2] for the single threshold): eps = ln(1 - delta - 1/2) - ln(1/4) in float32.
    u, r = np.arange(4.0)[:, None], np.arange(1.0, 5.0)[:, None]
    expected = np.log(1 - 1e-5 - np.float32(0.5)) - np.log(np.float32(0.25))
    assert metric.epsilons(u, r)[0] == float(expected)
    assert metric.forget_quality(u, r) == 0.5  # N = 4: buckets up to ceil(ln 3) = 2; 0.69 -> 1/2


def test_epsilons_perfect_separation_is_the_cap():
    u, r = np.arange(6.0)[:, None], np.arange(100.0, 106.0)[:, None]
    assert metric.epsilons(u, r)[0] == metric.EPSILON_CAP


@pytest.mark.parametrize(
    ("u", "r", "expected"),
    [
        ([1.5] * 5, [1.5] * 5, 0.0),
        ([1.5] * 5, [2.5] * 5, 50.0),
        ([1.5] * 5, [1.5 + 1e-9] * 5, 50.0),
        ([1.5] * 5, [0.0, 1.0, 2.0, 3.0, 4.0], 50.0),
    ],
    ids=["both-constant-equal", "both-constant-different", "both-constant-barely-different",
         "one-constant"],
)
def test_epsilons_constant_distributions_are_defined(u, r, expected):
    assert metric.epsilons(np.array(u)[:, None], np.array(r)[:, None])[0] == expected


@pytest.mark.parametrize(("scale", "capped"), [(0.0099, True), (0.0101, False)],
                         ids=["ratio-below-1pct", "ratio-above-1pct"])
def test_epsilons_range_ratio_test(scale, capped):
    r = np.linspace(0.0, 1.0, 8)[:, None]
    u = r * scale
    assert bool(metric.epsilons(u, r)[0] == metric.EPSILON_CAP) is capped


def test_epsilons_all_thresholds_discarded_gives_zero():
    # Found by search: each of the 160,001 rules has exactly one of fpr / fnr at 0, so the
    # released code's assert fails; we return 0 (no evidence of a difference).
    u, r = np.array([[0.001], [-0.001]]), np.array([[0.0], [0.002]])
    assert metric_reference.epsilons(u, r)[0] == metric.epsilons(u, r)[0] == 0.0


def test_epsilons_do_not_depend_on_chunking():
    u, r = mixed_confs(12, 20, seed=3)
    np.testing.assert_array_equal(metric.epsilons(u, r, chunk=3), metric.epsilons(u, r))


# ---------------------------------------------------------------------------- buckets and F
@pytest.mark.parametrize(
    ("n", "n_buckets"), [(2, 0), (3, 2), (4, 4), (64, 10), (512, 14)],
    ids=["n2", "n3", "n4", "n64", "n512"],
)
def test_bucket_points_follow_ceil_log(n, n_buckets):
    edges, points = metric.bucket_points(n)
    assert edges.size == points.size == n_buckets
    np.testing.assert_array_equal(points, 0.5 ** np.arange(n_buckets))
    np.testing.assert_array_equal(edges, 0.5 * np.arange(1, n_buckets + 1))


def test_example_points_bucket_edges_and_beyond():
    eps = np.array([0.0, 0.4999, 0.5, 1.2, 6.9999, 7.0, 50.0])
    np.testing.assert_array_equal(
        metric.example_points(eps, 512), [1.0, 1.0, 0.5, 0.25, 2.0**-13, 0.0, 0.0]
    )


def test_example_points_two_models_score_nothing():
    np.testing.assert_array_equal(metric.example_points([0.0, 3.0], 2), [0.0, 0.0])


def test_final_score_multiplies_the_utility_ratios():
    score = metric.final_score(0.5, retain_acc_unlearned=0.9, retain_acc_retrained=1.0,
                               test_acc_unlearned=[0.7, 0.9], test_acc_retrained=0.5)
    assert score == pytest.approx(0.5 * 0.9 * 1.6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_acc_unlearned": -0.1}, "test_acc_unlearned must be finite, non-negative"),
        ({"test_acc_retrained": float("nan")}, "test_acc_retrained must be finite"),
    ],
    ids=["negative", "nan"],
)
def test_final_score_rejects_bad_accuracies(kwargs, match):
    args = {"retain_acc_unlearned": 0.9, "retain_acc_retrained": 0.9, "test_acc_unlearned": 0.8,
            "test_acc_retrained": 0.8} | kwargs
    with pytest.raises(HarnessError, match=match):
        metric.final_score(0.3, **args)


def test_final_score_is_zero_over_a_zero_reference_accuracy_as_on_the_board():
    good = {"retain_acc_unlearned": 0.9, "retain_acc_retrained": 0.9, "test_acc_unlearned": 0.8, "test_acc_retrained": 0.8}
    assert metric.final_score(0.3, **(good | {"retain_acc_retrained": 0.0})) == 0.0
    assert metric.final_score(0.3, **(good | {"test_acc_retrained": 0.0})) == 0.0
    assert metric.utility_ratios(0.5, 0.0, 0.5, 1.0) == (0.0, 0.5)


def test_higher_is_better():
    assert metric.HIGHER_IS_BETTER is True


# ---------------------------------------------------------------------------- exactness
def test_rates_are_float32_count_over_n_like_torch_mean():
    for n in (2, 3, 7, 16, 100, 333, 512, 1000):
        hits = torch.arange(n)[:, None] < torch.arange(n + 1)[None, :]  # column k: k hits
        means = torch.mean(hits.to(torch.float32), 0).numpy()
        ours = np.arange(n + 1, dtype=np.float32) / np.float32(n)
        np.testing.assert_array_equal(means, ours)


def test_left_thresholds_are_numpy_linspace_rows():
    # harness.scoring.metric computes single left thresholds as i * step + start (stop at the end),
    # which is what np.linspace does row by row
    rng = np.random.default_rng(0)
    right = np.linspace(-1.37, 2.63, 401) + rng.normal() * 30
    width = rng.uniform(0, 5)
    starts, stops = (right - width) - 2.0, (right - width) + 2.0
    step = (stops - starts) / 399
    grid = np.arange(400, dtype=np.float64)[:, None] * step + starts
    grid[-1] = stops
    rows = np.stack([np.linspace(r - width - 2.0, r - width + 2.0, num=400) for r in right], axis=1)
    np.testing.assert_array_equal(grid, rows)


def test_below_counts_equal_searchsorted_with_ties():
    rng = np.random.default_rng(1)
    a = np.sort(np.round(rng.normal(size=300), 2))
    b = np.sort(np.round(rng.normal(size=300) + 0.5, 2))
    x = np.concatenate([rng.normal(size=5000) * 3, a, b, np.nextafter(a, np.inf), [-50.0, 50.0]])
    below = metric._Below(a, b, -4.0, 4.0)
    a_below, b_below = below(x)
    np.testing.assert_array_equal(a_below, np.searchsorted(a, x, side="left"))
    np.testing.assert_array_equal(b_below, np.searchsorted(b, x, side="left"))


def test_epsilons_equal_straightforward_implementation_small_n():
    for n, seed in ((3, 0), (8, 1), (16, 2)):
        u, r = mixed_confs(n, 9, seed)
        np.testing.assert_array_equal(metric.epsilons(u, r), metric_reference.epsilons(u, r))


def test_epsilons_equal_straightforward_implementation_n512():
    u, r = mixed_confs(512, 2, seed=4)  # a shared distribution and a mean shift
    np.testing.assert_array_equal(metric.epsilons(u, r), metric_reference.epsilons(u, r))


# ---------------------------------------------------------------------------- calibration
def test_noise_floor_same_distribution_is_far_below_one():
    rng = np.random.default_rng(7)
    mu, sd = rng.normal(0, 3, size=200), rng.uniform(0.5, 2, size=200)
    a = mu + sd * rng.normal(size=(64, 200))
    b = mu + sd * rng.normal(size=(64, 200))
    assert 0.12 < metric.noise_floor(a, b) < 0.28  # README: 0.196 at N = 64


def test_bootstrap_ci_contains_the_point_estimate():
    u, r = mixed_confs(16, 45, seed=5)
    f = metric.forget_quality(u, r)
    low, high = metric.bootstrap_ci(u, r, n_boot=300, seed=1)
    assert low <= f <= high
    low2, high2 = metric.bootstrap_ci(u, r, n_boot=300, seed=1, accuracy_factor=0.5)
    assert (low2, high2) == pytest.approx((low * 0.5, high * 0.5))


def test_bootstrap_ci_from_points_is_seeded_and_narrows_with_level():
    points = np.random.default_rng(2).choice([1.0, 0.5, 0.25, 0.0], size=400)
    wide = metric.bootstrap_ci_from_points(points, level=0.99, seed=3)
    narrow = metric.bootstrap_ci_from_points(points, level=0.5, seed=3)
    assert wide == metric.bootstrap_ci_from_points(points, level=0.99, seed=3)
    assert wide[0] < narrow[0] <= points.mean() <= narrow[1] < wide[1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"level": 1.0}, "level must lie strictly between 0 and 1"),
     ({"n_boot": 0}, "n_boot must be at least 1")],
    ids=["level", "n_boot"],
)
def test_bootstrap_ci_from_points_rejects_bad_settings(kwargs, match):
    with pytest.raises(HarnessError, match=match):
        metric.bootstrap_ci_from_points([1.0, 0.5], **kwargs)


# ---------------------------------------------------------------------------- bad input
GOOD = np.zeros((4, 3)) + np.arange(4.0)[:, None]


@pytest.mark.parametrize(
    ("u", "r", "match"),
    [
        (np.where(np.eye(4, 3) > 0, np.nan, GOOD), GOOD,
         r"unlearned_confs contains 3 NaN/inf value\(s\) \(first at model 0, example 0"),
        (GOOD, np.full((4, 3), np.inf), r"retrained_confs contains 12 NaN/inf value"),
        (GOOD, GOOD[:, :2], r"must have the same shape .* got \(4, 3\) and \(4, 2\)"),
        (GOOD[:1], GOOD[:1], r"unlearned_confs has 1 model\(s\) .* needs at least 2"),
        (GOOD[:, :0], GOOD[:, :0], r"unlearned_confs has no forget examples"),
        (GOOD[:, 0], GOOD[:, 0], r"unlearned_confs must be a 2-D array .* got 1-D"),
        (GOOD[None], GOOD[None], r"must be a 2-D array .* got 3-D"),
        (GOOD.astype(str), GOOD, r"unlearned_confs must be a numeric array"),
        (GOOD * 1e5, GOOD, r"has a value of magnitude 3e\+05; logit-scaled confidences"),
    ],
    ids=["nan", "inf", "shape-mismatch", "one-model", "no-examples", "1d", "3d", "strings",
         "not-confidences"],
)
def test_epsilons_rejects_bad_input(u, r, match):
    with pytest.raises(HarnessError, match=match):
        metric.epsilons(u, r)


def test_epsilons_rejects_more_models_than_the_tables_hold():
    many = np.zeros((metric.MAX_MODELS + 1, 1)) + np.arange(metric.MAX_MODELS + 1.0)[:, None]
    with pytest.raises(HarnessError, match=r"4097 models is more than the 4096 supported"):
        metric.epsilons(many, many)


@pytest.mark.parametrize(
    ("logits", "targets", "match"),
    [
        (np.zeros(3), [0, 1, 2], r"logits must be a 2-D array"),
        (np.full((2, 3), np.nan), [0, 1], r"logits contain 6 NaN/inf"),
        (np.zeros((2, 3)), [0, 3], r"targets must lie in \[0, 2\]"),
        (np.zeros((2, 3)), [0], r"targets must be a 1-D integer array with one label per"),
        (np.zeros((2, 3)), [0.0, 1.0], r"targets must be a 1-D integer array"),
    ],
    ids=["1d-logits", "nan-logits", "target-range", "target-count", "float-targets"],
)
def test_logit_scaled_confidence_rejects_bad_input(logits, targets, match):
    with pytest.raises(HarnessError, match=match):
        metric.logit_scaled_confidence(logits, targets)
