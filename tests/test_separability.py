"""Can a score be told apart: the seed-to-seed spread and the verdicts it gives (harness.scoring.separability)."""

import math

import numpy as np
import pytest

from harness.scoring import separability
from harness.scoring.metric import MetricError


def pool(p=16, s=40, seed=0):
    """P exchangeable retrained models: every model's confidences drawn from one distribution."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, size=(p, s)) + rng.normal(0.0, 2.0, size=(1, s)), np.full(p, 0.9), np.full(p, 0.5)


def test_split_scores_is_repeatable_by_seed_and_moves_with_it():
    confs, ra, ta = pool()
    first = separability.split_scores(confs, ra, ta, size=8, repeats=6, seed=1)
    assert first.shape == (6,)
    np.testing.assert_array_equal(first, separability.split_scores(confs, ra, ta, size=8, repeats=6, seed=1))
    assert not np.array_equal(first, separability.split_scores(confs, ra, ta, size=8, repeats=6, seed=2))
    assert ((first >= 0) & (first <= 1)).all()


def test_split_scores_multiplies_in_the_accuracy_ratios():
    confs, _, ta = pool(p=8)
    ra = np.array([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    order_free = separability.split_scores(confs, np.ones(8), ta, size=4, repeats=8, seed=3)
    scaled = separability.split_scores(confs, ra, ta, size=4, repeats=8, seed=3)
    rng = np.random.default_rng(3)
    for k in range(8):
        order = rng.permutation(8)
        ratio = ra[order[:4]].mean() / ra[order[4:8]].mean()
        assert scaled[k] == pytest.approx(order_free[k] * ratio)


@pytest.mark.parametrize("size, repeats, match", [
    (1, 4, "at least 2 and at most half the pool"),
    (9, 4, "at most half the pool"),
    (4, 1, "repeats must be at least 2"),
], ids=["size-1", "more-than-half", "one-repeat"])
def test_split_scores_refuses_what_cannot_measure_a_spread(size, repeats, match):
    confs, ra, ta = pool()
    with pytest.raises(MetricError, match=match):
        separability.split_scores(confs, ra, ta, size=size, repeats=repeats)


def test_split_spread_matches_the_spread_of_fresh_draws():
    """The permutation argument the module rests on: splitting one pool spreads the score as
    drawing fresh models for both sides does."""
    s, m, repeats = 30, 8, 48
    rng = np.random.default_rng(7)
    centre = rng.normal(0.0, 2.0, size=(1, s))
    fresh = []
    for k in range(repeats):
        models = rng.normal(0.0, 1.0, size=(2 * m, s)) + centre
        fresh.append(separability.split_scores(models, np.ones(2 * m), np.ones(2 * m), size=m, repeats=2, seed=k)[0])
    split = separability.split_scores(rng.normal(0.0, 1.0, size=(2 * m, s)) + centre, np.ones(2 * m), np.ones(2 * m),
                                      size=m, repeats=repeats, seed=0)
    ratio = np.std(split, ddof=1) / np.std(fresh, ddof=1)
    assert 0.6 < ratio < 1.6  # sds from 48 draws each are within about 20% of theirs


@pytest.mark.parametrize("pool_size, sizes", [(7, []), (8, [4]), (16, [4, 8]), (20, [4, 8, 10]), (32, [4, 8, 16])],
                         ids=lambda v: str(v))
def test_spread_sizes_doubles_up_to_half_the_pool(pool_size, sizes):
    assert separability.spread_sizes(pool_size) == sizes


def test_fit_spread_recovers_a_power_law():
    sizes = np.array([4, 8, 16, 32])
    scale, exponent = separability.fit_spread(sizes, 0.3 * sizes ** -0.7)
    assert (scale, exponent) == (pytest.approx(0.3), pytest.approx(0.7))


@pytest.mark.parametrize("sds, exponent", [
    ([0.1], 0.0),  # one size: taken as flat, the conservative reading
    ([0.1, 0.12], 0.0),  # growing: clipped to flat
    ([0.4, 0.01], 1.0),  # steep: clipped down
], ids=["one-size", "growing", "steep"])
def test_fit_spread_keeps_the_exponent_in_its_range(sds, exponent):
    assert separability.fit_spread([4, 8][:len(sds)], sds)[1] == pytest.approx(exponent)


def test_measure_spread_measures_each_size_and_reads_the_fit_at_n():
    confs, ra, ta = pool(p=32)
    record = separability.measure_spread(confs, ra, ta, n=32, repeats=16)
    assert record["sizes"] == [4, 8, 16] and all(sd > 0 for sd in record["sds"])
    assert record["spread"] == pytest.approx(separability.spread_at(32, record["scale"], record["exponent"]))
    assert 0 <= record["exponent"] <= 1
    assert separability.measure_spread(confs[:7], ra[:7], ta[:7], n=7)["spread"] is None


def test_the_spread_of_a_mean_over_examples_shrinks_with_more_examples():
    """What the spread is made of: F averages S examples' points, so 4x the examples halve it."""
    few, many = (separability.split_scores(*pool(p=16, s=s, seed=1), size=8, repeats=32) for s in (40, 160))
    assert np.std(many, ddof=1) < 0.75 * np.std(few, ddof=1)


