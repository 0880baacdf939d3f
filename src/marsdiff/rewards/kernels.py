"""The RBF kernel and its bandwidth, shared by MMD, GP information gain and Vendi.

``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))`` with ``k(x, x) = 1``. The bandwidth ``sigma`` is
either a fixed positive number or the median heuristic: the median Euclidean distance between
distinct rows of a feature set (the reference set inside a :class:`RewardModel`, so the reward's
scale does not drift as the policy changes). Every reward result records the bandwidth it used
and where it came from (``"fixed"`` or ``"median"``).

The evaluation metrics (``marsdiff.evaluation.fidelity`` and ``.diversity``) use the same kernel
formula (:func:`kernel_from_sq_distances`) and pair median (:func:`pair_median`) on their own
distance matrices: they take distances from ``scipy.spatial.distance.cdist`` (exact zeros for
duplicates, which their k-NN balls need), the rewards from :func:`squared_distances` (one GEMM,
the fast path for the per-round leave-one-out credit).
"""

from __future__ import annotations

import math

import numpy as np

from marsdiff.errors import MarsdiffError

#: Above this many rows the median heuristic uses a fixed random subset (distances are O(m^2)).
MEDIAN_MAX_ROWS = 4000
#: The seed of that subset (not a config setting: the bandwidth of a feature set never varies).
MEDIAN_SEED = 0
#: The reward terms' own ``"median"`` bandwidth is the plain median heuristic: the configured
#: ``reward.bandwidth_scale`` is applied by :class:`~marsdiff.rewards.combined.RewardModel`, which
#: resolves the bandwidth once on the reference and hands the terms a number.
PLAIN_MEDIAN_SCALE = 1.0


def squared_distances(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Pairwise squared Euclidean distances (float64, clipped at 0; exact 0 on the diagonal of a vs a)."""
    same = b is None
    b = a if same else b
    d2 = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0.0, out=d2)
    if same:
        np.fill_diagonal(d2, 0.0)
    return d2


def check_bandwidth(bandwidth: float) -> float:
    try:
        value = float(bandwidth)
    except (TypeError, ValueError):
        raise MarsdiffError(f"kernel bandwidth must be a positive number or 'median', got {bandwidth!r}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise MarsdiffError(f"kernel bandwidth must be a positive finite number, got {value}")
    return value


def rbf_kernel(a: np.ndarray, b: np.ndarray | None, bandwidth: float) -> np.ndarray:
    """RBF kernel matrix between the rows of ``a`` and ``b`` (``b=None``: ``a`` with itself)."""
    sigma = check_bandwidth(bandwidth)
    return np.exp(squared_distances(a, b) / (-2.0 * sigma * sigma))


def kernel_from_sq_distances(sq_distances: np.ndarray, bandwidth: float) -> np.ndarray:
    """RBF kernel from precomputed squared distances (lets callers reuse one distance matrix)."""
    sigma = check_bandwidth(bandwidth)
    return np.exp(sq_distances / (-2.0 * sigma * sigma))


def pair_median(distances: np.ndarray) -> float:
    """Median of a square distance matrix over the pairs i < j (no check that it is > 0)."""
    upper = np.triu_indices(len(distances), k=1)
    return float(np.median(distances[upper]))


def median_heuristic(features: np.ndarray, sq_distances: np.ndarray | None = None) -> float:
    """Median Euclidean distance over pairs i < j of rows; raises if it is 0 (identical features).

    ``sq_distances``: the rows' precomputed squared-distance matrix, if the caller has it. Above
    MEDIAN_MAX_ROWS rows the median is taken on a fixed-seed subsample (MEDIAN_SEED), so the
    bandwidth of a given feature set is always the same.
    """
    if len(features) < 2:
        raise MarsdiffError("the median-heuristic bandwidth needs at least 2 feature rows")
    if sq_distances is None:
        if len(features) > MEDIAN_MAX_ROWS:
            rows = np.random.default_rng(MEDIAN_SEED).choice(len(features), MEDIAN_MAX_ROWS, replace=False)
            features = features[np.sort(rows)]
        sq_distances = squared_distances(features)
    # The median of the distances, not the root of the median squared distance: with an even
    # number of pairs the median averages the two middle values, and the mean of two squares
    # is not the square of their mean.
    median = pair_median(np.sqrt(sq_distances))
    if not median > 0.0:
        raise MarsdiffError(
            "median-heuristic bandwidth is 0: at least half of the feature pairs are identical "
            "(all-identical inputs?); set reward.bandwidth to a fixed number"
        )
    return median


def resolve_bandwidth(
    bandwidth: float | str, features: np.ndarray, scale: float, sq_distances: np.ndarray | None = None
) -> tuple[float, str]:
    """``(sigma, source)``: a fixed number as given, or ``scale`` x the median heuristic on ``features``."""
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise MarsdiffError(f"kernel bandwidth must be a positive number or 'median', got {bandwidth!r}")
        median = median_heuristic(features, sq_distances=sq_distances)
        return check_bandwidth(check_bandwidth(scale) * median), "median"
    return check_bandwidth(bandwidth), "fixed"
