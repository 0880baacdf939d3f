"""Diversity within the generated set: Vendi score and near-duplicate pairs.

**Vendi score** (Friedman & Dieng 2022), order 1: ``exp(-sum_i l_i log l_i)`` over the eigenvalues
``l_i`` of ``K / n`` (RBF kernel, unit diagonal), the effective number of distinct images, from 1
to n. The bandwidth is the MMD one (fixed from the held-out median distance), so Vendi values of
different models are on one scale. With image weights ``p`` (counts / total) the paper's weighted
form uses the eigenvalues of ``diag(sqrt p) K diag(sqrt p)``; for counts this is exactly the Vendi
score of the resample with its repeated images (:func:`marsdiff.rewards.vendi.weighted_vendi`,
the reward's Vendi: one implementation). A resample has fewer distinct images, so the
replicates drop: bias-shifted interval.

**Near-duplicate pairs**: pairs of distinct generated images at distance ``<= fraction x`` the
held-out set's median nearest-neighbour distance (the held-out set says what "close" means for
real craters in this feature space, the same rule as the reward's ``duplicate_factor``). In a
bootstrap resample, an image and its own copy are not a pair; the count of distinct pairs is
rescaled to the M(M-1)/2 pairs of the sample (plain percentile interval).
"""

from __future__ import annotations

import numpy as np

from marsdiff.evaluation.bootstrap import BIAS_SHIFTED, PERCENTILE
from marsdiff.evaluation.fidelity import rbf_from_distances
from marsdiff.evaluation.metric import Metric
from marsdiff.rewards.vendi import weighted_vendi


def vendi_metric(generated_distances: np.ndarray, bandwidth: float) -> Metric:
    kernel = rbf_from_distances(generated_distances, bandwidth)

    def vendi(counts: np.ndarray) -> np.ndarray:
        return np.array([weighted_vendi(kernel, weights) for weights in counts])

    return Metric(
        "vendi",
        higher_is_better=True,
        statistic=vendi,
        interval_method=BIAS_SHIFTED,
        detail=f"order 1, RBF sigma={bandwidth:.4g}; effective number of distinct images (1..n)",
        value_range=(1.0, float(len(kernel))),
    )


def near_duplicate_threshold(heldout_nn_distances: np.ndarray, fraction: float) -> float:
    """``fraction`` x the median distance from a held-out image to its nearest other held-out image."""
    return float(fraction * np.median(heldout_nn_distances))


def near_duplicate_pairs(generated_distances: np.ndarray, threshold: float) -> int:
    """Number of pairs i < j of generated images at distance <= threshold."""
    upper = np.triu_indices(len(generated_distances), k=1)
    return int(np.count_nonzero(generated_distances[upper] <= threshold))


def near_duplicate_metric(generated_distances: np.ndarray, threshold: float, fraction: float) -> Metric:
    close = (generated_distances <= threshold).astype(np.float64)
    np.fill_diagonal(close, 0.0)  # an image is not its own duplicate
    n = len(close)
    all_pairs = n * (n - 1) / 2.0

    def pairs(counts: np.ndarray) -> np.ndarray:
        close_pairs = np.einsum("bi,bi->b", counts @ close, counts) / 2.0
        distinct_pairs = (counts.sum(axis=1) ** 2 - (counts**2).sum(axis=1)) / 2.0
        with np.errstate(invalid="ignore", divide="ignore"):
            return close_pairs / distinct_pairs * all_pairs

    return Metric(
        "near_duplicate_pairs",
        higher_is_better=False,
        statistic=pairs,
        interval_method=PERCENTILE,
        detail=f"pairs at distance <= {threshold:.4g} = {fraction:g} x held-out median NN distance",
        value_range=(0.0, all_pairs),
    )
