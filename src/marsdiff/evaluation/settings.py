"""Evaluation settings: every number an evaluation depends on, in one place.

:class:`EvaluationSettings` is a frozen dataclass built by :meth:`EvaluationSettings.from_config`
from the ``evaluation.metrics`` section as the schema fills and checks it
(``workflow/schemas/config.schema.yaml``: every default, every range, and the reason for each
default, live there only). A section built by hand goes through
``marsdiff.config.filled_section("evaluation.metrics", ...)`` first. What the schema cannot know,
the data sizes (``k`` against the number of images, ``n_modes`` against the held-out size), is
checked here, so every such message reads the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from marsdiff.errors import MarsdiffError

#: The schema section the settings come from (marsdiff.config.filled_section's path).
SECTION = "evaluation.metrics"


@dataclass(frozen=True)
class EvaluationSettings:
    """What an evaluation computes and how (each key's meaning: the schema's ``evaluation.metrics``)."""

    #: names the feature space in metric names (``FD_<feature_space>``) and in the table: the
    #: extractor's name, not a config key of this section.
    feature_space: str
    k_precision_recall: int
    k_density_coverage: int
    kid_subsets: int
    kid_subset_size: int
    bandwidth_scale: float
    n_modes: int
    near_duplicate_fraction: float
    memorisation_min_ratio: float
    category_columns: tuple[str, ...]
    classifier_c: float
    kl_pseudocount: float
    bootstrap_replicates: int
    confidence: float
    baseline_repeats: int
    seed: int

    def __post_init__(self) -> None:
        # Coerce lists from YAML/JSON to a tuple so the settings stay hashable and frozen.
        object.__setattr__(self, "category_columns", tuple(str(c) for c in self.category_columns))
        if not isinstance(self.feature_space, str) or not self.feature_space.strip():
            raise MarsdiffError(f"feature_space must be a non-empty name such as 'mobilenet_v2', got {self.feature_space!r}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any], feature_space: str) -> "EvaluationSettings":
        """Settings from the schema-filled ``evaluation.metrics`` section, in ``feature_space``
        (the extractor's name). A missing or unknown key is one line naming it."""
        section = dict(section)
        known = config_keys()
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise MarsdiffError(f"{SECTION}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        missing = [key for key in known if key not in section]
        if missing:
            raise MarsdiffError(f"{SECTION}.{missing[0]}: missing; build the section with "
                                f"marsdiff.config.filled_section({SECTION!r}, ...) (the schema holds the defaults)")
        return cls(feature_space=feature_space, **section)

    def to_config(self) -> dict[str, Any]:
        """The ``evaluation.metrics`` section of these settings (round-trips through :meth:`from_config`)."""
        values = {key: getattr(self, key) for key in config_keys()}
        values["category_columns"] = list(self.category_columns)
        return values


def config_keys() -> tuple[str, ...]:
    """The keys of ``evaluation.metrics``: every field but the feature space."""
    return tuple(field.name for field in dataclasses.fields(EvaluationSettings) if field.name != "feature_space")


def require_neighbours(k: int, n: int, key: str, what: str) -> None:
    """A k-NN radius needs k other points: k must be smaller than the number of rows."""
    if k >= n:
        raise MarsdiffError(f"evaluation.{key} = {k} must be smaller than the number of {what} ({n})")


def require_images(n: int, what: str) -> None:
    """Pairwise metrics (covariances, U-statistics, k-NN) need at least two images per set."""
    if n < 2:
        raise MarsdiffError(f"{what} has {n} image(s); evaluation needs at least 2 (set M >= 2)")
