"""The reference side of an evaluation: held-out and train features with their categories.

Evaluation compares generated images with the **held-out** split only (never read by training,
rewards or RL). The **train** split is used for three things that need real images the models
may have seen: the category classifier (fitted on train), the memorisation check (distance to
the nearest train crop), and the real-vs-real baseline (random train draws of the same size as
the generated set, scored against the held-out split exactly like a model).

:class:`ReferenceSet` holds both splits as float64 matrices plus their category labels, checked
once; :meth:`ReferenceSet.from_files` reads them from the reference manifest and the reference
feature file (one row per crop; ids join the two).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.rewards.inputs import as_features

HELDOUT_SPLIT = "heldout"
TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class ReferenceSet:
    """Held-out and train feature matrices (float64, same width) and their category labels."""

    heldout: np.ndarray
    train: np.ndarray
    heldout_categories: pd.DataFrame
    train_categories: pd.DataFrame
    heldout_ids: tuple[str, ...] = ()
    train_ids: tuple[str, ...] = ()

    @classmethod
    def from_arrays(
        cls,
        heldout: Any,
        train: Any,
        heldout_categories: pd.DataFrame | None = None,
        train_categories: pd.DataFrame | None = None,
        heldout_ids: Sequence[str] | None = None,
        train_ids: Sequence[str] | None = None,
    ) -> "ReferenceSet":
        """Check and convert; categories are DataFrames with one column per category kind."""
        if heldout is None or len(heldout) == 0:
            raise MarsdiffError(
                "the held-out reference split is empty: evaluation needs held-out crops "
                "(set reference.heldout_fraction > 0)"
            )
        heldout = as_features(heldout, "held-out reference features", min_rows=2)
        train = as_features(train, "train reference features", min_rows=2)
        if heldout.shape[1] != train.shape[1]:
            raise MarsdiffError(
                f"feature dimension mismatch: held-out features have {heldout.shape[1]} dimensions, "
                f"train features {train.shape[1]}"
            )
        heldout_categories = _categories(heldout_categories, len(heldout), "held-out")
        train_categories = _categories(train_categories, len(train), "train")
        return cls(
            heldout=heldout,
            train=train,
            heldout_categories=heldout_categories,
            train_categories=train_categories,
            heldout_ids=_ids(heldout_ids, len(heldout), "held-out"),
            train_ids=_ids(train_ids, len(train), "train"),
        )

    @classmethod
    def from_files(
        cls,
        manifest_path: str | os.PathLike,
        features_path: str | os.PathLike,
        category_columns: Sequence[str],
    ) -> "ReferenceSet":
        """Split the reference feature file by the manifest's ``split`` column (joined on ``id``);
        ``category_columns``: the manifest columns to keep (``evaluation.metrics.category_columns``)."""
        from marsdiff.data.manifest import read_manifest
        from marsdiff.io.feature_files import read_feature_set

        manifest = read_manifest(manifest_path)
        features, ids = read_feature_set(features_path)
        missing_columns = [c for c in category_columns if c not in manifest.columns]
        if missing_columns:
            raise MarsdiffError(f"{manifest_path}: manifest lacks category column(s) {', '.join(missing_columns)}")
        rows = manifest.set_index(manifest["id"].astype(str))
        unknown = [i for i in ids if i not in rows.index]
        if unknown:
            raise MarsdiffError(
                f"{features_path}: {len(unknown)} feature ids are not in the manifest (first: {unknown[0]})"
            )
        rows = rows.loc[list(ids)].reset_index(drop=True)
        split = rows["split"].astype(str).to_numpy()
        heldout, train = split == HELDOUT_SPLIT, split == TRAIN_SPLIT
        if not heldout.any():
            raise MarsdiffError(
                f"{manifest_path}: the held-out split is empty (no row has split == 'heldout'); "
                "set reference.heldout_fraction > 0"
            )
        columns = list(category_columns)
        return cls.from_arrays(
            features[heldout],
            features[train],
            rows.loc[heldout, columns].reset_index(drop=True),
            rows.loc[train, columns].reset_index(drop=True),
            [ids[i] for i in np.flatnonzero(heldout)],
            [ids[i] for i in np.flatnonzero(train)],
        )

    @property
    def dim(self) -> int:
        return int(self.heldout.shape[1])

    def check_generated(self, generated: Any, name: str) -> np.ndarray:
        """A generated feature matrix as float64 (n >= 2 rows) in this reference's feature space."""
        from marsdiff.evaluation.settings import require_images

        if generated is None or len(generated) < 2:
            require_images(0 if generated is None else len(generated), f"generated set {name!r}")
        features = as_features(generated, f"generated features of {name!r}", min_rows=2)
        if features.shape[1] != self.dim:
            raise MarsdiffError(
                f"feature dimension mismatch: generated set {name!r} has {features.shape[1]} dimensions, "
                f"the held-out reference {self.dim} (were they made by the same extractor?)"
            )
        return features

    def require_category_columns(self, columns: Sequence[str]) -> None:
        for split, table in (("held-out", self.heldout_categories), ("train", self.train_categories)):
            missing = [c for c in columns if c not in table.columns]
            if missing:
                raise MarsdiffError(f"{split} reference categories lack column(s) {', '.join(missing)}")


def _categories(table: pd.DataFrame | None, rows: int, split: str) -> pd.DataFrame:
    if table is None:
        return pd.DataFrame(index=range(rows))
    table = pd.DataFrame(table).reset_index(drop=True)
    if len(table) != rows:
        raise MarsdiffError(f"{split} categories have {len(table)} rows for {rows} {split} feature rows")
    return table.astype(str)


def _ids(ids: Sequence[str] | None, rows: int, split: str) -> tuple[str, ...]:
    if ids is None:
        return tuple(f"{split}_{i}" for i in range(rows))
    if len(ids) != rows:
        raise MarsdiffError(f"{split} ids: {len(ids)} ids for {rows} feature rows")
    return tuple(str(i) for i in ids)
