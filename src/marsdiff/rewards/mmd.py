"""Maximum mean discrepancy (MMD^2) between generated and reference features, RBF kernel.

With ``Kxx``, ``Kyy``, ``Kxy`` the kernel matrices of n generated rows X and m reference rows Y:

* unbiased: ``MMD^2_u = sum_{i!=j} Kxx/(n(n-1)) + sum_{i!=j} Kyy/(m(m-1)) - 2 sum Kxy/(nm)``
* biased:   ``MMD^2_b = sum Kxx/n^2 + sum Kyy/m^2 - 2 sum Kxy/(nm)`` (diagonals included)

Values are multiplied by ``scale``. CMMD (Jayasumana et al. 2024) is the biased estimator on
unit-norm features with sigma = 10 and scale = 1000 (:func:`cmmd`); on unit vectors with that
bandwidth it is close to ``10 ||mean_x - mean_y||^2`` and barely sees mode collapse, so the
diversity reward uses the median-heuristic bandwidth by default. Reward = ``-MMD^2``.

Leave-one-out credit (generated row a removed), O(n^2 + nm) in total from kernel row sums:
with ``S_xx`` the off-diagonal total of Kxx, ``r_a`` row a's off-diagonal sum, ``S_xy`` the
total of Kxy and ``c_a`` its row a sum,
``MMD^2_u(X-a) = T_yy + (S_xx - 2 r_a)/((n-1)(n-2)) - 2 (S_xy - c_a)/(m(n-1))``;
the biased form uses the full sums and ``(n-1)^2`` (adding ``Kxx[a,a]`` back once).

This module holds the one implementation of the MMD^2 estimators: the reward (:class:`MMD`) and
the evaluation metrics (``marsdiff.evaluation.fidelity``: the RBF MMD^2, KID's polynomial-kernel
subsets, the split-half baseline and their bootstrap replicates) all call :func:`within_mean`,
:func:`mmd2_from_kernels` and :func:`weighted_unbiased_mmd2` on their kernel matrices. Both
estimators are kept on purpose: the reward offers ``biased`` for the CMMD convention, the
evaluation reports the unbiased one (a U-statistic, so the bootstrap replicates stay unbiased).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.rewards.inputs import as_features, check_same_dim, unit_normalise
from marsdiff.rewards.kernels import PLAIN_MEDIAN_SCALE, rbf_kernel, resolve_bandwidth

ESTIMATORS = ("unbiased", "biased")
CMMD_BANDWIDTH = 10.0
CMMD_SCALE = 1000.0


@dataclass(frozen=True)
class MMDResult:
    """One MMD^2 value with everything needed to reproduce and compare it."""

    mmd2: float
    estimator: str
    bandwidth: float
    bandwidth_source: str
    scale: float
    unit_norm: bool
    n_generated: int
    n_reference: int

    @property
    def reward(self) -> float:
        return -self.mmd2


def within_mean(kernel: np.ndarray, estimator: str) -> float:
    """Mean kernel value within one set: over pairs i != j (unbiased) or over all pairs (biased)."""
    n = len(kernel)
    if estimator == "unbiased":
        return (kernel.sum() - np.trace(kernel)) / (n * (n - 1))
    return kernel.sum() / (n * n)


def mmd2_from_kernels(kxx: np.ndarray, kxy: np.ndarray, t_yy: float, estimator: str) -> float:
    """MMD^2 from the generated kernel matrix, the cross matrix and the reference's :func:`within_mean`."""
    n, m = kxy.shape
    return float(within_mean(kxx, estimator) + t_yy - 2.0 * kxy.sum() / (n * m))


