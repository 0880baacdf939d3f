"""Evaluation settings: every number an evaluation depends on, checked once, in one place.

:class:`EvaluationSettings` is a frozen dataclass; :meth:`EvaluationSettings.from_config` builds it
from a config section (a mapping with the same key names), so the ``evaluate`` rule can pass its
``params`` straight through. Bad values become a one-line :class:`MarsdiffError` naming the key.
Checks that need the data sizes (``k`` against the number of images, ``n_modes`` against the
held-out size) live here too, so every message reads the same.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from marsdiff.errors import MarsdiffError


@dataclass(frozen=True)
class EvaluationSettings:
    """What an evaluation computes and how; defaults follow the papers the metrics come from."""

    #: names the feature space in metric names (``FD_<feature_space>``) and in the table.
    feature_space: str = "features"
    #: k of the k-NN manifolds for precision and recall (Kynkäänniemi et al. 2019).
    k_precision_recall: int = 3
    #: k of the k-NN balls for density and coverage (Naeem et al. 2020).
    k_density_coverage: int = 5
    #: KID (Bińkowski et al. 2018): number of random subsets and their largest size.
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    #: RBF bandwidth of MMD^2 and Vendi = this factor x median pairwise held-out distance.
    bandwidth_scale: float = 1.0
    #: number of k-means clusters fitted on the held-out features for mode coverage.
    n_modes: int = 10
    #: two generated images are near-duplicates at a distance <= this fraction of the
    #: held-out set's median nearest-neighbour distance (same rule as reward.duplicate_factor).
    near_duplicate_fraction: float = 0.25
    #: memorisation check passes when median(generated -> nearest train) /
    #: median(held-out -> nearest train) is at least this ratio.
    memorisation_min_ratio: float = 0.8
    #: category columns of the manifest that the classifier predicts (one KL per column; empty = no KL).
    category_columns: tuple[str, ...] = ("size_cat", "lighting_cat")
    #: inverse regularisation strength of the logistic-regression category classifier.
    classifier_c: float = 1.0
    #: pseudocount added to every histogram bin before KL (0.5 = Jeffreys / Krichevsky-Trofimov),
    #: so an empty generated bin gives a large but finite KL.
    kl_pseudocount: float = 0.5
    #: bootstrap replicates per model (percentile bootstrap over generated images).
    bootstrap_replicates: int = 500
    #: coverage of every interval.
    confidence: float = 0.95
    #: real-vs-real baselines: how many random train draws / held-out halves.
    baseline_repeats: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        # Coerce lists from YAML/JSON to a tuple so the settings stay hashable and frozen.
        object.__setattr__(self, "category_columns", tuple(str(c) for c in self.category_columns))
        self._check()

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> "EvaluationSettings":
        """Settings from a config mapping with the field names as keys; unknown keys are an error."""
        section = dict(section or {})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise MarsdiffError(f"evaluation settings: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**section)

    def to_config(self) -> dict[str, Any]:
        """The settings as a plain JSON-able mapping (round-trips through :meth:`from_config`)."""
        values = dataclasses.asdict(self)
        values["category_columns"] = list(self.category_columns)
        return values

    def _check(self) -> None:
        if not isinstance(self.feature_space, str) or not self.feature_space.strip():
            raise MarsdiffError("evaluation.feature_space must be a non-empty name such as 'mobilenet_v2'")
        for key in ("k_precision_recall", "k_density_coverage", "kid_subsets", "kid_subset_size", "n_modes"):
            _positive_int(key, getattr(self, key))
        if _positive_int("kid_subset_size", self.kid_subset_size) < 2:
            raise MarsdiffError("evaluation.kid_subset_size must be at least 2 (KID needs pairs)")
        for key in ("bandwidth_scale", "near_duplicate_fraction", "classifier_c"):
            _positive_float(key, getattr(self, key))
        _non_negative_float("memorisation_min_ratio", self.memorisation_min_ratio)
        _non_negative_float("kl_pseudocount", self.kl_pseudocount)
        if _positive_int("bootstrap_replicates", self.bootstrap_replicates) < 10:
            raise MarsdiffError(
                f"evaluation.bootstrap_replicates must be at least 10 for a percentile interval, "
                f"got {self.bootstrap_replicates}"
            )
        if _positive_int("baseline_repeats", self.baseline_repeats) < 2:
            raise MarsdiffError(f"evaluation.baseline_repeats must be at least 2, got {self.baseline_repeats}")
        confidence = _positive_float("confidence", self.confidence)
        if not confidence < 1.0:
            raise MarsdiffError(f"evaluation.confidence must be in (0, 1), got {confidence}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise MarsdiffError(f"evaluation.seed must be a non-negative integer, got {self.seed!r}")


def require_neighbours(k: int, n: int, key: str, what: str) -> None:
    """A k-NN radius needs k other points: k must be smaller than the number of rows."""
    if k >= n:
        raise MarsdiffError(f"evaluation.{key} = {k} must be smaller than the number of {what} ({n})")


def require_images(n: int, what: str) -> None:
    """Pairwise metrics (covariances, U-statistics, k-NN) need at least two images per set."""
    if n < 2:
        raise MarsdiffError(f"{what} has {n} image(s); evaluation needs at least 2 (set M >= 2)")


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MarsdiffError(f"evaluation.{key} must be a positive integer, got {value!r}")
    return value


def _positive_float(key: str, value: Any) -> float:
    number = _float(key, value)
    if number <= 0.0:
        raise MarsdiffError(f"evaluation.{key} must be positive, got {value!r}")
    return number


def _non_negative_float(key: str, value: Any) -> float:
    number = _float(key, value)
    if number < 0.0:
        raise MarsdiffError(f"evaluation.{key} must be >= 0, got {value!r}")
    return number


def _float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise MarsdiffError(f"evaluation.{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MarsdiffError(f"evaluation.{key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise MarsdiffError(f"evaluation.{key} must be finite, got {value!r}")
    return number
