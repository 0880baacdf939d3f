"""Percentile bootstrap over generated images, written as per-image counts.

Every metric in this package is a function of **counts**: how many times each of the M
generated images is in the sample. A row of ones is the sample itself (the point estimate); a
row drawn from Multinomial(M, 1/M) is one bootstrap resample with replacement. Writing metrics
this way lets most of them evaluate all B replicates with one matrix product, and lets each
metric say what a repeated image means (a copy is one image counted twice, never a pair of
distinct images, see the metric modules).

What is resampled: the generated images only. The held-out reference, the train split, the
k-means clusters, the category classifier and the kernel bandwidth are fixed, so an interval
says how much the value depends on *which M images the model happened to produce*, conditional
on this held-out split. The real-vs-real baseline rows show how far real draws move a metric.

Paired replicates: :func:`bootstrap_counts` depends only on (M, B, seed), so every model with the
same M gets the same resampling indices in replicate b. Models sampled with the same seeds keep
their images paired, and the difference of two models' replicates is a paired bootstrap of the
difference.

Two interval rules (``PERCENTILE`` / ``BIAS_SHIFTED``):

* ``PERCENTILE``: the ``(1-c)/2`` and ``(1+c)/2`` quantiles of the replicates (Efron).
* ``BIAS_SHIFTED``: for metrics that a resample with repeated images moves systematically
  (a resample holds only about 63 % distinct images, so coverage, recall, mode counts and Vendi
  drop, and Fréchet distance and KL rise with the extra noise), or whose point estimate is
  computed differently from its replicates (KID: subset average vs full-set U-statistic), the
  plain percentile interval can miss its own point estimate. The interval is then the
  replicates' spread around their median, moved onto the point estimate:
  ``[v + q_lo - q_50, v + q_hi - q_50]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERCENTILE = "percentile"
BIAS_SHIFTED = "bias-shifted percentile"
INTERVAL_METHODS = (PERCENTILE, BIAS_SHIFTED)


def bootstrap_counts(n_images: int, replicates: int, seed: int) -> np.ndarray:
    """``(replicates, n_images)`` counts of resampling with replacement; seeded by (seed, n_images)."""
    rng = np.random.default_rng([seed, n_images])
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=replicates).astype(np.float64)


def point_counts(n_images: int) -> np.ndarray:
    """The counts of the sample itself: one row of ones."""
    return np.ones((1, n_images))


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str


def percentile_interval(replicates: np.ndarray, confidence: float) -> Interval:
    """Efron's percentile interval of the finite replicates."""
    values = _finite(replicates)
    if values.size == 0:
        return Interval(float("nan"), float("nan"), PERCENTILE)
    low, high = np.quantile(values, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return Interval(float(low), float(high), PERCENTILE)


def bias_shifted_interval(point: float, replicates: np.ndarray, confidence: float) -> Interval:
    """The replicates' percentile spread around their median, centred on the point estimate."""
    values = _finite(replicates)
    if values.size == 0 or not np.isfinite(point):
        return Interval(float("nan"), float("nan"), BIAS_SHIFTED)
    low, middle, high = np.quantile(values, [(1.0 - confidence) / 2.0, 0.5, (1.0 + confidence) / 2.0])
    # (low - middle) <= 0 <= (high - middle): adding them first keeps the point inside exactly
    return Interval(float(point + (low - middle)), float(point + (high - middle)), BIAS_SHIFTED)


def interval(point: float, replicates: np.ndarray, confidence: float, method: str) -> Interval:
    """The interval of one metric by its declared rule."""
    if method == PERCENTILE:
        return percentile_interval(replicates, confidence)
    if method == BIAS_SHIFTED:
        return bias_shifted_interval(point, replicates, confidence)
    raise ValueError(f"unknown interval method {method!r}; choose from {INTERVAL_METHODS}")


def _finite(replicates: np.ndarray) -> np.ndarray:
    values = np.asarray(replicates, dtype=np.float64).ravel()
    return values[np.isfinite(values)]
