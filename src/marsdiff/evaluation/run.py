"""The ``evaluate`` stage on files: every model's evaluation features against the **held-out**
rows of the reference features at the matched resolution, written as CSV tables.

Kept apart from :mod:`marsdiff.evaluation.stage` (the summary, which reads the pixel statistics)
so that the stage's code version (``code_version`` in workflow/rules/evaluate.smk) covers only the
code that computes the tables: editing the pixel statistics or the summary re-runs no evaluation.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from marsdiff.evaluation.evaluate import evaluate_models
from marsdiff.evaluation.reference import ReferenceSet
from marsdiff.evaluation.results import Evaluation
from marsdiff.evaluation.settings import EvaluationSettings

log = logging.getLogger(__name__)


def evaluation_settings(metrics_cfg: Mapping[str, Any] | None, extractor: str) -> EvaluationSettings:
    """The metric settings of the config (``evaluation.metrics``) in the extractor's feature space."""
    return EvaluationSettings.from_config({**dict(metrics_cfg or {}), "feature_space": extractor})


def load_reference(manifest: str | os.PathLike, features: str | os.PathLike, extractor: str,
                   settings: EvaluationSettings) -> ReferenceSet:
    """Held-out and train rows of the resized reference features, split and categorised by the manifest."""
    from marsdiff.io.feature_files import read_feature_set

    read_feature_set(features, extractor=extractor)  # refuses features another extractor wrote
    return ReferenceSet.from_files(manifest, features, settings.category_columns)


def load_generated(paths: Mapping[str, str | os.PathLike], extractor: str, dim: int) -> dict[str, Any]:
    from marsdiff.io.feature_files import read_feature_set

    return {name: read_feature_set(path, extractor=extractor, expected_dim=dim)[0] for name, path in paths.items()}


def run_evaluation(manifest: str | os.PathLike, reference_features: str | os.PathLike,
                   generated: Mapping[str, str | os.PathLike], extractor: str,
                   metrics_cfg: Mapping[str, Any] | None, out_dir: str | os.PathLike) -> Evaluation:
    """Stage evaluate: all metrics with intervals and the real-vs-real baselines, as CSV tables."""
    settings = evaluation_settings(metrics_cfg, extractor)
    reference = load_reference(manifest, reference_features, extractor, settings)
    log.info("reference: %d held-out and %d train crops, %d dimensions (%s)", len(reference.heldout),
             len(reference.train), reference.dim, extractor)
    features = load_generated(generated, extractor, reference.dim)
    evaluation = evaluate_models(features, reference, settings)
    evaluation.write(out_dir)
    log.info("evaluated %d model(s) on %d metrics into %s", len(features), evaluation.metrics["metric"].nunique(), out_dir)
    return evaluation
