"""Stages ``extract_features`` and ``extract_resized_features``: one extractor's features of an
image set, through the content-keyed cache, into a ``.npy`` feature file.

An image set is a manifest CSV (the reference, or the resized reference) or a folder of PNGs,
turned into ordered (id, path) lists here; the encoders and the cache are
:mod:`marsdiff.features`', the feature-file contract :mod:`marsdiff.io.feature_files`'.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from marsdiff.data.images import is_image_name
from marsdiff.errors import MarsdiffError
from marsdiff.features.cache import CacheStats, extract_with_cache
from marsdiff.features.registry import build_extractor
from marsdiff.io.feature_files import write_feature_set

log = logging.getLogger(__name__)


def list_image_set(source: str | os.PathLike) -> tuple[list[str], list[Path]]:
    """Ids and paths of an image set: a manifest CSV (columns id, path relative to it) or a
    directory (ids = file stems, sorted)."""
    source = Path(source)
    if source.is_file() and source.suffix == ".csv":
        from marsdiff.data.manifest import read_manifest

        manifest = read_manifest(source)
        return manifest["id"].astype(str).tolist(), [source.parent / p for p in manifest["path"]]
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and is_image_name(p.name))
        if not paths:
            raise MarsdiffError(f"{source}: no images in this folder")
        return [p.stem for p in paths], paths
    raise MarsdiffError(f"{source}: image set not found (expected a manifest .csv or a folder of images)")


def extract_image_set(source: str | os.PathLike, extractor_name: str, features_cfg: dict,
                      out_npy: str | os.PathLike, progress: bool = True) -> CacheStats:
    """Stage extract_features (and extract_resized_features): write ``out_npy`` (float32, one row
    per image) and its ``.ids.txt`` for an image set."""
    ids, paths = list_image_set(source)
    extractor = build_extractor(extractor_name, features_cfg)
    features, stats = extract_with_cache(paths, extractor, features_cfg.get("cache_dir"), progress=progress)
    write_feature_set(features, ids, out_npy, extractor=extractor)
    log.info("%s: wrote %s %s (cache hits %d, misses %d)", extractor_name, out_npy, features.shape, stats.hits, stats.misses)
    return stats
