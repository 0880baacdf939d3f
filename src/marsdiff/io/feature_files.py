"""Feature files: ``<name>.npy`` (float32, one row per image) beside ``<name>.ids.txt`` (the ids,
one per line, in row order) and ``<name>.json`` (which extractor wrote them: name, dimension,
dtype, cache key). The contract between extract_features and every stage that reads features.

Readers check a file against the extractor they expect (:func:`read_feature_set`): features
of another width or dtype are refused with one line naming the file, never silently used.

Integrity: ``<name>.json`` is always written and records the ``.npy`` file's sha256; readers
check it before loading, so flipped bytes in a features file are caught, not turned into a
slightly different reward or metric. A description without a hash (an older marsdiff) or a
missing description is refused with the rule to re-run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import atomic_path, write_json, write_text
from marsdiff.io.digests import file_digest
from marsdiff.io.reading import load_npy, read_json, rerun_hint, verify_sha256

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

    ``<name>.json`` records the array's sha256 and shape; with ``extractor`` (an object with
    ``name``, ``dim`` and ``cache_key()``, e.g. a FeatureExtractor) also which extractor wrote
    it, so readers can check the file against the extractor they expect.
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
    info = {"dim": int(features.shape[1]) if features.ndim == 2 else None, "dtype": FEATURE_DTYPE.name,
            "rows": len(features), "sha256": file_digest(npy_path), "extractor": None}
    if extractor is not None:
        info.update({"extractor": extractor.name, "dim": int(extractor.dim), "cache_key": extractor.cache_key()})
    write_json(info_path_for(npy_path), info)
    return ids_path


def writer_rule(npy_path: str | os.PathLike) -> str:
    """The workflow rule that writes a features file, from where the workflow puts it (for
    "re-run" hints): results/eval/features/<model>/ (generated sets), results/features/
    reference_<N>px/ (the reference at the scoring resolution), else results/features/reference/."""
    parts = Path(npy_path).parts
    if "runs" in parts:  # a round's features (the reward pool), written by score_round
        return "score_round"
    if "eval" in parts:
        return "extract_sample_features"
    if any(part.startswith("reference_") and part.endswith("px") for part in parts):
        return "extract_resized_features"
    return "extract_features"


def read_feature_set(npy_path: str | os.PathLike, extractor: str | None = None,
                     expected_dim: int | None = None, rows: Sequence[str] | None = None,
                     rows_name: str = "the requested rows") -> tuple[np.ndarray, list[str]]:
    """Features and ids of a feature set; one-line error when missing, inconsistent or not what
    the reader expects.

    Always: a 2-D float32 array with one id per row. ``extractor``: the ``<name>.json`` written
    with the features must exist and name this extractor, and the width must be its dimension.
    ``expected_dim``: the width the reader's own extractor produces (e.g. ``extractor.dim`` when
    the reader embeds new images to compare with these). ``rows``: only these ids, in this order;
    only their values are looked at (``rows_name`` names them in the errors), so a reader that must
    not depend on the other rows (the knob selection and the held-out crops) does not.
    """
    npy_path = Path(npy_path)
    ids_path = ids_path_for(npy_path)
    rule = writer_rule(npy_path)
    for path in (npy_path, ids_path):
        if not path.is_file():
            raise MarsdiffError(f"{path}: feature file not found (run the {rule} stage)")
    info = _read_info(npy_path, rule)
    verify_sha256(npy_path, info.get("sha256"), info_path_for(npy_path), rule)
    features = load_npy(npy_path, "feature array", rule)
    try:
        ids = ids_path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise MarsdiffError(f"{ids_path}: unreadable feature ids ({err}); {rerun_hint(rule)}") from None
    if features.ndim != 2 or len(ids) != len(features):
        raise MarsdiffError(f"{npy_path}: {features.shape} features do not match {len(ids)} ids in {ids_path}")
    if features.dtype != FEATURE_DTYPE:
        raise MarsdiffError(f"{npy_path}: features are {features.dtype}, expected {FEATURE_DTYPE.name}; {rerun_hint(rule)}")
    if info.get("dim") is not None and int(info["dim"]) != features.shape[1]:
        raise MarsdiffError(f"{npy_path}: {features.shape[1]}-D features but {info_path_for(npy_path).name} says "
                            f"{info.get('extractor')} writes {info.get('dim')}-D; {rerun_hint(rule)}")
    if extractor is not None:
        if info.get("extractor") != extractor:
            raise MarsdiffError(f"{npy_path}: features of extractor {info.get('extractor')}, expected {extractor}")
    if expected_dim is not None and features.shape[1] != int(expected_dim):
        raise MarsdiffError(f"{npy_path}: {features.shape[1]}-D features, the extractor gives {int(expected_dim)}-D "
                            f"(features from another extractor setting? {rerun_hint(rule)})")
    if rows is not None:
        where = {i: n for n, i in enumerate(ids)}
        missing = [i for i in rows if i not in where]
        if missing:
            raise MarsdiffError(f"{npy_path}: no features for {missing[0]} of {rows_name}; {rerun_hint(rule)}")
        features, ids = features[[where[i] for i in rows]], list(rows)
        if not np.isfinite(features).all():
            raise MarsdiffError(f"{npy_path}: NaN or inf in {rows_name}' features; {rerun_hint(rule)}")
        return features, ids
    # Checked here, where the file is known: the reward and metric code sees only an array.
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise MarsdiffError(f"{npy_path}: NaN or inf in {int(bad.sum())} of {len(features)} feature rows (first: id "
                            f"{ids[first]}); the file is damaged: {rerun_hint(rule)}")
    return features, ids


def _read_info(npy_path: Path, rule: str) -> dict:
    path = info_path_for(npy_path)
    if not path.is_file():
        raise MarsdiffError(f"{npy_path}: no {path.name} beside it recording its extractor and sha256 "
                            f"(written by an older marsdiff?); {rerun_hint(rule)}")
    return read_json(path, "feature description", rule)
