"""Feature files: ``<name>.npy`` (float32, one row per image) beside ``<name>.ids.txt`` (the ids,
one per line, in row order). The contract between extract_features and every stage that reads
features.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import atomic_path, write_text


def write_feature_set(features: np.ndarray, ids: Sequence[str], npy_path: str | os.PathLike) -> Path:
    """Write ``<name>.npy`` and ``<name>.ids.txt`` (ids in row order) atomically; return the ids path."""
    npy_path = Path(npy_path)
    if len(ids) != len(features):
        raise ValueError(f"{len(ids)} ids for {len(features)} feature rows")
    ids_path = ids_path_for(npy_path)
    with atomic_path(npy_path, suffix=".npy") as tmp:
        np.save(tmp, np.ascontiguousarray(features, dtype=np.float32))
    write_text(ids_path, "".join(f"{i}\n" for i in ids))
    return ids_path


def ids_path_for(npy_path: str | os.PathLike) -> Path:
    npy_path = Path(npy_path)
    return npy_path.with_name(npy_path.stem + ".ids.txt")


def read_feature_set(npy_path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Features and ids of a feature set; clear error when missing or inconsistent."""
    npy_path = Path(npy_path)
    ids_path = ids_path_for(npy_path)
    for path in (npy_path, ids_path):
        if not path.is_file():
            raise MarsdiffError(f"{path}: feature file not found (run the extract_features stage)")
    try:
        features = np.load(npy_path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise MarsdiffError(f"{npy_path}: unreadable feature array ({err})") from None
    ids = ids_path.read_text().splitlines()
    if features.ndim != 2 or len(ids) != len(features):
        raise MarsdiffError(f"{npy_path}: {features.shape} features do not match {len(ids)} ids in {ids_path}")
    return features, ids
