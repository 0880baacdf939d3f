"""Fréchet distance, KID and MMD^2 of marsdiff.evaluation against their published definitions,
written here as direct loops / dense linear algebra on small fixed data."""

import itertools

import numpy as np
import pytest
from scipy import linalg

from marsdiff.evaluation.fidelity import (
    FrechetReference,
    KIDReference,
    MMDReference,
    frechet_distance,
    kernel_inception_distance,
    polynomial_kernel,
    split_half_mmd2,
    weighted_unbiased_mmd2,
)
from marsdiff.evaluation.distances import pairwise_distances
from marsdiff.rewards.frechet import frechet_distance as reward_frechet
from marsdiff.rewards.mmd import mmd2 as reward_mmd2


@pytest.fixture
def sets():
    rng = np.random.default_rng(3)
    return rng.normal(size=(12, 4)), rng.normal(0.4, 1.3, size=(15, 4))


def frechet_by_definition(x, y):
    """||mu_x - mu_y||^2 + tr(S_x + S_y - 2 (S_x S_y)^1/2) with scipy's sqrtm (full-rank covariances)."""
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = linalg.sqrtm(sx @ sy).real
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(sx + sy - 2 * root))


def test_frechet_matches_definition_and_reward_module(sets):
    x, y = sets
    assert frechet_distance(x, y) == pytest.approx(frechet_by_definition(x, y), rel=1e-9)
    assert frechet_distance(x, y) == pytest.approx(reward_frechet(x, y).distance, rel=1e-9)


def test_frechet_with_fewer_rows_than_dimensions_matches_reward_module():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 20)), rng.normal(size=(9, 20))  # singular covariances
    assert frechet_distance(x, y) == pytest.approx(reward_frechet(x, y).distance, rel=1e-9)


def test_frechet_of_counts_equals_frechet_of_the_resample(sets):
    x, y = sets
    counts = np.array([[3, 0, 1, 0, 2, 1, 0, 0, 1, 2, 1, 1]], dtype=float)
    resample = np.repeat(x, counts[0].astype(int), axis=0)
    value = FrechetReference(y).statistic(x)(counts)[0]
    assert value == pytest.approx(frechet_by_definition(resample, y), rel=1e-9)


def test_frechet_of_a_set_with_itself_is_zero(sets):
    x, _ = sets
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def brute_unbiased_mmd2(x, y, kernel):
    n, m = len(x), len(y)
    xx = sum(kernel(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(kernel(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_kid_with_full_subsets_is_the_unbiased_polynomial_mmd(sets):
    x, y = sets
    y = y[: len(x)]  # equal sizes: every "subset" is the whole set
    d = x.shape[1]
    cubic = lambda a, b: (float(a @ b) / d + 1.0) ** 3  # noqa: E731
    assert polynomial_kernel(x[:1], y[:1])[0, 0] == pytest.approx(cubic(x[0], y[0]))
    expected = brute_unbiased_mmd2(x, y, cubic)
    assert kernel_inception_distance(x, y, subsets=3, subset_size=1000, seed=0) == pytest.approx(expected, rel=1e-10)


def test_kid_subset_average_estimates_the_full_set_value(sets):
    x, y = sets
    full = weighted_unbiased_mmd2(polynomial_kernel(x, x), polynomial_kernel(x, y), KIDReference(y, subsets=1, subset_size=len(y), seed=0).t_yy, np.ones((1, len(x))))[0]
    values = KIDReference(y, subsets=3000, subset_size=6, seed=0).subset_values(x)
    assert values.mean() == pytest.approx(full, abs=4 * values.std() / np.sqrt(len(values)))


def test_kid_metric_reports_the_subset_average_and_subset_size(sets):
    x, y = sets
    metric = KIDReference(y, subsets=7, subset_size=5, seed=2).metric(x)
    assert metric.point == pytest.approx(KIDReference(y, subsets=7, subset_size=5, seed=2).subset_values(x).mean())
    assert "7 subsets of 5" in metric.detail


def test_mmd2_matches_pairwise_loops_and_reward_module(sets):
    x, y = sets
    sigma = 1.9
    rbf = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))  # noqa: E731
    value = MMDReference(y, sigma).value(x)
    assert value == pytest.approx(brute_unbiased_mmd2(x, y, rbf), abs=1e-12)
    assert value == pytest.approx(reward_mmd2(x, y, bandwidth=sigma, estimator="unbiased", scale=1.0).mmd2, abs=1e-12)


def test_weighted_mmd_skips_pairs_of_an_image_with_its_own_copies(sets):
    x, y = sets
    sigma = 1.5
    counts = np.array([2, 0, 1, 3, 0, 0, 1, 1, 0, 2, 1, 1], dtype=float)
    origin = np.repeat(np.arange(len(x)), counts.astype(int))
    rbf = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))  # noqa: E731
    pairs = [(i, j) for i, j in itertools.permutations(range(len(origin)), 2) if origin[i] != origin[j]]
    xx = np.mean([rbf(x[origin[i]], x[origin[j]]) for i, j in pairs])
    yy = sum(rbf(y[i], y[j]) for i in range(len(y)) for j in range(len(y)) if i != j) / (len(y) * (len(y) - 1))
    xy = np.mean([rbf(x[o], y[j]) for o in origin for j in range(len(y))])
    reference = MMDReference(y, sigma)
    metric = reference.metric(x, pairwise_distances(x), pairwise_distances(x, y))
    assert metric.statistic(counts[None, :])[0] == pytest.approx(xx + yy - 2 * xy, abs=1e-12)


def test_split_half_baseline_uses_disjoint_halves():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(9, 3))
    kernel = np.exp(-pairwise_distances(y) ** 2 / 2.0)
    values = split_half_mmd2(kernel, repeats=4, seed=1)
    order_rng = np.random.default_rng([1, 9])
    rbf = lambda a, b: np.exp(-np.sum((a - b) ** 2) / 2.0)  # noqa: E731
    for value in values:
        order = order_rng.permutation(9)
        first, second = y[order[:4]], y[order[4:8]]
        assert value == pytest.approx(brute_unbiased_mmd2(first, second, rbf), abs=1e-12)
