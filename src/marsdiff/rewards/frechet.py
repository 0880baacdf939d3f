"""Fréchet distance between Gaussian fits of generated and reference features (float64).

    FD = ||mu_x - mu_y||^2 + tr S_x + tr S_y - 2 tr sqrt(S_x^1/2 S_y S_x^1/2)

This module is the one implementation of FD: the reward (:class:`Frechet`, reward = ``-FD``)
and the evaluation metric (:class:`marsdiff.evaluation.fidelity.FrechetReference`, with
bootstrap weights) both evaluate :meth:`FrechetReference.parts`.

The last trace never needs a matrix square root of S_x (never scipy.linalg.sqrtm: no complex
parts). For any factor R of the reference covariance (``R^T R = S_y``), the eigenvalues of
``S_x^1/2 S_y S_x^1/2`` are the squared singular values of ``P_x R^T``, with ``P_x`` the centred
generated rows over ``sqrt(n-1)`` (``S_x = P_x^T P_x``); so the trace is the nuclear norm (sum
of singular values) of ``P_x R^T``: real by construction, and a singular covariance (n <= d is
common here) does not turn rounding noise into sqrt(eps)-sized errors. R is the reference's own
centred rows over ``sqrt(m-1)`` when m <= d (an n x m matrix, no d x d work at all), else the
symmetric root ``S_y^1/2`` from its eigen-decomposition (n x d): whichever is smaller. Both are
computed once per reference.

Frequency weights: with counts ``w`` on the generated rows (a bootstrap resample, or a set
with one image left out), the mean and covariance are the weighted ones
(``S_x = sum_i w_i (x_i - mu)(x_i - mu)^T / (W - 1)``), which is exactly FD of the set with
image i repeated ``w_i`` times. Leave-one-out credit is FD at weights "all ones but image a".

The name says the feature space (FD_mobilenet_v2, FD_clip): there are no Inception weights.
FD has a strong sample-size bias (same-distribution FD shrinks roughly like 1/N), so compare
values only at equal n and against a reference-vs-reference baseline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

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


class FrechetReference:
    """The reference side of FD, computed once: mean, covariance trace and the factor R.

    ``reference``: a float64 feature matrix with >= 2 rows (callers check it)."""

    def __init__(self, reference: np.ndarray):
        self.n_reference, self.dim = reference.shape
        self.mean = reference.mean(axis=0)
        self.centred = reference - self.mean
        self.trace = float(np.sum(self.centred**2)) / (self.n_reference - 1)
        if self.n_reference <= self.dim:
            # R = Y_c / sqrt(m-1); the division is applied to the small product instead
            self.factor, self.factor_scale = self.centred, float(np.sqrt(self.n_reference - 1.0))
            log.debug(
                "reference covariance is singular (%d rows <= %d dims): FD is dominated by sample-size bias",
                self.n_reference,
                self.dim,
            )
        else:
            covariance = self.centred.T @ self.centred / (self.n_reference - 1)
            self.factor, self.factor_scale = psd_sqrt(covariance, "reference covariance"), 1.0

    def parts(self, generated: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(mean_term, trace_x, nuclear)`` per row of counts on ``generated``'s rows, where
        ``FD = mean_term + trace_x + trace_y - 2 nuclear``; each row needs a total count >= 2."""
        # X R^T once: for any weights, (X - mu_w) R^T = X R^T - mu_w R^T.
        cross = generated @ self.factor.T
        squared_norms = np.einsum("ij,ij->i", generated, generated)

        def parts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            mean_terms, traces, nuclears = (np.empty(len(counts)) for _ in range(3))
            for row, weights in enumerate(counts):
                present = weights > 0
                w = weights[present]
                total = w.sum()
                mean = w @ generated[present] / total
                mean_terms[row] = float(np.sum((mean - self.mean) ** 2))
                # sum_i w_i |x_i - mu|^2 = sum_i w_i |x_i|^2 - W |mu|^2
                traces[row] = (float(w @ squared_norms[present]) - total * float(mean @ mean)) / (total - 1.0)
                centred_cross = cross[present] - mean @ self.factor.T
                factor = np.sqrt(w)[:, None] * centred_cross / (np.sqrt(total - 1.0) * self.factor_scale)
                nuclears[row] = float(linalg.svdvals(factor, check_finite=False).sum())
            return mean_terms, traces, nuclears

        return parts

    def statistic(self, generated: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """FD as a function of per-image counts (frequency weights on the generated rows)."""
        parts = self.parts(generated)

        def fd(counts: np.ndarray) -> np.ndarray:
            mean_terms, traces, nuclears = parts(counts)
            return mean_terms + traces + self.trace - 2.0 * nuclears

        return fd

    def distance(self, generated: np.ndarray) -> float:
        """FD between ``generated`` (>= 2 rows) and the reference."""
        return float(self.statistic(generated)(np.ones((1, len(generated))))[0])


class Frechet:
    """FD against a fixed reference (the reward): checked inputs, results with their terms."""

    def __init__(self, reference: Any):
        ref = as_features(reference, "reference features", min_rows=2)
        self.n_reference, self.dim = ref.shape
        self.reference = FrechetReference(ref)

    def _check(self, generated: Any, min_rows: int) -> np.ndarray:
        x = as_features(generated, "generated features", min_rows=min_rows)
        check_same_dim(x, self.reference.mean[None, :])
        return x

    def value(self, generated: Any) -> FrechetResult:
        x = self._check(generated, min_rows=2)
        mean_term, trace_x, nuclear = (float(part[0]) for part in self.reference.parts(x)(np.ones((1, len(x)))))
        # summed in the order of FrechetReference.statistic, so the reward is the evaluation's FD to the bit
        distance = mean_term + trace_x + self.reference.trace - 2.0 * nuclear
        trace_term = trace_x + self.reference.trace - 2.0 * nuclear
        return FrechetResult(distance, mean_term, trace_term, len(x), self.n_reference, self.dim)

    def leave_one_out(self, generated: Any) -> np.ndarray:
        """Per-image credit ``-FD(X) + FD(X without x_a)`` (exact; one SVD per image)."""
        x = self._check(generated, min_rows=3)
        n = len(x)
        # row 0: the whole set; row 1 + a: the set without image a
        counts = np.vstack([np.ones((1, n)), 1.0 - np.eye(n)])
        distances = self.reference.statistic(x)(counts)
        return distances[1:] - distances[0]


def frechet_distance(generated: Any, reference: Any) -> FrechetResult:
    """Fréchet distance between the Gaussian fits of two feature sets (each needs >= 2 rows)."""
    return Frechet(reference).value(generated)
