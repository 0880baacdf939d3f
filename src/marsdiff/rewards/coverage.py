"""Soft reference-side coverage of the reference crops by a generated set, with exact credit.

With the RBF kernel ``k(x, r) = exp(-||x - r||^2 / (2 sigma^2))`` read as the probability that
generated image x "reaches" reference crop r, and images reaching crops independently, crop r_j
is reached by at least one image of S with probability ``1 - prod_{i in S} (1 - k(x_i, r_j))``
(a noisy-OR). The coverage of the m reference crops is the mean of that:

    C(S) = (1/m) sum_j [1 - prod_{i in S} (1 - k_ij)]            in [0, 1], reward = +C

C is monotone and submodular in S: a crop already reached by other images pays little for
being reached again, so a set rises in C by spreading over the reference, not by piling images
onto its dense part (the MMD term's pull towards the density where the model already samples).

Leave-one-out credit, exact, O(n m) after one kernel pass. With ``P_j = prod_i (1 - k_ij)`` and
``P_-i,j`` the product without image i, ``P_j = (1 - k_ij) P_-i,j``, so

    C(S) - C(S - i) = (1/m) sum_j [P_-i,j - P_j] = (1/m) sum_j k_ij * P_-i,j

the kernel mass of image i on crops that *no other image* reaches: an image earns credit for
the part of the reference only it covers. Duplicates split (and mostly lose) that credit.

Numerics. ``1 - k`` is computed as ``-expm1(-d^2 / 2 sigma^2)`` (exact as k -> 1, where
``1 - exp(...)`` would cancel), and products of many factors as sums of logarithms. A factor of
exactly 0 (an image on a crop: d = 0) has log -inf; it is counted instead of summed, so the
product without image i is 0 when another image also sits on the crop, ``exp(sum of the
others' logs)`` when i is the only one, and no division by ``1 - k`` ever happens.

The kernel's sigma is the reward's shared bandwidth times ``kernel_scale`` (an option of this
kind): coverage needs a kernel narrow enough that one image reaches a few crops, not all of
them (at a wide kernel every set of 32 images covers nearly everything and credit vanishes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from marsdiff.rewards.inputs import as_features, check_same_dim
from marsdiff.rewards.kernels import check_bandwidth, resolve_bandwidth, squared_distances


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


def miss_logs(sq_distances: np.ndarray, sigma: float) -> np.ndarray:
    """``log(1 - k)`` elementwise (-inf where k == 1, i.e. at distance 0), accurate as k -> 1."""
    miss = -np.expm1(sq_distances / (-2.0 * sigma * sigma))
    with np.errstate(divide="ignore"):
        return np.log(miss)


def coverage_value(log_miss: np.ndarray) -> float:
    """C from the (n, m) matrix of ``log(1 - k)``: the mean over crops of ``1 - prod_i (1 - k_ij)``."""
    # -expm1(sum of logs) = 1 - prod; exp(-inf) = 0 makes a crop some image sits on fully covered
    return float(np.mean(-np.expm1(log_miss.sum(axis=0))))


def coverage_credit(log_miss: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``C(S) - C(S - i)`` for every row i: ``(1/m) sum_j k_ij prod_{l != i} (1 - k_lj)``.

    Zeros of ``1 - k`` (log -inf) are counted per crop, not summed, so excluding image i never
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

    def __init__(
        self, reference: Any, bandwidth: float | str = "median", kernel_scale: float = 1.0, bandwidth_scale: float = 1.0
    ):
        self.reference = as_features(reference, "reference features", min_rows=2)
        self.kernel_scale = check_bandwidth(kernel_scale)
        self.bandwidth, self.bandwidth_source = resolve_bandwidth(bandwidth, self.reference, bandwidth_scale)
        self.sigma = self.bandwidth * self.kernel_scale

    def _log_miss(self, generated: Any, min_rows: int) -> tuple[np.ndarray, np.ndarray]:
        x = as_features(generated, "generated features", min_rows=min_rows)
        check_same_dim(x, self.reference)
        return x, squared_distances(x, self.reference)

    def _result(self, coverage: float, n: int) -> CoverageResult:
        return CoverageResult(coverage, self.bandwidth, self.bandwidth_source, self.kernel_scale, n, len(self.reference))

    def value(self, generated: Any) -> CoverageResult:
        x, d2 = self._log_miss(generated, min_rows=2)
        return self._result(coverage_value(miss_logs(d2, self.sigma)), len(x))

    def leave_one_out(self, generated: Any) -> np.ndarray:
        """Per-image credit ``C(X) - C(X without x_a)`` (>= 0) for every generated row a."""
        _, d2 = self._log_miss(generated, min_rows=3)
        kernel = np.exp(d2 / (-2.0 * self.sigma * self.sigma))
        return coverage_credit(miss_logs(d2, self.sigma), kernel)
