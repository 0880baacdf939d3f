"""Feature files: ``<name>.npy`` (float32, one row per image) beside ``<name>.ids.txt`` (the ids,
one per line, in row order) and ``<name>.json`` (which extractor wrote them: name, dimension,
dtype, cache key). The contract between extract_features and every stage that reads features.

Readers check a file against the extractor they expect (:func:`read_feature_set`): features
of another width or dtype are refused with one line naming the file, never silently used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import atomic_path, write_json, write_text

FEATURE_DTYPE = np.dtype(np.float32)


def ids_path_for(npy_path: str | os.PathLike) -> Path:
    npy_path = Path(npy_path)
    return npy_path.with_name(npy_path.stem + ".ids.txt")


def info_path_for(npy_path: str | os.PathLike) -> Path:
    npy_path = Path(npy_path)
    return npy_path.with_name(npy_path.stem + ".json")


def write_feature_set(features: np.ndarray, ids: Sequence[str], npy_path: str | os.PathLike,
                      extractor: Any | None = None) -> Path:
    """Write ``<name>.npy`` and ``<name>.ids.txt`` (ids in row order) atomically; return the ids path.

    ``extractor`` (an object with ``name``, ``dim`` and ``cache_key()``, e.g. a FeatureExtractor)
    also writes ``<name>.json`` so readers can check the file against the extractor they expect.
    """
    npy_path = Path(npy_path)
    features = np.ascontiguousarray(features, dtype=FEATURE_DTYPE)
    if len(ids) != len(features):
        raise ValueError(f"{len(ids)} ids for {len(features)} feature rows")
    if extractor is not None and (features.ndim != 2 or features.shape[1] != int(extractor.dim)):
        raise ValueError(f"features of shape {features.shape} from extractor {extractor.name} of dimension {extractor.dim}")
    ids_path = ids_path_for(npy_path)
    with atomic_path(npy_path, suffix=".npy") as tmp:
        np.save(tmp, features)
    write_text(ids_path, "".join(f"{i}\n" for i in ids))
    if extractor is not None:
        write_json(info_path_for(npy_path), {
            "extractor": extractor.name, "dim": int(extractor.dim), "dtype": FEATURE_DTYPE.name,
            "rows": len(features), "cache_key": extractor.cache_key(),
        })
    return ids_path


def read_feature_set(npy_path: str | os.PathLike, extractor: str | None = None,
                     expected_dim: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Features and ids of a feature set; one-line error when missing, inconsistent or not what
    the reader expects.

    Always: a 2-D float32 array with one id per row. ``extractor``: the ``<name>.json`` written
    with the features must exist and name this extractor, and the width must be its dimension.
    ``expected_dim``: the width the reader's own extractor produces (e.g. ``extractor.dim`` when
    the reader embeds new images to compare with these).
    """
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
    if features.dtype != FEATURE_DTYPE:
        raise MarsdiffError(f"{npy_path}: features are {features.dtype}, expected {FEATURE_DTYPE.name} (re-run extract_features)")
    info = _read_info(npy_path)
    if info is not None and int(info.get("dim", -1)) != features.shape[1]:
        raise MarsdiffError(f"{npy_path}: {features.shape[1]}-D features but {info_path_for(npy_path).name} says "
                            f"{info.get('extractor')} writes {info.get('dim')}-D (re-run extract_features)")
    if extractor is not None:
        if info is None:
            raise MarsdiffError(f"{npy_path}: no {info_path_for(npy_path).name} saying which extractor wrote these "
                                f"features (expected {extractor}; re-run extract_features)")
        if info.get("extractor") != extractor:
            raise MarsdiffError(f"{npy_path}: features of extractor {info.get('extractor')}, expected {extractor}")
    if expected_dim is not None and features.shape[1] != int(expected_dim):
        raise MarsdiffError(f"{npy_path}: {features.shape[1]}-D features, the extractor gives {int(expected_dim)}-D "
                            "(features from another extractor setting? re-run extract_features)")
    # Checked here, where the file is known: the reward and metric code sees only an array.
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise MarsdiffError(f"{npy_path}: NaN or inf in {int(bad.sum())} of {len(features)} feature rows (first: id "
                            f"{ids[first]}); the file is damaged: re-run the stage that wrote it")
    return features, ids


def _read_info(npy_path: Path) -> dict | None:
    path = info_path_for(npy_path)
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MarsdiffError(f"{path}: unreadable feature description ({err})") from None
    if not isinstance(info, dict):
        raise MarsdiffError(f"{path}: feature description is not a JSON object")
    return info