def test_compare_tells_apart_a_difference_beyond_two_sds_of_a_difference():
    spread = {"scale": 0.2, "exponent": 0.5}
    sd = 0.2 / math.sqrt(16)
    far = separability.compare(0.5, 0.5 - 1.01 * 2 * math.sqrt(2) * sd, spread, n=16)
    near = separability.compare(0.5, 0.5 - 0.99 * 2 * math.sqrt(2) * sd, spread, n=16)
    assert far["told_apart"] and not near["told_apart"]
    assert far["threshold"] == pytest.approx(2 * math.sqrt(2) * sd)
    assert far["runs_needed"] <= 16 < near["runs_needed"]


def test_runs_needed_is_the_first_n_that_tells_them_apart():
    spread = {"scale": 0.25, "exponent": 0.6}
    for diff in (0.3, 0.05, -0.02, 0.008):
        n = separability.runs_needed(diff, spread["scale"], spread["exponent"])
        assert separability.compare(diff, 0.0, spread, n=n)["told_apart"]
        if n > 2:
            assert not separability.compare(diff, 0.0, spread, n=n - 1)["told_apart"]


def test_runs_needed_is_none_when_more_runs_would_not_tell_them_apart():
    assert separability.runs_needed(0.01, 0.02, 0.0) is None  # a flat spread above the difference
    assert separability.runs_needed(0.0001, 0.02, 0.1) is None  # beyond the metric's 4096 models
    assert separability.runs_needed(0.1, 0.02, 0.0) == 2  # told apart at any N


def test_compare_without_a_spread_gives_no_verdict():
    assert separability.compare(0.4, 0.1, None, n=16) == {"diff": pytest.approx(0.3), "threshold": None,
                                                          "told_apart": None, "runs_needed": None}
    assert separability.runs_needed(0.0, 0.2, 0.5) is None


def test_separations_compare_with_the_baseline_and_the_scored_entry_above():
    spread = {"scale": 0.2, "exponent": 0.5}
    rows = separability.separations([0.6, None, 0.55, 0.1], baseline=0.1, spread=spread, n=16)
    assert rows[0]["vs_above"] is None and rows[1] == {"vs_baseline": None, "vs_above": None}
    assert rows[2]["vs_above"]["diff"] == pytest.approx(-0.05)  # against 0.6: the unscored row is skipped
    assert rows[3]["vs_baseline"]["diff"] == 0 and rows[3]["vs_baseline"]["told_apart"] is False
    assert rows[0]["vs_baseline"]["told_apart"] is True
