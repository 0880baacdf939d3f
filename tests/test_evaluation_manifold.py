"""Precision, recall, density and coverage against brute-force loops, including ties and duplicates."""

import numpy as np
import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.distances import kth_neighbour_radius, pairwise_distances
from marsdiff.evaluation.manifold import ManifoldReference, precision_recall_density_coverage


def brute_radius(points, k):
    """Distance to the k-th nearest other point (a duplicate counts as another point)."""
    radii = []
    for i, p in enumerate(points):
        others = sorted(np.linalg.norm(p - q) for j, q in enumerate(points) if j != i)
        radii.append(others[k - 1])
    return np.array(radii)


def brute_prdc(x, y, k_pr, k_dc):
    """The papers' definitions with closed balls (distance <= radius)."""
    ry_pr, ry_dc, rx_pr = brute_radius(y, k_pr), brute_radius(y, k_dc), brute_radius(x, k_pr)
    dist = lambda a, b: float(np.linalg.norm(a - b))  # noqa: E731
    precision = np.mean([any(dist(xj, yi) <= ry_pr[i] for i, yi in enumerate(y)) for xj in x])
    recall = np.mean([any(dist(yi, xj) <= rx_pr[j] for j, xj in enumerate(x)) for yi in y])
    density = sum(dist(xj, yi) <= ry_dc[i] for xj in x for i, yi in enumerate(y)) / (k_dc * len(x))
    coverage = np.mean([any(dist(xj, yi) <= ry_dc[i] for xj in x) for i, yi in enumerate(y)])
    return dict(precision=precision, recall=recall, density=density, coverage=coverage)


def test_prdc_matches_brute_force_on_random_sets():
    rng = np.random.default_rng(5)
    x, y = rng.normal(0.3, 1.1, size=(14, 3)), rng.normal(size=(17, 3))
    got = precision_recall_density_coverage(x, y, 3, 5)
    expected = brute_prdc(x, y, 3, 5)
    assert got == pytest.approx(expected, abs=1e-12)


def test_prdc_with_ties_on_an_integer_grid_matches_brute_force():
    # Grid points: many equal distances, so radii tie and points sit exactly on ball boundaries.
    grid = np.array([[i, j] for i in range(4) for j in range(4)], dtype=float)
    x = np.array([[0.0, 1.0], [2.0, 2.0], [3.0, 0.0], [1.0, 3.0], [0.5, 0.5], [5.0, 5.0]])
    got = precision_recall_density_coverage(x, grid, 3, 5)
    assert got == pytest.approx(brute_prdc(x, grid, 3, 5), abs=1e-12)


def test_generated_equal_to_reference_gives_precision_and_recall_one():
    y = np.random.default_rng(6).normal(size=(20, 4))
    got = precision_recall_density_coverage(y.copy(), y, 3, 5)
    assert got["precision"] == 1.0 and got["recall"] == 1.0 and got["coverage"] == 1.0
    # Each point lies in its own ball and in the balls of the k points that have it as a neighbour.
    assert got["density"] == pytest.approx(1.0 + 1.0 / 5)


def test_duplicated_points_are_inside_their_twins_zero_radius_balls():
    # Two distinct points, each repeated 6 times: every k-NN radius (k <= 5) is 0.
    y = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0]]), 6, axis=0)
    assert np.all(kth_neighbour_radius(pairwise_distances(y), 5) == 0.0)
    got = precision_recall_density_coverage(np.array([[0.0, 0.0], [1.0, 1.0]]), y, 1, 5)
    assert got["coverage"] == 1.0  # with strict '<' (prdc package) this would be 0
    assert got["precision"] == 1.0
    assert got["density"] == pytest.approx((6 + 6) / (5 * 2))  # each generated point in 6 balls
    # A generated point a hair away from the duplicates reaches none of their zero-radius balls.
    off = precision_recall_density_coverage(np.array([[1e-9, 0.0], [1.0, 1.0]]), y, 1, 5)
    assert off["coverage"] == 0.5


def test_density_and_coverage_expected_values_for_identical_distributions():
    # Naeem et al.: E[density] = 1 and E[coverage] = 1 - prod_{i=1..k} (N - i) / (M + N - i).
    rng = np.random.default_rng(7)
    k, n, m = 5, 150, 150
    values = [precision_recall_density_coverage(rng.normal(size=(m, 2)), rng.normal(size=(n, 2)), 3, k) for _ in range(12)]
    expected_coverage = 1 - np.prod([(n - i) / (m + n - i) for i in range(1, k + 1)])
    assert np.mean([v["density"] for v in values]) == pytest.approx(1.0, abs=0.05)
    assert np.mean([v["coverage"] for v in values]) == pytest.approx(expected_coverage, abs=0.02)


def test_counts_reweight_precision_and_density_like_the_resample():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(15, 3))
    manifold = ManifoldReference(y, 3, 5)
    member = manifold.memberships(x, pairwise_distances(x), pairwise_distances(x, y))
    counts = np.array([[2, 0, 1, 1, 0, 3, 1, 0, 1, 1]], dtype=float)
    resample = np.repeat(x, counts[0].astype(int), axis=0)
    inside = [bool(np.any(pairwise_distances(r[None], y)[0] <= manifold.radius_precision)) for r in resample]
    balls = [int(np.sum(pairwise_distances(r[None], y)[0] <= manifold.radius_density)) for r in resample]
    assert member.precision(counts)[0] == pytest.approx(np.mean(inside))
    assert member.density(counts)[0] == pytest.approx(np.sum(balls) / (5 * len(resample)))
    # coverage of a resample: only the distinct images that were drawn can reach a ball
    drawn = x[counts[0] > 0]
    covered = [np.any(pairwise_distances(drawn, y[i : i + 1])[:, 0] <= manifold.radius_density[i]) for i in range(len(y))]
    assert member.coverage(counts)[0] == pytest.approx(np.mean(covered))


def test_k_not_smaller_than_the_set_size_is_a_one_line_error():
    y = np.random.default_rng(9).normal(size=(5, 2))
    with pytest.raises(MarsdiffError, match=r"k_density_coverage = 5 must be smaller than the number of held-out images \(5\)"):
        ManifoldReference(y, 3, 5)
    manifold = ManifoldReference(y, 3, 4)
    x = y[:3]
    with pytest.raises(MarsdiffError, match="k_precision_recall = 3 must be smaller than the number of generated images"):
        manifold.memberships(x, pairwise_distances(x), pairwise_distances(x, y))
