"""Mode coverage: how many k-means clusters of the held-out features receive a generated image.

scikit-learn ``KMeans`` (``n_modes`` clusters, 10 seeded initialisations) is fitted on the held-out
features once; each generated image is assigned to its nearest centroid; the metric is the number
of clusters that receive at least one image (``modes_covered``, out of ``n_modes``). A collapsed
generator fills few clusters however realistic its images are. Every image is assigned somewhere,
so an unrealistic image still "covers" a mode: read this beside precision.

The real-vs-real value is the same count for random draws of train crops of the same size
(see :mod:`.evaluate`): with few images per cluster even real data misses some modes.

Bootstrap: a resample holds fewer distinct images and reaches fewer clusters, so the interval is
the bias-shifted one.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.bootstrap import BIAS_SHIFTED
from marsdiff.evaluation.metric import Metric


class ModeReference:
    """k-means clusters of the held-out features."""

    def __init__(self, reference: np.ndarray, n_modes: int, seed: int):
        if n_modes > len(reference):
            raise MarsdiffError(
                f"evaluation.n_modes = {n_modes} must be at most the number of held-out images ({len(reference)})"
            )
        self.n_modes = n_modes
        self.kmeans = KMeans(n_clusters=n_modes, n_init=10, random_state=seed).fit(reference)
        self.reference_sizes = np.bincount(self.kmeans.labels_, minlength=n_modes)

    def assign(self, features: np.ndarray) -> np.ndarray:
        """Index of the nearest cluster centre of each row."""
        return self.kmeans.predict(features)

    def modes_covered(self, features: np.ndarray) -> int:
        return int(len(np.unique(self.assign(features))))

    def metric(self, generated: np.ndarray) -> Metric:
        one_hot = np.eye(self.n_modes)[self.assign(generated)]

        def covered(counts: np.ndarray) -> np.ndarray:
            return (((counts > 0).astype(np.float64) @ one_hot) > 0).sum(axis=1).astype(np.float64)

        return Metric(
            "modes_covered",
            higher_is_better=True,
            statistic=covered,
            interval_method=BIAS_SHIFTED,
            detail=f"of {self.n_modes} k-means clusters of the held-out features",
            value_range=(0.0, float(self.n_modes)),
        )
