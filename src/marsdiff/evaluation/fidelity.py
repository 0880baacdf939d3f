"""Distribution distances between generated and held-out features: Fréchet distance, KID, MMD^2.

**Fréchet distance** of the Gaussian fits (float64),
``FD = |mu_x - mu_y|^2 + tr S_x + tr S_y - 2 tr sqrt(S_x^1/2 S_y S_x^1/2)``, computed by
:class:`marsdiff.rewards.frechet.FrechetReference` (the reward's FD, one implementation): the last
trace is a nuclear norm of a small matrix, with frequency weights for the bootstrap replicates.
Named by feature space (``FD_mobilenet_v2``): these are not Inception features. FD has a strong
sample-size bias, so it is reported beside a real-vs-real value at the same n.

**KID** (Bińkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
``k(x, y) = (x.y / d + 1)^3``, averaged over ``kid_subsets`` random subsets of
``s = min(kid_subset_size, n, m)`` rows drawn without replacement from each set (the paper's
100 subsets of 1000); the subsets' standard deviation goes into the detail column.

**MMD^2** unbiased, RBF kernel ``exp(-|x-y|^2 / 2 sigma^2)`` with sigma = ``bandwidth_scale`` x
the median pairwise distance of the held-out features (fixed for all models and replicates):
``sum_{i!=j} Kxx / n(n-1) + sum_{i!=j} Kyy / m(m-1) - 2 sum Kxy / nm``. Its real-vs-real
baseline splits the held-out set into random halves (:func:`split_half_mmd2`). The kernel
formula and the estimators are the rewards' (:mod:`marsdiff.rewards.kernels`,
:mod:`marsdiff.rewards.mmd`); the distances are :mod:`.distances`' exact ones.

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

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.bootstrap import BIAS_SHIFTED, PERCENTILE
from marsdiff.evaluation.distances import pairwise_distances
from marsdiff.evaluation.metric import Metric
from marsdiff.rewards import frechet, kernels, mmd
from marsdiff.rewards.mmd import weighted_unbiased_mmd2


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


class FrechetReference(frechet.FrechetReference):
    """The held-out side of FD (:class:`marsdiff.rewards.frechet.FrechetReference`) as a metric."""

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
# U-statistic MMD^2 on any kernel (the estimators live in marsdiff.rewards.mmd)
# --------------------------------------------------------------------------------------------


def reference_term(kyy: np.ndarray) -> float:
    """Mean of the reference kernel matrix over pairs i != j."""
    return float(mmd.within_mean(kyy, "unbiased"))


def unbiased_mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """The textbook unbiased MMD^2 from the three kernel matrices."""
    return mmd.mmd2_from_kernels(kxx, kxy, reference_term(kyy), "unbiased")


# --------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel ``(a.b / d + 1)^3``."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


class KIDReference:
    """The held-out features' polynomial kernel matrix, computed once."""

    def __init__(self, reference: np.ndarray, subsets: int, subset_size: int, seed: int):
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
    generated: np.ndarray, reference: np.ndarray, subsets: int, subset_size: int, seed: int
) -> float:
    """KID as in the paper: mean unbiased polynomial-kernel MMD^2 over random subsets."""
    reference = np.asarray(reference, dtype=np.float64)
    return float(KIDReference(reference, subsets, subset_size, seed).subset_values(np.asarray(generated, np.float64)).mean())


# --------------------------------------------------------------------------------------------
# MMD^2 with the RBF kernel and its split-half baseline
# --------------------------------------------------------------------------------------------


def median_pairwise_distance(distances: np.ndarray) -> float:
    """Median over pairs i < j of a square distance matrix; an error when it is 0."""
    median = kernels.pair_median(distances)
    if not median > 0.0:
        raise MarsdiffError(
            "the held-out features' median pairwise distance is 0 (at least half the pairs are identical): "
            "the RBF bandwidth is undefined"
        )
    return median


def rbf_from_distances(distances: np.ndarray, bandwidth: float) -> np.ndarray:
    """The rewards' RBF kernel, from Euclidean (not squared) distances."""
    return kernels.kernel_from_sq_distances(distances**2, bandwidth)


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
