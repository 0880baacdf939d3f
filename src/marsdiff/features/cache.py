"""Feature cache keyed by image content and extractor identity.

One ``<cache_dir>/<extractor key>.npz`` per extractor configuration holds the SHA-256 of every
image file seen so far and its feature vector. Re-extracting a set computes only the images whose
bytes are new; the cache lives outside Snakemake's outputs so a re-run of the rule reuses it.

Several jobs may extract with the same extractor at once (cluster jobs, ``--cores`` > 1). A save
therefore takes an exclusive lock on ``<cache file>.lock``, merges the entries another job saved
since this one loaded, and replaces the file atomically: no job's entries are lost, and a reader
never sees a half-written file. (``flock`` works on local disks and on NFS v4; on a file system
without locks, give each job its own ``features.cache_dir``.)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from marsdiff.data.images import load_image
from marsdiff.errors import MarsdiffError
from marsdiff.features.base import FeatureExtractor
from marsdiff.io.atomic import atomic_path
from marsdiff.io.digests import file_digest

log = logging.getLogger(__name__)


@dataclass
class CacheStats:
    hits: int
    misses: int


class FeatureCache:
    def __init__(self, cache_dir: str | os.PathLike, extractor: FeatureExtractor):
        self.path = Path(cache_dir) / f"{extractor.name}-{extractor.cache_key()}.npz"
        self.dim = extractor.dim
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        self.vectors = self._stored()

    def _stored(self) -> dict[str, np.ndarray]:
        """The entries in the cache file now (empty when it is missing or unreadable)."""
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                digests, features = stored["digests"], stored["features"]
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable feature cache %s (%s); it will be rebuilt", self.path, err)
            return {}
        if features.ndim != 2 or features.shape[1] != self.dim or len(digests) != len(features):
            log.warning("ignoring feature cache %s with unexpected shape %s", self.path, features.shape)
            return {}
        return {str(d): features[i] for i, d in enumerate(digests)}

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def save(self) -> None:
        """Merge this job's entries into the file on disk, under the lock (see the module docstring)."""
        with self._locked():
            # an entry is a pure function of the image bytes and the extractor: either copy will do
            self.vectors = {**self._stored(), **self.vectors}
            digests = np.array(sorted(self.vectors), dtype="U64")
            features = np.stack([self.vectors[d] for d in digests]) if len(digests) else np.zeros((0, self.dim), np.float32)
            with atomic_path(self.path, suffix=".npz") as tmp:
                np.savez(tmp, digests=digests, features=features.astype(np.float32))


def extract_with_cache(paths: Sequence[str | os.PathLike], extractor: FeatureExtractor,
                       cache_dir: str | os.PathLike | None, progress: bool = True) -> tuple[np.ndarray, CacheStats]:
    """Features of the image files ``paths`` (in order), computing only uncached contents."""
    digests = [file_digest(p) for p in paths]
    cache = FeatureCache(cache_dir, extractor) if cache_dir is not None else None
    known = cache.vectors if cache is not None else {}
    todo = sorted({d: p for d, p in zip(digests, paths) if d not in known}.items())
    if todo:
        log.info("%s: extracting %d new image(s), %d cached", extractor.name, len(todo), len(paths) - len(todo))
        fresh = extractor.extract([load_image(p, mode="RGB") for _, p in todo], progress=progress)
        if not np.all(np.isfinite(fresh)):
            raise MarsdiffError(f"{extractor.name} produced non-finite features (check the weights)")
        new_vectors = {d: fresh[i] for i, (d, _) in enumerate(todo)}
        if cache is not None:
            cache.vectors.update(new_vectors)
            cache.save()
        known = {**known, **new_vectors}
    else:
        log.info("%s: all %d image(s) cached", extractor.name, len(paths))
    features = np.stack([known[d] for d in digests]) if digests else np.zeros((0, extractor.dim), np.float32)
    return features.astype(np.float32), CacheStats(hits=len(paths) - len(todo), misses=len(todo))
