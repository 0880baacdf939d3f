"""Two jobs writing the same feature cache: neither loses the other's entries."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

import numpy as np

from marsdiff.features.cache import FeatureCache

EXTRACTOR = SimpleNamespace(name="fake", dim=3, cache_key=lambda: "k1")


def _digest(writer: int, i: int) -> str:
    return f"{writer:02d}{i:062d}"


def _vector(writer: int, i: int) -> np.ndarray:
    return np.array([writer, i, writer * 100 + i], dtype=np.float32)


def test_interleaved_saves_merge_instead_of_overwriting(tmp_path):
    first, second = FeatureCache(tmp_path, EXTRACTOR), FeatureCache(tmp_path, EXTRACTOR)  # both load an empty cache
    first.vectors[_digest(1, 0)] = _vector(1, 0)
    first.save()
    second.vectors[_digest(2, 0)] = _vector(2, 0)
    second.save()  # before the lock and merge, this save dropped the first job's entry
    stored = FeatureCache(tmp_path, EXTRACTOR).vectors
    assert set(stored) == {_digest(1, 0), _digest(2, 0)}
    np.testing.assert_array_equal(stored[_digest(1, 0)], _vector(1, 0))


def _writer(cache_dir: str, writer: int, entries: int) -> None:
    for i in range(entries):
        cache = FeatureCache(cache_dir, EXTRACTOR)
        cache.vectors[_digest(writer, i)] = _vector(writer, i)
        cache.save()


def test_two_concurrent_writer_processes_keep_every_entry(tmp_path):
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_writer, args=(str(tmp_path), w, 25)) for w in (1, 2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    stored = FeatureCache(tmp_path, EXTRACTOR).vectors
    assert set(stored) == {_digest(w, i) for w in (1, 2) for i in range(25)}
    for w in (1, 2):
        for i in range(25):
            np.testing.assert_array_equal(stored[_digest(w, i)], _vector(w, i))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") or ".tmp" in p.name], "a temporary file was left"
