"""FD, MMD^2 and Vendi are implemented once (marsdiff.rewards) and give the reward and the
evaluation metric the same number on the same inputs; the shared FD is checked against a closed
form, both for references with fewer rows than dimensions (factor: the centred rows) and with
more (factor: the covariance's symmetric root)."""

from __future__ import annotations

import numpy as np
import pytest

from marsdiff.evaluation import diversity, fidelity
from marsdiff.evaluation.distances import pairwise_distances
from marsdiff.rewards.frechet import Frechet, FrechetReference
from marsdiff.rewards.kernels import kernel_from_sq_distances, pair_median, rbf_kernel
from marsdiff.rewards.mmd import MMD, mmd2_from_kernels, weighted_unbiased_mmd2, within_mean
from marsdiff.rewards.vendi import Vendi, weighted_vendi


def axis_aligned_pair(d: int, x_scales: list[float], y_scales: list[float], seed: int):
    """Two sets whose centred rows are +-scale along shared axes, rotated by one random orthogonal
    matrix, and their FD in closed form: the covariances commute, so
    FD = |mu_x - mu_y|^2 + sum_i (sqrt(sx_i) - sqrt(sy_i))^2 with sx_i = 2 a_i^2 / (n - 1)."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))

    def points(scales):
        rows = [sign * scale * np.eye(d)[axis] for axis, scale in enumerate(scales) for sign in (1, -1)]
        return np.array(rows), np.array([2 * s**2 / (len(rows) - 1) for s in scales])

    x, sx = points(x_scales)
    y, sy = points(y_scales)
    shift_x, shift_y = rng.normal(size=d), rng.normal(size=d)
    k = max(len(sx), len(sy))
    sx, sy = np.pad(sx, (0, k - len(sx))), np.pad(sy, (0, k - len(sy)))
    expected = float(np.sum((shift_x - shift_y) ** 2) + np.sum((np.sqrt(sx) - np.sqrt(sy)) ** 2))
    return (x + shift_x) @ rotation.T, (y + shift_y) @ rotation.T, expected


def test_shared_frechet_on_singular_covariances_matches_the_closed_form():
    # 6 reference rows and 4 generated rows in 9 dimensions: both covariances singular
    x, y, expected = axis_aligned_pair(9, [1.0, 2.0], [1.5, 0.7, 3.0], seed=3)
    reference = FrechetReference(y)
    assert reference.factor_scale != 1.0  # fewer rows than dimensions: the centred rows are the factor
    assert reference.distance(x) == pytest.approx(expected, rel=1e-12)
    assert Frechet(y).value(x).distance == pytest.approx(expected, rel=1e-12)


def test_shared_frechet_with_more_reference_rows_than_dimensions_matches_the_eigenvalue_formula():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1.4, size=(40, 5))
    reference = FrechetReference(y)
    assert reference.factor_scale == 1.0  # the d x d symmetric root is the smaller factor
    assert reference.distance(x) == pytest.approx(frechet_by_eigenvalues(x, y), rel=1e-12)
    x2, y2, _ = axis_aligned_pair(3, [1.0, 2.0, 0.5], [1.5, 0.7, 3.0], seed=5)
    y2 = np.vstack([y2, y2])  # 12 rows > 3 dims; repeating the rows scales S_y by 5/11
    assert FrechetReference(y2).factor_scale == 1.0
    sx = 2 * np.array([1.0, 2.0, 0.5]) ** 2 / 5
    sy = 4 * np.array([1.5, 0.7, 3.0]) ** 2 / 11
    mean_term = float(np.sum((x2.mean(0) - y2.mean(0)) ** 2))
    assert FrechetReference(y2).distance(x2) == pytest.approx(mean_term + np.sum((np.sqrt(sx) - np.sqrt(sy)) ** 2),
                                                              rel=1e-12)


def frechet_by_eigenvalues(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook route for full-rank covariances: eigenvalues of S_y^1/2 S_x S_y^1/2."""
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(sy)
    root = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root @ sx @ root)
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(sx) + np.trace(sy) - 2 * np.sum(np.sqrt(inner)))


def test_reward_and_evaluation_frechet_are_the_same_number():
    rng = np.random.default_rng(5)
    for m in (30, 200):  # both factors
        x, y = rng.normal(size=(24, 64)), rng.normal(0.2, 1.1, size=(m, 64))
        result = Frechet(y).value(x)
        assert result.distance == fidelity.frechet_distance(x, y)
        assert result.distance == pytest.approx(result.mean_term + result.trace_term, rel=1e-14)


