"""Paired bootstrap of ratios of means: pairing, coverage and spread against the delta method."""

from __future__ import annotations

import numpy as np
import pytest

from partreid.metrics import paired_bootstrap_ratio, percentile_interval


def test_identical_rows_are_paired_exactly():
    rng = np.random.default_rng(0)
    den = rng.random(80)
    num = den * rng.random(80)
    b = paired_bootstrap_ratio(np.stack([num, num]), np.stack([den, den]), 500, seed=1)
    assert b.shape == (500, 2)
    np.testing.assert_array_equal(b[:, 0], b[:, 1])  # same resamples: the difference is 0
    assert b[:, 0].std() > 0


def test_constant_ratio_gives_a_point():
    den = np.linspace(0.1, 1.0, 50)
    b = paired_bootstrap_ratio(0.4 * den, den, 300)
    np.testing.assert_allclose(b, 0.4)


def test_seeded_and_nan_columns_left_out():
    rng = np.random.default_rng(2)
    num, den = rng.random((2, 60)), rng.random((2, 60)) + 0.1
    a = paired_bootstrap_ratio(num, den, 200, seed=5)
    np.testing.assert_array_equal(a, paired_bootstrap_ratio(num, den, 200, seed=5))
    assert not np.array_equal(a, paired_bootstrap_ratio(num, den, 200, seed=6))
    # queries without a valid match (NaN in any row) are dropped before drawing
    nan_num = np.insert(num, [0, 30], np.nan, axis=1)
    nan_den = np.insert(den, [0, 30], 1.0, axis=1)
    np.testing.assert_array_equal(a, paired_bootstrap_ratio(nan_num, nan_den, 200, seed=5))


def test_spread_matches_the_delta_method():
    rng = np.random.default_rng(3)
    q = 400
    den = rng.beta(2, 2, q)
    num = den * rng.uniform(0.2, 1.0, q)
    b = paired_bootstrap_ratio(num, den, 4000, seed=0)[:, 0]
    r = num.mean() / den.mean()
    delta_se = np.sqrt(np.var(num - r * den) / q) / den.mean()  # linearised ratio estimator
    assert b.std() == pytest.approx(delta_se, rel=0.1)
    assert np.median(b) == pytest.approx(r, abs=delta_se / 2)


def test_interval_covers_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(4)
    truth = 0.6  # E[den * u] / E[den] with u ~ U(0.3, 0.9) independent of den
    covered = 0
    trials = 200
    for t in range(trials):
        den = rng.beta(2, 2, 150)
        num = den * rng.uniform(0.3, 0.9, 150)
        lo, hi = percentile_interval(paired_bootstrap_ratio(num, den, 400, seed=t)[:, 0])
        covered += lo <= truth <= hi
    assert 0.88 <= covered / trials <= 0.99


def test_percentile_interval_and_errors():
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap_ratio(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap_ratio(np.full(3, np.nan), np.ones(3))
    with pytest.raises(ValueError, match="level"):
        percentile_interval(np.ones(3), 1.5)
