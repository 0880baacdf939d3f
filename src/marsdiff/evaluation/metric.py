"""What one evaluation metric is: a name, a direction, an interval rule and a statistic of counts.

A :class:`Metric` does not hold a value; its ``statistic`` maps a ``(B, M)`` matrix of per-image
counts to ``B`` values (see :mod:`marsdiff.evaluation.bootstrap`). :func:`estimate` runs it on
the sample itself and on the bootstrap counts and returns a :class:`MetricEstimate`, the row the
results table is made of.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from marsdiff.evaluation.bootstrap import PERCENTILE, interval


#: Metrics that are pass/fail checks rather than scores: no direction to push them, no "best" value.
CHECK_PREFIXES = ("memorisation_",)


def is_check(metric_name: str) -> bool:
    return metric_name.startswith(CHECK_PREFIXES)


def direction_symbol(metric_name: str, higher_is_better: bool) -> str:
    """↑ / ↓ for a score, "check" for a pass/fail check (memorisation: a larger ratio is not better)."""
    if is_check(metric_name):
        return "check"
    return "↑" if higher_is_better else "↓"


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    statistic: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    interval_method: str = PERCENTILE
    detail: str = ""
    #: a point estimate computed another way than ``statistic`` on all-ones counts (KID's
    #: subset average); None = ``statistic`` of the sample itself.
    point: float | None = None
    #: the values the metric can take (a share is in [0, 1]); intervals are clipped to it.
    value_range: tuple[float, float] = (-np.inf, np.inf)


@dataclass(frozen=True)
class MetricEstimate:
    name: str
    value: float
    ci_low: float
    ci_high: float
    higher_is_better: bool
    interval_method: str
    detail: str
    replicates: np.ndarray = field(repr=False)


def estimate(metric: Metric, counts: np.ndarray, confidence: float) -> MetricEstimate:
    """Point estimate (all counts 1) and bootstrap interval of one metric."""
    n_images = counts.shape[1]
    if metric.point is None:
        value = float(np.asarray(metric.statistic(np.ones((1, n_images))))[0])
    else:
        value = float(metric.point)
    replicates = np.asarray(metric.statistic(counts), dtype=np.float64)
    bounds = interval(value, replicates, confidence, metric.interval_method)
    # A bias-shifted interval can step outside a bounded metric's range (coverage above 1).
    lowest, highest = metric.value_range
    low, high = float(np.clip(bounds.low, lowest, highest)), float(np.clip(bounds.high, lowest, highest))
    return MetricEstimate(metric.name, value, low, high, metric.higher_is_better, bounds.method, metric.detail, replicates)