def test_frechet_leave_one_out_is_the_recomputed_distance():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(10, 4))
    credits = Frechet(y).leave_one_out(x)
    full = frechet_by_eigenvalues(x, y)
    for a in range(len(x)):
        expected = frechet_by_eigenvalues(np.delete(x, a, axis=0), y) - full
        assert credits[a] == pytest.approx(expected, abs=1e-12)


def test_reward_and_evaluation_mmd_share_kernel_and_estimator():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(20, 6)), rng.normal(0.5, 1.0, size=(25, 6))
    sigma = 1.7
    reward = MMD(y, bandwidth=sigma, estimator="unbiased", scale=1.0).value(x).mmd2
    # on the same kernel matrices the evaluation's estimator is the reward's, to the bit
    kxx, kyy, kxy = rbf_kernel(x, None, sigma), rbf_kernel(y, None, sigma), rbf_kernel(x, y, sigma)
    assert fidelity.unbiased_mmd2(kxx, kyy, kxy) == reward
    # the evaluation metric's kernels come from exact (cdist) distances: the same number to rounding
    assert fidelity.MMDReference(y, sigma).value(x) == pytest.approx(reward, rel=1e-12, abs=1e-14)
    assert fidelity.rbf_from_distances(pairwise_distances(x, y), sigma) == pytest.approx(kxy, rel=1e-13, abs=1e-15)


def test_mmd_estimators_match_pair_sums():
    rng = np.random.default_rng(8)
    kxx, kxy = (lambda a: a @ a.T)(rng.normal(size=(7, 3))), rng.normal(size=(7, 5))
    kyy = (lambda a: a @ a.T)(rng.normal(size=(5, 3)))
    n, m = 7, 5
    off = lambda k, size: sum(k[i, j] for i in range(size) for j in range(size) if i != j)  # noqa: E731
    assert within_mean(kxx, "unbiased") == pytest.approx(off(kxx, n) / (n * (n - 1)), rel=1e-14)
    assert within_mean(kxx, "biased") == pytest.approx(kxx.sum() / n**2, rel=1e-14)
    unbiased = off(kxx, n) / (n * (n - 1)) + off(kyy, m) / (m * (m - 1)) - 2 * kxy.sum() / (n * m)
    assert mmd2_from_kernels(kxx, kxy, within_mean(kyy, "unbiased"), "unbiased") == pytest.approx(unbiased, rel=1e-13)
    ones = weighted_unbiased_mmd2(kxx, kxy, within_mean(kyy, "unbiased"), np.ones((1, n)))[0]
    assert ones == pytest.approx(unbiased, rel=1e-13)


def test_rbf_formula_and_pair_median_are_one_definition():
    d = np.array([[0.0, 1.0, 3.0, 2.0], [1.0, 0.0, 5.0, 4.0], [3.0, 5.0, 0.0, 6.0], [2.0, 4.0, 6.0, 0.0]])
    assert pair_median(d) == 3.5  # pairs 1, 3, 2, 5, 4, 6
    assert fidelity.median_pairwise_distance(d) == 3.5
    np.testing.assert_array_equal(fidelity.rbf_from_distances(d, 2.0), kernel_from_sq_distances(d**2, 2.0))
    assert kernel_from_sq_distances(np.array([8.0]), 2.0)[0] == pytest.approx(np.exp(-1.0), rel=1e-15)


def test_reward_and_evaluation_vendi_are_the_same_number():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(15, 4))
    sigma = 1.2
    reward = Vendi(None, bandwidth=sigma).value(x).score
    kernel = rbf_kernel(x, None, sigma)
    eigenvalues = np.linalg.eigvalsh(kernel / len(x))
    eigenvalues = eigenvalues[eigenvalues > 0]
    expected = float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))
    assert reward == pytest.approx(expected, rel=1e-13)
    assert weighted_vendi(kernel, np.ones(len(x))) == pytest.approx(reward, rel=1e-13)
    metric = diversity.vendi_metric(pairwise_distances(x), sigma)
    assert metric.statistic(np.ones((1, len(x))))[0] == pytest.approx(reward, rel=1e-12)


def test_vendi_leave_one_out_is_the_recomputed_score():
    x = np.random.default_rng(10).normal(size=(8, 3))
    vendi = Vendi(None, bandwidth=0.9)
    credits = vendi.leave_one_out(x)
    full = vendi.value(x).score
    for a in range(len(x)):
        assert credits[a] == pytest.approx(full - vendi.value(np.delete(x, a, axis=0)).score, abs=1e-12)
