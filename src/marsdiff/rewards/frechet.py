"""Fréchet distance between Gaussian fits of generated and reference features (float64).

    FD = ||mu_x - mu_y||^2 + tr S_x + tr S_y - 2 tr sqrt(S_y^1/2 S_x S_y^1/2)

The last trace is the sum of square roots of the eigenvalues of the symmetric PSD matrix
``S_y^1/2 S_x S_y^1/2`` (never scipy.linalg.sqrtm: no complex parts). Those eigenvalues are the
squared singular values of ``Z_x S_y^1/2 / sqrt(n-1)`` (Z_x the centred generated features), so
we take the singular values of that factor directly: real by construction, and a singular
covariance (n <= d is common here) does not turn rounding noise into sqrt(eps)-sized errors.
``S_y^1/2`` is computed once per reference from its symmetric eigen-decomposition.

The name says the feature space (FD_mobilenet_v2, FD_clip): there are no Inception weights.
FD has a strong sample-size bias (same-distribution FD shrinks roughly like 1/N), so compare
values only at equal n and against a reference-vs-reference baseline. Reward = ``-FD``.

Leave-one-out credit, exact: removing row a downdates the mean, ``mu_-a = (n mu - x_a)/(n-1)``,
and the scatter, ``C_-a = C - n/(n-1) (x_a - mu)(x_a - mu)^T`` (so ``S_-a = C_-a/(n-2)``); the
trace term is one singular-value solve per image on the precomputed product ``X S_y^1/2``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg

from marsdiff.errors import MarsdiffError
from marsdiff.rewards.inputs import as_features, check_same_dim

log = logging.getLogger(__name__)

#: Eigenvalues of the reference covariance below -NEGATIVE_TOLERANCE * largest mean a numerical failure.
NEGATIVE_TOLERANCE = 1e-8


@dataclass(frozen=True)
class FrechetResult:
    distance: float
    mean_term: float
    trace_term: float
    n_generated: int
    n_reference: int
    dim: int

    @property
    def reward(self) -> float:
        return -self.distance


def psd_sqrt(matrix: np.ndarray, what: str = "covariance") -> np.ndarray:
    """Symmetric square root of a PSD matrix via eigh; tiny negative eigenvalues (rounding) -> 0."""
    eigenvalues, vectors = linalg.eigh(0.5 * (matrix + matrix.T), check_finite=False)
    largest = max(float(np.abs(eigenvalues).max()), np.finfo(float).tiny)
    if eigenvalues.min() < -NEGATIVE_TOLERANCE * largest:
        raise MarsdiffError(f"numerical failure: the {what} has a negative eigenvalue {eigenvalues.min():.3g}")
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


class Frechet:
    """FD against a fixed reference; the reference mean, trace and covariance square root are cached."""

    def __init__(self, reference: Any):
        ref = as_features(reference, "reference features", min_rows=2)
        self.n_reference, self.dim = ref.shape
        self.reference_mean = ref.mean(axis=0)
        centred = ref - self.reference_mean
        covariance = centred.T @ centred / (self.n_reference - 1)
        self.reference_trace = float(np.trace(covariance))
        self.reference_sqrt = psd_sqrt(covariance, "reference covariance")
        if self.n_reference <= self.dim:
            log.debug(
                "reference covariance is singular (%d rows <= %d dims): FD is dominated by sample-size bias",
                self.n_reference,
                self.dim,
            )

    def _check(self, generated: Any, min_rows: int) -> np.ndarray:
        x = as_features(generated, "generated features", min_rows=min_rows)
        check_same_dim(x, self.reference_mean[None, :])
        return x

    def _distance(self, mean: np.ndarray, trace: float, factor: np.ndarray, n: int) -> tuple[float, float, float]:
        mean_term = float(np.sum((mean - self.reference_mean) ** 2))
        trace_sqrt = float(linalg.svdvals(factor, check_finite=False).sum()) / np.sqrt(n - 1)
        trace_term = trace + self.reference_trace - 2.0 * trace_sqrt
        return mean_term + trace_term, mean_term, trace_term

    def value(self, generated: Any) -> FrechetResult:
        x = self._check(generated, min_rows=2)
        n = len(x)
        mean = x.mean(axis=0)
        centred = x - mean
        trace = float(np.sum(centred**2)) / (n - 1)
        distance, mean_term, trace_term = self._distance(mean, trace, centred @ self.reference_sqrt, n)
        return FrechetResult(distance, mean_term, trace_term, n, self.n_reference, self.dim)

    def leave_one_out(self, generated: Any) -> np.ndarray:
        """Per-image credit ``-FD(X) + FD(X without x_a)`` (exact; one SVD per image)."""
        x = self._check(generated, min_rows=3)
        n = len(x)
        mean = x.mean(axis=0)
        deviations = x - mean
        scatter_trace = float(np.sum(deviations**2))
        full = self.value(x).distance
        projected = x @ self.reference_sqrt  # rows x_i S_y^1/2, reused by every leave-one-out
        credits = np.empty(n)
        keep = np.ones(n, dtype=bool)
        for a in range(n):
            keep[a] = False
            mean_minus = (n * mean - x[a]) / (n - 1)
            trace_minus = (scatter_trace - n / (n - 1) * float(deviations[a] @ deviations[a])) / (n - 2)
            factor = projected[keep] - mean_minus @ self.reference_sqrt
            credits[a] = self._distance(mean_minus, trace_minus, factor, n - 1)[0] - full
            keep[a] = True
        return credits


def frechet_distance(generated: Any, reference: Any) -> FrechetResult:
    """Fréchet distance between the Gaussian fits of two feature sets (each needs >= 2 rows)."""
    return Frechet(reference).value(generated)
