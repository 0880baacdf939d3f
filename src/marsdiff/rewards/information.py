"""Gaussian-process mutual information (information gain) of a set of generated features.

A GP with the RBF kernel k and observation noise variance s^2 observed at the n generated points
X gains

    IG(X) = 0.5 * log det(I + K_xx / s^2)

nats about the latent function: near-duplicates add almost nothing, distinct points add up to
``0.5 log(1 + 1/s^2)`` each, so IG rewards spread without any reference set.

The reference-conditioned gain is what X adds beyond the m reference points Y already observed:

    IG(X | Y) = IG(X u Y) - IG(Y) = 0.5 * log det(I + K_post / s^2),
    K_post    = K_xx - K_xy (K_yy + s^2 I)^-1 K_yx     (GP posterior covariance at X given Y)

High values mean the generated set covers regions the reference does not explain (novelty).

Leave-one-out credit from one Cholesky ``A = L L^T`` (A = I + K/s^2, or with K_post):
``log det A_{-a} = log det A + log (A^-1)_aa``, so image a contributes
``IG(X) - IG(X - a) = -0.5 log (A^-1)_aa >= 0``, and ``diag(A^-1)`` is the column sums of
``(L^-1)^2``. Reward = +IG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg

from marsdiff.errors import MarsdiffError
from marsdiff.rewards.inputs import as_features, check_same_dim
from marsdiff.rewards.kernels import PLAIN_MEDIAN_SCALE, rbf_kernel, resolve_bandwidth


@dataclass(frozen=True)
class InformationGainResult:
    gain: float
    conditional: bool
    noise_var: float
    bandwidth: float
    bandwidth_source: str
    n_generated: int
    n_reference: int

    @property
    def reward(self) -> float:
        return self.gain


def _cholesky(matrix: np.ndarray, what: str) -> np.ndarray:
    try:
        return linalg.cholesky(matrix, lower=True, check_finite=False)
    except linalg.LinAlgError:
        raise MarsdiffError(
            f"numerical failure: {what} is not positive definite (noise_var too small for float64?)"
        ) from None


def _check_noise(noise_var: float) -> float:
    value = float(noise_var)
    if not np.isfinite(value) or value <= 0.0:
        raise MarsdiffError(f"GP noise variance must be a positive finite number, got {noise_var}")
    return value


class InformationGain:
    """IG(X), or IG(X | reference) when ``conditional``; the bandwidth comes from the reference
    (median heuristic) when one is given (``reference`` may be None), else from the generated set
    at each call."""

    def __init__(
        self,
        reference: Any,
        bandwidth: float | str,
        noise_var: float,
        conditional: bool = False,
        reference_kernel: np.ndarray | None = None,
    ):
        """``reference_kernel``: the reference's own kernel matrix at this bandwidth, if precomputed."""
        self.noise_var = _check_noise(noise_var)
        self.conditional = bool(conditional)
        self.reference = None if reference is None else as_features(reference, "reference features", 2)
        if self.conditional and self.reference is None:
            raise MarsdiffError("the reference-conditioned information gain needs reference features")
        self._bandwidth_spec = bandwidth
        self.bandwidth: float | None = None
        self.bandwidth_source: str | None = None
        if self.reference is not None:
            self.bandwidth, self.bandwidth_source = resolve_bandwidth(bandwidth, self.reference, PLAIN_MEDIAN_SCALE)
        if self.conditional:
            kyy = rbf_kernel(self.reference, None, self.bandwidth) if reference_kernel is None else reference_kernel.copy()
            kyy[np.diag_indices_from(kyy)] += self.noise_var
            self._chol_yy = _cholesky(kyy, "K_yy + s^2 I")

    def _matrix_a(self, generated: Any, min_rows: int) -> tuple[np.ndarray, float, str]:
        x = as_features(generated, "generated features", min_rows=min_rows)
        if self.reference is not None:
            check_same_dim(x, self.reference)
            bandwidth, source = self.bandwidth, self.bandwidth_source
        else:
            bandwidth, source = resolve_bandwidth(self._bandwidth_spec, x, PLAIN_MEDIAN_SCALE)
        kxx = rbf_kernel(x, None, bandwidth)
        if self.conditional:
            v = linalg.solve_triangular(self._chol_yy, rbf_kernel(self.reference, x, bandwidth), lower=True)
            kxx = kxx - v.T @ v
            kxx = 0.5 * (kxx + kxx.T)
        a = kxx / self.noise_var
        a[np.diag_indices_from(a)] += 1.0
        return a, bandwidth, source

    def value(self, generated: Any) -> InformationGainResult:
        a, bandwidth, source = self._matrix_a(generated, min_rows=2)
        chol = _cholesky(a, "I + K/s^2")
        gain = float(np.log(np.diag(chol)).sum())  # 0.5 * log det A = sum log diag L
        return InformationGainResult(
            gain=gain,
            conditional=self.conditional,
            noise_var=self.noise_var,
            bandwidth=bandwidth,
            bandwidth_source=source,
            n_generated=len(a),
            n_reference=0 if self.reference is None or not self.conditional else len(self.reference),
        )

    def leave_one_out(self, generated: Any) -> np.ndarray:
        """Per-image credit ``IG(X) - IG(X without x_a) = -0.5 log (A^-1)_aa`` for every row a."""
        a, _, _ = self._matrix_a(generated, min_rows=3)
        chol = _cholesky(a, "I + K/s^2")
        # triangular inverse (LAPACK trtri, n^3/3 flops): A^-1 = L^-T L^-1, so diag(A^-1) is the
        # column sums of (L^-1)^2
        chol_inv, info = linalg.lapack.dtrtri(chol, lower=1)
        if info != 0:
            raise MarsdiffError("numerical failure: the Cholesky factor of I + K/s^2 is singular")
        inverse_diag = np.einsum("ij,ij->j", chol_inv, chol_inv)
        return -0.5 * np.log(inverse_diag)


def information_gain(
    generated: Any, bandwidth: float | str, noise_var: float, reference: Any = None
) -> InformationGainResult:
    """``0.5 log det(I + K_xx/s^2)``; a median bandwidth is taken on ``reference`` if given, else on X."""
    return InformationGain(reference, bandwidth, noise_var).value(generated)


def conditional_information_gain(
    generated: Any, reference: Any, bandwidth: float | str, noise_var: float
) -> InformationGainResult:
    """``IG(X | Y) = 0.5 log det(I + K_post/s^2)``: what X adds beyond the reference Y."""
    return InformationGain(reference, bandwidth, noise_var, conditional=True).value(generated)
