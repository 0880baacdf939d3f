"""Memorisation check: are generated images closer to the training crops than new real crops are?

For each generated image, the distance to its nearest **train** feature vector; for each
held-out crop (real, never trained on), the same distance. The check compares medians:

    ratio = median_j d(generated_j, train) / median_i d(heldout_i, train)

A model that reproduces its training crops puts its images on top of them (ratio well below 1);
one that makes new craters as a real survey would has a ratio about 1. Above 1 means the images
are farther from every real crop than real crops are (often: less realistic; see precision).
The check **passes** when ``ratio >= memorisation_min_ratio`` (0.8 by default). An exact copy of a
train crop is at distance 0 (distances are exact, see :mod:`.distances`); the detail column also
counts generated images closer to train than the closest held-out crop is.

Bootstrap: both medians are estimates (of 64-odd generated images and of the 103-odd held-out
crops), so each replicate resamples both: the weighted median of the generated distances over the
counts, over the median of a resample of the held-out distances (seeded by the evaluation seed
and the replicate count, so that every model of one evaluation meets the same held-out
resamples). Plain percentile interval. The ``memorisation_pass`` row is 1 or 0; its interval
spans the pass/fail values of the replicates (``[1, 1]``: every replicate passes).
"""

from __future__ import annotations

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.bootstrap import PERCENTILE, bootstrap_counts
from marsdiff.evaluation.distances import pairwise_distances
from marsdiff.evaluation.metric import Metric


def nearest_train_distance(features: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Distance from each row to its nearest train row (exact, chunked to bound memory)."""
    chunk = max(1, 2_000_000 // max(1, len(train)))
    return np.concatenate(
        [pairwise_distances(features[start : start + chunk], train).min(axis=1) for start in range(0, len(features), chunk)]
    )


def weighted_median(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Median of ``values`` repeated ``counts`` times, for each row of counts (lower median on ties,
    averaged with the next value when the total count is even, like ``np.median``)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    cumulative = np.cumsum(counts[:, order], axis=1)
    totals = cumulative[:, -1]
    # 0-based ranks of the two middle elements of the expanded sample
    lower_rank = np.floor((totals - 1) / 2.0)
    upper_rank = np.ceil((totals - 1) / 2.0)
    lower = np.array([sorted_values[np.searchsorted(c, r, side="right")] for c, r in zip(cumulative, lower_rank)])
    upper = np.array([sorted_values[np.searchsorted(c, r, side="right")] for c, r in zip(cumulative, upper_rank)])
    return 0.5 * (lower + upper)


class MemorisationReference:
    """Held-out crops' nearest-train distances, computed once; the pass threshold and the bootstrap
    seed come with each :meth:`metrics` call (``evaluation.metrics.memorisation_min_ratio``, ``seed``)."""

    def __init__(self, heldout: np.ndarray, train: np.ndarray):
        self.train = train
        self.heldout_distances = nearest_train_distance(heldout, train)
        self.heldout_median = float(np.median(self.heldout_distances))
        if not self.heldout_median > 0.0:
            raise MarsdiffError(
                "half the held-out crops have an identical train crop (median distance 0): "
                "the held-out and train splits share images, so memorisation cannot be checked"
            )

    def ratio(self, generated: np.ndarray) -> float:
        """Median generated-to-train distance over the held-out crops' median."""
        return float(np.median(nearest_train_distance(generated, self.train)) / self.heldout_median)

    def heldout_medians(self, replicates: int, seed: int) -> np.ndarray:
        """The held-out median in each of ``replicates`` bootstrap resamples of the held-out crops."""
        counts = bootstrap_counts(len(self.heldout_distances), replicates, seed)
        return weighted_median(self.heldout_distances, counts)

    def metrics(self, generated: np.ndarray, min_ratio: float, seed: int) -> list[Metric]:
        """Ratio and pass rows (pass: ratio >= ``min_ratio``); their statistics are bootstrap
        replicates (both sides resampled, the held-out side by ``seed``), their point values the
        ratio of the two samples themselves."""
        distances = nearest_train_distance(generated, self.train)
        closer_than_any_real = int(np.count_nonzero(distances < self.heldout_distances.min()))
        point = float(np.median(distances) / self.heldout_median)

        def ratio(counts: np.ndarray) -> np.ndarray:
            with np.errstate(divide="ignore", invalid="ignore"):
                return weighted_median(distances, counts) / self.heldout_medians(len(counts), seed)

        def passed(counts: np.ndarray) -> np.ndarray:
            return (ratio(counts) >= min_ratio).astype(np.float64)

        detail = (
            f"median NN distance to train {np.median(distances):.4g} vs held-out {self.heldout_median:.4g}; "
            f"{closer_than_any_real} generated closer to train than any held-out crop"
        )
        return [
            Metric("memorisation_ratio", True, ratio, PERCENTILE, detail, point=point, value_range=(0.0, np.inf)),
            Metric(
                "memorisation_pass",
                True,
                passed,
                PERCENTILE,
                f"1 = pass: ratio >= {min_ratio:g}",
                point=float(point >= min_ratio),
                value_range=(0.0, 1.0),
            ),
        ]
