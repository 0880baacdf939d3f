"""Stages evaluate and evaluate_stream: every model's evaluation features against the
**held-out** rows of the reference features at the matched resolution, written as CSV tables.

Reads the feature files and the samples tables (each image's conditioning) and hands them to
:func:`marsdiff.evaluation.evaluate.evaluate_models`. Kept apart from
:mod:`marsdiff.stages.report_summary` (the summary, which reads the pixel statistics) so that the
stage's code version (``code_version`` in workflow/rules/evaluate.smk) covers only the code that
computes the tables: editing the pixel statistics or the summary re-runs no evaluation.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.evaluate import evaluate_models
from marsdiff.evaluation.reference import ReferenceSet
from marsdiff.evaluation.results import Evaluation
from marsdiff.evaluation.settings import EvaluationSettings

log = logging.getLogger(__name__)


def evaluation_settings(metrics_cfg: Mapping[str, Any], extractor: str) -> EvaluationSettings:
    """The metric settings of the config (``evaluation.metrics``, schema-filled) in the extractor's feature space."""
    return EvaluationSettings.from_config(metrics_cfg, extractor)


def load_reference(manifest: str | os.PathLike, features: str | os.PathLike, extractor: str,
                   settings: EvaluationSettings) -> ReferenceSet:
    """Held-out and train rows of the resized reference features, split and categorised by the manifest."""
    from marsdiff.io.feature_files import read_feature_set

    read_feature_set(features, extractor=extractor)  # refuses features another extractor wrote
    return ReferenceSet.from_files(manifest, features, settings.category_columns)


def load_generated(paths: Mapping[str, str | os.PathLike], extractor: str,
                   dim: int) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """model -> features, and model -> the image id of each feature row."""
    from marsdiff.io.feature_files import read_feature_set

    loaded = {name: read_feature_set(path, extractor=extractor, expected_dim=dim) for name, path in paths.items()}
    return {name: x for name, (x, _) in loaded.items()}, {name: ids for name, (_, ids) in loaded.items()}


def load_conditioning(samples: Mapping[str, str | os.PathLike], ids: Mapping[str, list[str]]) -> dict[str, Any]:
    """model -> each image's conditioning (``samples.csv``'s condition_name), in feature-row order."""
    from marsdiff.io.reading import read_csv, rerun_hint

    labels = {}
    for name, path in samples.items():
        table = read_csv(path, "samples table", "generate_samples", columns=("image_id", "condition_name"),
                         dtype={"image_id": str, "condition_name": str})
        by_id = dict(zip(table["image_id"], table["condition_name"]))
        absent = [image for image in ids[name] if image not in by_id]
        if absent:
            raise MarsdiffError(f"{path}: no row for image {absent[0]} of the features; {rerun_hint('generate_samples')}")
        labels[name] = [by_id[image] for image in ids[name]]
    return labels


def run_evaluation(manifest: str | os.PathLike, reference_features: str | os.PathLike,
                   generated: Mapping[str, str | os.PathLike], extractor: str,
                   metrics_cfg: Mapping[str, Any], out_dir: str | os.PathLike,
                   samples: Mapping[str, str | os.PathLike] | None = None) -> Evaluation:
    """Stages evaluate and evaluate_stream: all metrics with intervals and the real-vs-real
    baselines, as CSV tables.

    ``samples``: model -> its ``samples.csv``, whose conditioning labels the train-on-synthetic
    metrics use (models without one get none)."""
    settings = evaluation_settings(metrics_cfg, extractor)
    reference = load_reference(manifest, reference_features, extractor, settings)
    log.info("reference: %d held-out and %d train crops, %d dimensions (%s)", len(reference.heldout),
             len(reference.train), reference.dim, extractor)
    features, ids = load_generated(generated, extractor, reference.dim)
    labels = load_conditioning(samples or {}, ids)
    evaluation = evaluate_models(features, reference, settings, labels)
    evaluation.write(out_dir)
    log.info("evaluated %d model(s) on %d metrics into %s", len(features), evaluation.metrics["metric"].nunique(), out_dir)
    return evaluation
