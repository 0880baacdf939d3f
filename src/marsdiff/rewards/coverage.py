"""Soft reference-side coverage of the reference crops by a generated set, with exact credit.

Each generated image x_i *reaches* reference crop r_j with weight ``a_ij``: the RBF kernel
normalised over the reference (a soft nearest-crop assignment, temperature sigma),

    a_ij = exp(-||x_i - r_j||^2 / 2 sigma^2) / sum_l exp(-||x_i - r_l||^2 / 2 sigma^2)   in [0, 1],

and, reading a_ij as the probability that i reaches j independently of the other images, crop j
is reached by at least one image of S with probability ``1 - prod_{i in S} (1 - a_ij)`` (a
noisy-OR). Coverage is the mean over the m crops:

    C(S) = (1/m) sum_j [1 - prod_{i in S} (1 - a_ij)]         in [0, n/m], reward = +C

C is monotone and submodular in S: a crop already reached pays little for being reached again,
so a set rises in C by spreading its images over distinct crops, not by piling them onto the
dense part of the reference (the MMD term's pull towards where the model already samples).

Why normalised over the reference, not the raw kernel ``k_ij``: in these 256-D features the
centroid of the reference is nearer to almost every crop than the crops are to each other
(it lies inside 91 % of the crops' 5-NN balls on the default features), so with a raw kernel,
or any fixed radius, a set collapsed onto the centroid "covers" the most and the noise ladder
runs backwards (per-draw rho -0.98 measured). With ``sum_j a_ij = 1`` every image carries one
unit of reach, and n copies of one image cover what one covers.

Leave-one-out credit, exact, O(n m) after one kernel pass. With ``P_j = prod_i (1 - a_ij)`` and
``P_-i,j`` the product without image i, ``P_j = (1 - a_ij) P_-i,j`` (a_ij does not depend on the
other images), so

    C(S) - C(S - i) = (1/m) sum_j [P_-i,j - P_j] = (1/m) sum_j a_ij * P_-i,j

the reach of image i onto crops that *no other image* reaches. Duplicates split that credit.

Numerics. ``1 - a_ij = sum_{l != j} e_il / sum_l e_il`` is computed from the other columns'
sum (shifted exponentials; for each row's largest entry the sum of the rest directly, so
``a -> 1`` does not cancel), and products of many factors as sums of logarithms. A factor of
exactly 0 (every other crop's weight underflows) has log -inf; it is counted instead of summed,
so the product without image i is 0 when another image also fully reaches the crop, ``exp(sum
of the others' logs)`` otherwise, and no division by ``1 - a`` ever happens.

sigma is the reward's shared bandwidth times ``kernel_scale`` (an option of this kind).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from marsdiff.rewards.inputs import as_features, check_same_dim
from marsdiff.rewards.kernels import PLAIN_MEDIAN_SCALE, check_bandwidth, resolve_bandwidth, squared_distances


@dataclass(frozen=True)
class CoverageResult:
    coverage: float
    bandwidth: float
    bandwidth_source: str
    kernel_scale: float
    n_generated: int
    n_reference: int

    @property
    def reward(self) -> float:
        return self.coverage


def reach(sq_distances: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``(a, log(1 - a))`` of the (n, m) squared distances: the kernel normalised over the reference.

    ``log(1 - a)`` is -inf exactly where a == 1 (every other crop's weight underflows).
    """
    logits = sq_distances / (-2.0 * sigma * sigma)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))  # the largest entry of a row is exactly 1
    total = e.sum(axis=1, keepdims=True)
    rest = total - e
    # the largest entry: total - 1 would cancel when it dominates; sum the other columns instead
    top = np.argmax(e, axis=1)
    rows = np.arange(len(e))
    masked = e.copy()
    masked[rows, top] = 0.0
    rest[rows, top] = masked.sum(axis=1)
    with np.errstate(divide="ignore"):
        return e / total, np.log(rest) - np.log(total)


def coverage_value(log_miss: np.ndarray) -> float:
    """C from the (n, m) matrix of ``log(1 - a)``: the mean over crops of ``1 - prod_i (1 - a_ij)``."""
    # -expm1(sum of logs) = 1 - prod; exp(-inf) = 0 makes a crop some image sits on fully covered
    return float(np.mean(-np.expm1(log_miss.sum(axis=0))))


def coverage_credit(log_miss: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``C(S) - C(S - i)`` for every row i: ``(1/m) sum_j a_ij prod_{l != i} (1 - a_lj)``
    (``kernel`` = a, ``log_miss`` = log(1 - a)).

    Zeros of ``1 - a`` (log -inf) are counted per crop, not summed, so excluding image i never
    divides by its factor.
    """
    zero = np.isneginf(log_miss)
    finite = np.where(zero, 0.0, log_miss)
    log_others = finite.sum(axis=0, keepdims=True) - finite  # log prod over l != i of non-zero factors
    zeros_others = zero.sum(axis=0, keepdims=True) - zero  # how many other images sit on the crop
    others = np.where(zeros_others > 0, 0.0, np.exp(log_others))
    return (kernel * others).mean(axis=1)


class Coverage:
    """Soft coverage of a fixed reference set; see the module docstring."""

    def __init__(self, reference: Any, bandwidth: float | str, kernel_scale: float):
        self.reference = as_features(reference, "reference features", min_rows=2)
        self.kernel_scale = check_bandwidth(kernel_scale)
        self.bandwidth, self.bandwidth_source = resolve_bandwidth(bandwidth, self.reference, PLAIN_MEDIAN_SCALE)
        self.sigma = self.bandwidth * self.kernel_scale

    def _log_miss(self, generated: Any, min_rows: int) -> tuple[np.ndarray, np.ndarray]:
        x = as_features(generated, "generated features", min_rows=min_rows)
        check_same_dim(x, self.reference)
        return x, squared_distances(x, self.reference)

    def _result(self, coverage: float, n: int) -> CoverageResult:
        return CoverageResult(coverage, self.bandwidth, self.bandwidth_source, self.kernel_scale, n, len(self.reference))

    def value(self, generated: Any) -> CoverageResult:
        x, d2 = self._log_miss(generated, min_rows=2)
        return self._result(coverage_value(reach(d2, self.sigma)[1]), len(x))

    def leave_one_out(self, generated: Any) -> np.ndarray:
        """Per-image credit ``C(X) - C(X without x_a)`` (>= 0) for every generated row a."""
        _, d2 = self._log_miss(generated, min_rows=3)
        a, log_miss = reach(d2, self.sigma)
        return coverage_credit(log_miss, a)