def weighted_unbiased_mmd2(kxx: np.ndarray, kxy: np.ndarray, t_yy: float, counts: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each row of counts (frequency weights) on the generated side.

    Pairs (i, j) of distinct generated images weigh ``w_i w_j``; an image paired with its own
    copies is left out like the diagonal (``sum_i w_i^2 k_ii`` removed from numerator and the
    matching ``sum_i w_i^2`` from the pair count). Counts of all ones give the usual estimator.
    """
    totals = counts.sum(axis=1)
    squares = counts**2
    pair_sum = np.einsum("bi,bi->b", counts @ kxx, counts) - squares @ np.diag(kxx)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_xx = pair_sum / (totals**2 - squares.sum(axis=1))
    t_xy = counts @ kxy.sum(axis=1) / (totals * kxy.shape[1])
    return t_xx + t_yy - 2.0 * t_xy


class MMD:
    """MMD^2 against a fixed reference set; reference-only sums are computed once."""

    def __init__(
        self,
        reference: Any,
        bandwidth: float | str,
        estimator: str,
        scale: float,
        unit_norm: bool = False,
        reference_kernel: np.ndarray | None = None,
    ):
        """``reference_kernel``: the reference's own kernel matrix at this bandwidth, if precomputed."""
        if estimator not in ESTIMATORS:
            raise MarsdiffError(f"MMD estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.estimator = estimator
        self.scale = float(scale)
        self.unit_norm = bool(unit_norm)
        ref = as_features(reference, "reference features", min_rows=2)
        self.reference = unit_normalise(ref, "reference features") if unit_norm else ref
        self.bandwidth, self.bandwidth_source = resolve_bandwidth(bandwidth, self.reference, PLAIN_MEDIAN_SCALE)
        kyy = rbf_kernel(self.reference, None, self.bandwidth) if reference_kernel is None else reference_kernel
        self._t_yy = within_mean(kyy, estimator)

    def _kernels(self, generated: Any, min_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = as_features(generated, "generated features", min_rows=min_rows)
        check_same_dim(x, self.reference)
        if self.unit_norm:
            x = unit_normalise(x, "generated features")
        return x, rbf_kernel(x, None, self.bandwidth), rbf_kernel(x, self.reference, self.bandwidth)

    def _result(self, mmd2: float, n: int) -> MMDResult:
        return MMDResult(
            mmd2=float(mmd2) * self.scale,
            estimator=self.estimator,
            bandwidth=self.bandwidth,
            bandwidth_source=self.bandwidth_source,
            scale=self.scale,
            unit_norm=self.unit_norm,
            n_generated=n,
            n_reference=len(self.reference),
        )

    def value(self, generated: Any) -> MMDResult:
        x, kxx, kxy = self._kernels(generated, min_rows=2)
        return self._result(mmd2_from_kernels(kxx, kxy, self._t_yy, self.estimator), len(x))

    def leave_one_out(self, generated: Any) -> np.ndarray:
        """Per-image credit ``reward(X) - reward(X without x_a)`` for every generated row a."""
        x, kxx, kxy = self._kernels(generated, min_rows=3)
        n, m = len(x), len(self.reference)
        row_full = kxx.sum(axis=1)
        total_full = row_full.sum()
        col_xy = kxy.sum(axis=1)
        total_xy = col_xy.sum()
        diag = np.diag(kxx)
        if self.estimator == "unbiased":
            off_total = total_full - diag.sum()
            t_xx_all = off_total / (n * (n - 1))
            t_xx_minus = (off_total - 2.0 * (row_full - diag)) / ((n - 1) * (n - 2))
        else:
            t_xx_all = total_full / (n * n)
            t_xx_minus = (total_full - 2.0 * row_full + diag) / ((n - 1) ** 2)
        mmd2_all = t_xx_all + self._t_yy - 2.0 * total_xy / (n * m)
        mmd2_minus = t_xx_minus + self._t_yy - 2.0 * (total_xy - col_xy) / (m * (n - 1))
        # reward = -scale * MMD^2, so credit = -scale * (MMD^2(X) - MMD^2(X - a))
        return self.scale * (mmd2_minus - mmd2_all)


def mmd2(
    generated: Any,
    reference: Any,
    bandwidth: float | str,
    estimator: str,
    scale: float,
    unit_norm: bool = False,
) -> MMDResult:
    """MMD^2 of generated vs reference features (median bandwidth taken on the reference)."""
    return MMD(reference, bandwidth, estimator, scale, unit_norm).value(generated)


def cmmd(generated: Any, reference: Any) -> MMDResult:
    """CMMD conventions: biased MMD^2, unit-norm features, sigma = 10, times 1000."""
    return MMD(reference, CMMD_BANDWIDTH, "biased", CMMD_SCALE, unit_norm=True).value(generated)
