"""Euclidean distances and k-nearest-neighbour radii shared by the evaluation metrics.

Distances come from ``scipy.spatial.distance.cdist``, which sums squared differences directly:
identical rows are at distance exactly 0. The dot-product shortcut (``|x|^2 + |y|^2 - 2 x.y``)
leaves rounding noise of about ``1e-8 |x|`` there, and a duplicated point whose k-NN radius is
that noise would randomly lie inside or outside its own twin's ball. Exact zeros make the
closed-ball rule (``distance <= radius``) behave on ties and duplicates as documented.

k-NN radii use scikit-learn's ``NearestNeighbors`` on these precomputed distances; querying the
fitted set itself excludes each point from its own neighbours, so the radius of a point is its
distance to the k-th *other* point (a duplicate counts as another point at distance 0).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors


def pairwise_distances(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances between the rows of ``a`` and ``b`` (``b=None``: ``a`` with itself)."""
    return cdist(a, a if b is None else b, metric="euclidean")


def kth_neighbour_radius(self_distances: np.ndarray, k: int) -> np.ndarray:
    """Distance from every row to its k-th nearest other row, from the rows' own distance matrix."""
    finder = NearestNeighbors(n_neighbors=k, metric="precomputed").fit(self_distances)
    distances, _ = finder.kneighbors()  # no query: each point is left out of its own neighbours
    return distances[:, k - 1]


def nearest_other_distance(self_distances: np.ndarray) -> np.ndarray:
    """Distance from every row to its nearest other row (k = 1 radius)."""
    return kth_neighbour_radius(self_distances, 1)
