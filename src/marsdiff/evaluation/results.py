"""The result of an evaluation: five tables, written to and read from one directory as CSV.

``metrics.csv`` (long form, one row per model x metric) is the contract with the report stage:

======================  ==================================================================
column                  meaning
======================  ==================================================================
model                   model name; ``real`` = random train draws of the same size scored
                        like a model; ``real (held-out halves)`` = split-half MMD baseline
metric                  ``FD_<feature space>``, ``KID``, ``MMD2_rbf``, ``precision``, ``recall``,
                        ``density``, ``coverage``, ``vendi``, ``KL_<category column>``,
                        ``modes_covered``, ``near_duplicate_pairs``, ``memorisation_ratio``,
                        ``memorisation_pass``
value                   point estimate on all M generated images
ci_low, ci_high         interval bounds (confidence in the settings, 95 % by default)
higher_is_better        direction of the metric
interval                ``percentile``, ``bias-shifted percentile`` (bootstrap over generated
                        images) or ``spread over draws`` (real baselines)
n_generated             M (images of the model, or real images per draw)
n_reference             held-out images compared against
feature_space           the extractor the features come from
detail                  one line: kernel, bandwidth, k, thresholds, classifier accuracy
======================  ==================================================================

``bootstrap.csv`` (model, metric, replicate, value) keeps the replicates so that
:func:`marsdiff.evaluation.endpoints.comparison_table` can put an interval on paired
differences between models; ``category_coverage.csv``, ``category_shares.csv`` and ``reference.csv`` feed
the per-category plot and the report's notes on the held-out set and the classifier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.io.reading import read_csv, rerun_hint
from marsdiff.io.atomic import atomic_path

METRIC_COLUMNS = [
    "model", "metric", "value", "ci_low", "ci_high", "higher_is_better", "interval",
    "n_generated", "n_reference", "feature_space", "detail",
]
REPLICATE_COLUMNS = ["model", "metric", "replicate", "value"]
CATEGORY_COVERAGE_COLUMNS = ["model", "column", "category", "coverage", "ci_low", "ci_high", "n_heldout"]
CATEGORY_SHARE_COLUMNS = ["model", "column", "category", "generated_share", "heldout_share"]
REFERENCE_COLUMNS = ["quantity", "value", "ci_low", "ci_high", "detail"]

FILES = {
    "metrics": "metrics.csv",
    "replicates": "bootstrap.csv",
    "category_coverage": "category_coverage.csv",
    "category_shares": "category_shares.csv",
    "reference_summary": "reference.csv",
}


@dataclass
class Evaluation:
    """All tables of one evaluation (see the module docstring for the columns)."""

    metrics: pd.DataFrame
    replicates: pd.DataFrame
    category_coverage: pd.DataFrame
    category_shares: pd.DataFrame
    reference_summary: pd.DataFrame

    def write(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write every table as CSV into ``directory`` (atomically); return the paths by table."""
        directory = Path(directory)
        paths = {}
        for name, filename in FILES.items():
            path = directory / filename
            with atomic_path(path) as tmp:
                getattr(self, name).to_csv(tmp, index=False)
            paths[name] = path
        return paths

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "Evaluation":
        directory = Path(directory)
        tables = {}
        for name, filename in FILES.items():
            path = directory / filename
            if not path.is_file():
                raise MarsdiffError(f"{path}: evaluation table not found (run the evaluate stage)")
            tables[name] = read_csv(path, "evaluation table", "evaluate", keep_default_na=True)
        if "higher_is_better" not in tables["metrics"] or "detail" not in tables["metrics"]:
            raise MarsdiffError(f"{directory / FILES['metrics']}: no higher_is_better/detail column; "
                                f"{rerun_hint('evaluate')}")
        tables["metrics"]["higher_is_better"] = tables["metrics"]["higher_is_better"].astype(bool)
        tables["metrics"]["detail"] = tables["metrics"]["detail"].fillna("")
        return cls(**tables)

    def models(self) -> list[str]:
        """Model names in the order they were evaluated."""
        return list(dict.fromkeys(self.metrics["model"]))
