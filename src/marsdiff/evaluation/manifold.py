"""Precision, recall, density and coverage on k-nearest-neighbour manifolds.

A set's manifold is the union of closed balls around its points, each with radius = distance to
the point's k-th nearest *other* point of the same set (scikit-learn ``NearestNeighbors``).

* precision (Kynkäänniemi et al. 2019, k = 3): share of generated images inside the held-out manifold;
* recall (same paper, k = 3): share of held-out images inside the generated manifold;
* density (Naeem et al. 2020, k = 5): ``1/(kM) sum_j #{held-out i : x_j in ball(y_i)}``; it is
  about 1 when the two distributions match and exceeds 1 when samples crowd into dense regions;
* coverage (same paper, k = 5): share of held-out balls that contain at least one generated image;
  for identical distributions it tends to ``1 - 2^-k``.

Ties on purpose: membership is ``distance <= radius`` (closed balls). The ``prdc`` package uses
``<``, so a set of duplicated points (radius 0) gets density and coverage 0 even against itself;
with ``<=`` a generated set equal to the reference has precision = recall = 1 and a duplicate
is inside its twin's zero-radius ball. Distances are exact (see :mod:`.distances`).

Bootstrap (counts ``w`` on the generated images; radii fixed from the full sets): precision and
density are weighted means over generated images (plain percentile interval). Recall and
coverage ask whether *any* present generated image reaches a held-out point; a resample holds
fewer distinct images, so their replicates drop and they use the bias-shifted interval.
Per-category coverage (:meth:`ManifoldReference.covered_by`) splits coverage by held-out category.
"""

from __future__ import annotations

import numpy as np

from marsdiff.evaluation.bootstrap import BIAS_SHIFTED, PERCENTILE
from marsdiff.evaluation.distances import kth_neighbour_radius, pairwise_distances
from marsdiff.evaluation.metric import Metric
from marsdiff.evaluation.settings import require_neighbours


class ManifoldReference:
    """Held-out k-NN radii for precision (k_precision_recall) and density/coverage (k_density_coverage)."""

    def __init__(
        self,
        reference: np.ndarray,
        k_precision_recall: int,
        k_density_coverage: int,
        reference_distances: np.ndarray | None = None,
    ):
        m = len(reference)
        require_neighbours(k_precision_recall, m, "k_precision_recall", "held-out images")
        require_neighbours(k_density_coverage, m, "k_density_coverage", "held-out images")
        self.reference = reference
        self.k_precision_recall = k_precision_recall
        self.k_density_coverage = k_density_coverage
        distances = pairwise_distances(reference) if reference_distances is None else reference_distances
        self.radius_precision = kth_neighbour_radius(distances, k_precision_recall)
        self.radius_density = kth_neighbour_radius(distances, k_density_coverage)

    def memberships(
        self, generated: np.ndarray, generated_distances: np.ndarray, cross_distances: np.ndarray
    ) -> "Memberships":
        """Which generated image lies in which held-out ball, and which held-out image in which generated ball."""
        require_neighbours(self.k_precision_recall, len(generated), "k_precision_recall", "generated images")
        generated_radius = kth_neighbour_radius(generated_distances, self.k_precision_recall)
        return Memberships(
            in_reference_ball_pr=cross_distances <= self.radius_precision[None, :],
            in_reference_ball_dc=cross_distances <= self.radius_density[None, :],
            reference_in_generated_ball=cross_distances <= generated_radius[:, None],
            k_density_coverage=self.k_density_coverage,
        )

    def metrics(self, member: "Memberships") -> list[Metric]:
        """Precision, recall, density and coverage of one generated set's memberships."""
        k_pr, k_dc = self.k_precision_recall, self.k_density_coverage
        share, positive = (0.0, 1.0), (0.0, np.inf)
        return [
            Metric("precision", True, member.precision, PERCENTILE,
                   f"k={k_pr}; share of generated inside the held-out manifold", value_range=share),
            Metric("recall", True, member.recall, BIAS_SHIFTED,
                   f"k={k_pr}; share of held-out inside the generated manifold", value_range=share),
            Metric("density", True, member.density, PERCENTILE,
                   f"k={k_dc}; about 1 for matching distributions, >1 = crowding", value_range=positive),
            Metric("coverage", True, member.coverage, BIAS_SHIFTED,
                   f"k={k_dc}; share of held-out balls with a generated image", value_range=share),
        ]


class Memberships:
    """Ball-membership matrices (generated rows x held-out columns) and the four statistics of counts."""

    def __init__(
        self,
        in_reference_ball_pr: np.ndarray,
        in_reference_ball_dc: np.ndarray,
        reference_in_generated_ball: np.ndarray,
        k_density_coverage: int,
    ):
        self.inside_reference_manifold = in_reference_ball_pr.any(axis=1).astype(np.float64)
        self.balls_containing = in_reference_ball_dc.sum(axis=1).astype(np.float64)
        self.in_reference_ball_dc = in_reference_ball_dc.astype(np.float64)
        self.reference_in_generated_ball = reference_in_generated_ball.astype(np.float64)
        self.k_density_coverage = k_density_coverage

    def precision(self, counts: np.ndarray) -> np.ndarray:
        return counts @ self.inside_reference_manifold / counts.sum(axis=1)

    def density(self, counts: np.ndarray) -> np.ndarray:
        return counts @ self.balls_containing / (self.k_density_coverage * counts.sum(axis=1))

    def recall(self, counts: np.ndarray) -> np.ndarray:
        # held-out image i is recalled when some present generated image's ball contains it
        return ((counts > 0).astype(np.float64) @ self.reference_in_generated_ball > 0).mean(axis=1)

    def covered(self, counts: np.ndarray) -> np.ndarray:
        """(B, m) booleans: held-out ball i holds at least one present generated image."""
        return (counts > 0).astype(np.float64) @ self.in_reference_ball_dc > 0

    def coverage(self, counts: np.ndarray) -> np.ndarray:
        return self.covered(counts).mean(axis=1)


def precision_recall_density_coverage(
    generated: np.ndarray, reference: np.ndarray, k_precision_recall: int, k_density_coverage: int
) -> dict[str, float]:
    """The four values for one generated set (no bootstrap)."""
    generated = np.asarray(generated, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    manifold = ManifoldReference(reference, k_precision_recall, k_density_coverage)
    member = manifold.memberships(generated, pairwise_distances(generated), pairwise_distances(generated, reference))
    ones = np.ones((1, len(generated)))
    return {
        "precision": float(member.precision(ones)[0]),
        "recall": float(member.recall(ones)[0]),
        "density": float(member.density(ones)[0]),
        "coverage": float(member.coverage(ones)[0]),
    }
