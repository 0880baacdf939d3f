"""The counts-based bootstrap: seeded and paired, intervals contain the point and shrink with N."""

import numpy as np
import pytest

from marsdiff.evaluation.bootstrap import (
    BIAS_SHIFTED,
    PERCENTILE,
    bias_shifted_interval,
    bootstrap_counts,
    percentile_interval,
)
from marsdiff.evaluation.distances import pairwise_distances
from marsdiff.evaluation.fidelity import MMDReference
from marsdiff.evaluation.manifold import ManifoldReference
from marsdiff.evaluation.metric import estimate


def test_counts_are_seeded_resamples_with_replacement_shared_by_models_of_equal_size():
    counts = bootstrap_counts(12, 40, seed=3)
    assert counts.shape == (40, 12) and np.all(counts.sum(axis=1) == 12) and np.all(counts >= 0)
    assert np.array_equal(counts, bootstrap_counts(12, 40, seed=3))  # same M and seed: paired replicates
    assert not np.array_equal(counts, bootstrap_counts(12, 40, seed=4))
    # about 1 - 1/e of the images are drawn at least once
    assert (counts > 0).mean() == pytest.approx(1 - np.exp(-1), abs=0.05)


def test_percentile_interval_is_the_quantiles_and_ignores_nan():
    values = np.concatenate([np.arange(101, dtype=float), [np.nan]])
    bounds = percentile_interval(values, 0.9)
    assert (bounds.low, bounds.high, bounds.method) == (pytest.approx(5.0), pytest.approx(95.0), PERCENTILE)


def test_bias_shifted_interval_moves_the_spread_onto_the_point():
    bounds = bias_shifted_interval(10.0, np.arange(101, dtype=float), 0.9)  # median 50
    assert (bounds.low, bounds.high, bounds.method) == (10.0 - 45.0, 10.0 + 45.0, BIAS_SHIFTED)


def mmd_estimate(n, seed, replicates=200):
    rng = np.random.default_rng(seed)
    y, x = rng.normal(size=(60, 3)), rng.normal(0.2, 1.0, size=(n, 3))
    metric = MMDReference(y, 1.5).metric(x, pairwise_distances(x), pairwise_distances(x, y))
    return estimate(metric, bootstrap_counts(n, replicates, seed), 0.95)


def test_percentile_interval_contains_the_point_and_shrinks_with_n():
    small, large = mmd_estimate(20, 1), mmd_estimate(320, 1)
    for result in (small, large):
        assert result.ci_low <= result.value <= result.ci_high
        assert result.interval_method == PERCENTILE
    assert (large.ci_high - large.ci_low) < 0.5 * (small.ci_high - small.ci_low)


def test_recall_needs_the_bias_shift_because_resamples_hold_fewer_distinct_images():
    rng = np.random.default_rng(2)
    y, x = rng.normal(size=(80, 8)), rng.normal(size=(80, 8))
    manifold = ManifoldReference(y, 3, 5)
    member = manifold.memberships(x, pairwise_distances(x), pairwise_distances(x, y))
    counts = bootstrap_counts(80, 300, seed=0)
    point = member.recall(np.ones((1, 80)))[0]
    replicates = member.recall(counts)
    plain = percentile_interval(replicates, 0.95)
    assert plain.high < point  # the plain percentile interval misses its own point estimate
    shifted = bias_shifted_interval(point, replicates, 0.95)
    assert shifted.low <= point <= shifted.high
    assert shifted.high - shifted.low == pytest.approx(plain.high - plain.low)
