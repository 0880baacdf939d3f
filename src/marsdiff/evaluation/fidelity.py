"""Distribution distances between generated and held-out features: Fréchet distance, KID, MMD^2.

**Fréchet distance** of the Gaussian fits (float64),
``FD = |mu_x - mu_y|^2 + tr S_x + tr S_y - 2 tr sqrt(S_x^1/2 S_y S_x^1/2)``. With ``P_x`` the
centred generated rows over ``sqrt(n-1)`` (so ``S_x = P_x^T P_x``) and ``P_y`` likewise, the last
trace is the nuclear norm (sum of singular values) of the small ``n x m`` matrix ``P_x P_y^T``:
the non-zero singular values of ``S_x^1/2 S_y^1/2`` and of ``P_x P_y^T`` are the same. No d x d
square root is needed, which keeps every bootstrap replicate cheap and avoids ``sqrtm``'s complex
round-off. Named by feature space (``FD_mobilenet_v2``): these are not Inception features. FD
has a strong sample-size bias, so it is reported beside a real-vs-real value at the same n.

**KID** (Bińkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
``k(x, y) = (x.y / d + 1)^3``, averaged over ``kid_subsets`` random subsets of
``s = min(kid_subset_size, n, m)`` rows drawn without replacement from each set (the paper's
100 subsets of 1000); the subsets' standard deviation goes into the detail column.

**MMD^2** unbiased, RBF kernel ``exp(-|x-y|^2 / 2 sigma^2)`` with sigma = ``bandwidth_scale`` x
the median pairwise distance of the held-out features (fixed for all models and replicates):
``sum_{i!=j} Kxx / n(n-1) + sum_{i!=j} Kyy / m(m-1) - 2 sum Kxy / nm``. Its real-vs-real
baseline splits the held-out set into random halves (:func:`split_half_mmd2`).

Bootstrap: a resample repeats some images. The U-statistics (KID replicates, MMD^2) skip the
pairs of an image with its own copies, exactly as the unbiased estimator skips i == j, so a
repeated image never looks like a perfect near-duplicate pair and the replicates stay unbiased:
MMD^2 uses the plain percentile interval. KID's replicates are the full-set U-statistic, whose
expectation is the subset average; the point estimate (the subset average) carries the subsets'
own noise on top, so KID's interval is the replicates' spread centred on it (bias-shifted).
FD's replicates are weighted means and covariances; the extra noise of a resample inflates FD,
so FD uses the bias-shifted interval too.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.bootstrap import BIAS_SHIFTED, PERCENTILE
from marsdiff.evaluation.distances import pairwise_distances
from marsdiff.evaluation.metric import Metric


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


class FrechetReference:
    """Reference mean, centred rows and covariance trace, computed once per held-out set."""

    def __init__(self, reference: np.ndarray):
        self.n_reference = len(reference)
        self.mean = reference.mean(axis=0)
        self.centred = reference - self.mean
        self.trace = float(np.sum(self.centred**2)) / (self.n_reference - 1)

    def distance(self, generated: np.ndarray) -> float:
        """FD between ``generated`` (>= 2 rows) and the reference."""
        return float(self.statistic(generated)(np.ones((1, len(generated))))[0])

    def statistic(self, generated: np.ndarray):
        """FD as a function of per-image counts (frequency weights on the generated rows)."""
        # X Y_c^T once: for any weights, (X - mu_w) Y_c^T = X Y_c^T - mu_w Y_c^T.
        cross = generated @ self.centred.T
        squared_norms = np.einsum("ij,ij->i", generated, generated)
        scale = np.sqrt(self.n_reference - 1.0)

        def fd(counts: np.ndarray) -> np.ndarray:
            values = np.empty(len(counts))
            for row, weights in enumerate(counts):
                present = weights > 0
                w = weights[present]
                total = w.sum()
                mean = w @ generated[present] / total
                mean_term = float(np.sum((mean - self.mean) ** 2))
                # sum_i w_i |x_i - mu|^2 = sum_i w_i |x_i|^2 - W |mu|^2
                trace_x = (float(w @ squared_norms[present]) - total * float(mean @ mean)) / (total - 1.0)
                centred_cross = cross[present] - mean @ self.centred.T
                factor = np.sqrt(w)[:, None] * centred_cross / (np.sqrt(total - 1.0) * scale)
                nuclear = float(linalg.svdvals(factor, check_finite=False).sum())
                values[row] = mean_term + trace_x + self.trace - 2.0 * nuclear
            return values

        return fd

    def metric(self, generated: np.ndarray, feature_space: str) -> Metric:
        return Metric(
            f"FD_{feature_space}",
            higher_is_better=False,
            statistic=self.statistic(generated),
            interval_method=BIAS_SHIFTED,
            detail=f"Fréchet distance in {feature_space} space, n={len(generated)} vs m={self.n_reference} held-out",
            value_range=(0.0, np.inf),
        )


def frechet_distance(generated: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets (each >= 2 rows)."""
    return FrechetReference(np.asarray(reference, dtype=np.float64)).distance(np.asarray(generated, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# U-statistic MMD^2 on any kernel (shared by KID and the RBF MMD)
# --------------------------------------------------------------------------------------------


def reference_term(kyy: np.ndarray) -> float:
    """Mean of the reference kernel matrix over pairs i != j."""
    m = len(kyy)
    return float((kyy.sum() - np.trace(kyy)) / (m * (m - 1)))


def weighted_unbiased_mmd2(kxx: np.ndarray, kxy: np.ndarray, t_yy: float, counts: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each row of counts on the generated side.

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


def unbiased_mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """The textbook unbiased MMD^2 from the three kernel matrices."""
    n = len(kxx)
    t_xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    return float(t_xx + reference_term(kyy) - 2.0 * kxy.mean())


# --------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel ``(a.b / d + 1)^3``."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


class KIDReference:
    """The held-out features' polynomial kernel matrix, computed once."""

    def __init__(self, reference: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0):
        self.reference = reference
        self.kyy = polynomial_kernel(reference, reference)
        self.t_yy = reference_term(self.kyy)
        self.subsets = subsets
        self.subset_size = subset_size
        self.seed = seed

    def kernels(self, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return polynomial_kernel(generated, generated), polynomial_kernel(generated, self.reference)

    def subset_values(self, generated: np.ndarray) -> np.ndarray:
        """Unbiased MMD^2 on each random pair of subsets (size s from each set, no replacement)."""
        return self._subset_values(*self.kernels(generated))

    def _subset_values(self, kxx: np.ndarray, kxy: np.ndarray) -> np.ndarray:
        n, m = kxy.shape
        size = min(self.subset_size, n, m)
        rng = np.random.default_rng([self.seed, n, m])
        values = np.empty(self.subsets)
        for index in range(self.subsets):
            rows = rng.choice(n, size, replace=False)
            cols = rng.choice(m, size, replace=False)
            values[index] = unbiased_mmd2(kxx[np.ix_(rows, rows)], self.kyy[np.ix_(cols, cols)], kxy[np.ix_(rows, cols)])
        return values

    def metric(self, generated: np.ndarray) -> Metric:
        kxx, kxy = self.kernels(generated)
        subset_values = self._subset_values(kxx, kxy)
        size = min(self.subset_size, len(generated), len(self.reference))
        return Metric(
            "KID",
            higher_is_better=False,
            # Replicates: the full-set U-statistic, whose expectation over subsets is the
            # paper's subset average (the point estimate). The two differ by the subsets' own
            # noise, so the replicates' spread is centred on the point (bias-shifted).
            statistic=lambda counts: weighted_unbiased_mmd2(kxx, kxy, self.t_yy, counts),
            interval_method=BIAS_SHIFTED,
            detail=(
                f"cubic polynomial kernel; mean of {self.subsets} subsets of {size}, "
                f"subset std {subset_values.std(ddof=1) if self.subsets > 1 else 0.0:.3g}"
            ),
            point=float(subset_values.mean()),
        )


def kernel_inception_distance(
    generated: np.ndarray, reference: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> float:
    """KID as in the paper: mean unbiased polynomial-kernel MMD^2 over random subsets."""
    reference = np.asarray(reference, dtype=np.float64)
    return float(KIDReference(reference, subsets, subset_size, seed).subset_values(np.asarray(generated, np.float64)).mean())


# --------------------------------------------------------------------------------------------
# MMD^2 with the RBF kernel and its split-half baseline
# --------------------------------------------------------------------------------------------


def median_pairwise_distance(distances: np.ndarray) -> float:
    """Median over pairs i < j of a square distance matrix; an error when it is 0."""
    upper = np.triu_indices(len(distances), k=1)
    median = float(np.median(distances[upper]))
    if not median > 0.0:
        raise MarsdiffError(
            "the held-out features' median pairwise distance is 0 (at least half the pairs are identical): "
            "the RBF bandwidth is undefined"
        )
    return median


def rbf_from_distances(distances: np.ndarray, bandwidth: float) -> np.ndarray:
    return np.exp(-(distances**2) / (2.0 * bandwidth * bandwidth))


class MMDReference:
    """Held-out RBF kernel matrix at a bandwidth fixed from the held-out set."""

    def __init__(self, reference: np.ndarray, bandwidth: float, reference_distances: np.ndarray | None = None):
        self.reference = reference
        self.bandwidth = float(bandwidth)
        distances = pairwise_distances(reference) if reference_distances is None else reference_distances
        self.kyy = rbf_from_distances(distances, self.bandwidth)
        self.t_yy = reference_term(self.kyy)

    def metric(self, generated: np.ndarray, generated_distances: np.ndarray, cross_distances: np.ndarray) -> Metric:
        kxx = rbf_from_distances(generated_distances, self.bandwidth)
        kxy = rbf_from_distances(cross_distances, self.bandwidth)
        return Metric(
            "MMD2_rbf",
            higher_is_better=False,
            statistic=lambda counts: weighted_unbiased_mmd2(kxx, kxy, self.t_yy, counts),
            interval_method=PERCENTILE,
            detail=f"unbiased, RBF sigma={self.bandwidth:.4g} (from the held-out median distance)",
        )

    def value(self, generated: np.ndarray) -> float:
        metric = self.metric(generated, pairwise_distances(generated), pairwise_distances(generated, self.reference))
        return float(metric.statistic(np.ones((1, len(generated))))[0])

    def split_half(self, repeats: int, seed: int) -> np.ndarray:
        """Unbiased MMD^2 between random disjoint halves of the held-out set, ``repeats`` times."""
        return split_half_mmd2(self.kyy, repeats, seed)


def split_half_mmd2(kernel: np.ndarray, repeats: int, seed: int) -> np.ndarray:
    """Real-vs-real MMD^2: random halves (m // 2 rows each) of one set's kernel matrix."""
    m = len(kernel)
    half = m // 2
    if half < 2:
        raise MarsdiffError(f"the split-half MMD baseline needs at least 4 held-out images, found {m}")
    rng = np.random.default_rng([seed, m])
    values = np.empty(repeats)
    for index in range(repeats):
        order = rng.permutation(m)
        first, second = order[:half], order[half : 2 * half]
        values[index] = unbiased_mmd2(
            kernel[np.ix_(first, first)], kernel[np.ix_(second, second)], kernel[np.ix_(first, second)]
        )
    return values
