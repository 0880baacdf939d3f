"""Every reward formula against a direct (brute-force) computation."""

import math

import numpy as np
import pytest

from marsdiff.rewards import (
    cmmd,
    conditional_information_gain,
    frechet_distance,
    information_gain,
    median_heuristic,
    mmd2,
    vendi_score,
)


def rbf(a, b, sigma):
    return math.exp(-sum((p - q) ** 2 for p, q in zip(a, b)) / (2 * sigma * sigma))


@pytest.fixture
def sets():
    rng = np.random.default_rng(1)
    return rng.normal(size=(9, 4)), rng.normal(0.3, 1.2, size=(11, 4))


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_mmd2_matches_pairwise_sums(sets, estimator):
    x, y = sets
    sigma = 1.7
    n, m = len(x), len(y)
    skip_diag = estimator == "unbiased"
    xx = sum(rbf(x[i], x[j], sigma) for i in range(n) for j in range(n) if not (skip_diag and i == j))
    yy = sum(rbf(y[i], y[j], sigma) for i in range(m) for j in range(m) if not (skip_diag and i == j))
    xy = sum(rbf(x[i], y[j], sigma) for i in range(n) for j in range(m))
    if skip_diag:
        expected = xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2 * xy / (n * m)
    else:
        expected = xx / n**2 + yy / m**2 - 2 * xy / (n * m)
    result = mmd2(x, y, bandwidth=sigma, estimator=estimator, scale=3.0)
    assert result.mmd2 == pytest.approx(3.0 * expected, abs=1e-12)
    assert result.reward == -result.mmd2
    assert (result.bandwidth, result.bandwidth_source, result.estimator) == (sigma, "fixed", estimator)


def test_median_bandwidth_is_reported(sets):
    x, y = sets
    distances = [np.linalg.norm(y[i] - y[j]) for i in range(len(y)) for j in range(i + 1, len(y))]
    result = mmd2(x, y, "median", "unbiased", 1.0)
    assert result.bandwidth_source == "median"
    assert result.bandwidth == pytest.approx(float(np.median(distances)), rel=1e-12)
    assert median_heuristic(y) == pytest.approx(float(np.median(distances)), rel=1e-12)


def test_cmmd_conventions(sets):
    x, y = sets
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    yu = y / np.linalg.norm(y, axis=1, keepdims=True)
    expected = 1000 * mmd2(xu, yu, bandwidth=10.0, estimator="biased", scale=1.0).mmd2
    result = cmmd(x, y)
    assert result.mmd2 == pytest.approx(expected, rel=1e-12)
    assert (result.bandwidth, result.scale, result.unit_norm, result.estimator) == (10.0, 1000.0, True, "biased")
    # on unit vectors with sigma = 10, CMMD is close to 10 ||mean_x - mean_y||^2
    assert result.mmd2 == pytest.approx(10 * np.sum((xu.mean(0) - yu.mean(0)) ** 2), rel=0.05)


def test_torch_and_float32_inputs_are_converted(sets):
    torch = pytest.importorskip("torch")
    x, y = sets
    expected = mmd2(x, y, 2.0, "unbiased", 1.0).mmd2
    got = mmd2(torch.tensor(x), torch.tensor(y, dtype=torch.float64), 2.0, "unbiased", 1.0).mmd2
    assert got == pytest.approx(expected, abs=1e-15)
    assert mmd2(x.astype(np.float32), y, 2.0, "unbiased", 1.0).mmd2 == pytest.approx(expected, abs=1e-6)


def test_information_gain_is_half_logdet(sets):
    x, y = sets
    s2 = 0.3
    k = np.array([[rbf(a, b, 1.5) for b in x] for a in x])
    expected = 0.5 * np.linalg.slogdet(np.eye(len(x)) + k / s2)[1]
    result = information_gain(x, bandwidth=1.5, noise_var=s2)
    assert result.gain == pytest.approx(expected, abs=1e-12)
    assert result.reward == result.gain and not result.conditional


def test_conditional_gain_is_chain_rule(sets):
    x, y = sets
    s2 = 0.2
    joint = information_gain(np.vstack([x, y]), bandwidth=1.5, noise_var=s2).gain
    alone = information_gain(y, bandwidth=1.5, noise_var=s2).gain
    result = conditional_information_gain(x, y, bandwidth=1.5, noise_var=s2)
    assert result.gain == pytest.approx(joint - alone, abs=1e-10)
    assert 0 < result.gain < information_gain(x, bandwidth=1.5, noise_var=s2).gain


def test_frechet_matches_eigenvalue_formula():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 5)), rng.normal(0.5, 2.0, size=(50, 5))
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(sy)
    root = v @ np.diag(np.sqrt(w)) @ v.T
    eig = np.linalg.eigvalsh(root @ sx @ root)
    expected = np.sum((mx - my) ** 2) + np.trace(sx) + np.trace(sy) - 2 * np.sum(np.sqrt(eig))
    result = frechet_distance(x, y)
    assert result.distance == pytest.approx(expected, abs=1e-10)
    assert result.reward == -result.distance
    assert frechet_distance(y, x).distance == pytest.approx(expected, abs=1e-10)  # symmetric
    assert isinstance(result.distance, float)


def test_frechet_singular_covariances_stay_real():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 20)), rng.normal(size=(8, 20))  # n < d: singular covariances
    result = frechet_distance(x, y)
    assert np.isfinite(result.distance) and result.distance > 0
    assert abs(frechet_distance(y, y).distance) < 1e-9


def test_vendi_score_definition(sets):
    x, _ = sets
    k = np.array([[rbf(a, b, 2.0) for b in x] for a in x])
    lam = np.linalg.eigvalsh(k / len(x))
    lam = lam[lam > 0]
    expected = math.exp(-np.sum(lam * np.log(lam)))
    result = vendi_score(x, bandwidth=2.0)
    assert result.score == pytest.approx(expected, rel=1e-12)
    assert 1.0 <= result.score <= len(x)
    # n identical points count as one mode; n far-apart points as n modes
    assert vendi_score(np.zeros((5, 3)), bandwidth=1.0).score == pytest.approx(1.0, abs=1e-9)
    assert vendi_score(np.eye(5) * 100, bandwidth=1.0).score == pytest.approx(5.0, abs=1e-9)
