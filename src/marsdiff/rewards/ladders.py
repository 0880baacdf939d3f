"""Diversity ladders: sequences of feature sets of known, increasing diversity.

Each ladder is built from a *pool* of real reference features and yields one set of ``n`` rows
per level; a good diversity reward must increase with the level (rewards are oriented so that
higher = better). The ladders:

* ``copies``   - k distinct craters, each repeated to fill n rows, k = 1, 2, 4, ... n
  (mode collapse up to n distinct real craters);
* ``size`` / ``lighting`` / ``contrast`` - rows drawn evenly from k of the categories of that
  manifest column (k random categories per draw), k = 1 ... all categories;
* ``categories`` - the "missing categories" ladder: rows drawn evenly from k of the joint
  size x lighting categories (18 on the default reference), k = 1 ... all; a set that misses
  categories of crater is less diverse whatever its within-category spread;
* ``noise``    - a noise ladder in feature space: ``mu + t * eps`` with ``eps ~ N(0, S_pool)``
  (pool mean and covariance), t = 0 (every row at the mean) ... 1 (the pool's spread).

Category draws are without replacement while a category has enough rows; otherwise the
category's rows in random order, cycled (each repeated as evenly as possible) (only the low levels of the joint ladder
need it: a joint category holds 5-12 rows of a pool half).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from marsdiff.errors import MarsdiffError

CATEGORY_COLUMNS = {"size": "size_cat", "lighting": "lighting_cat", "contrast": "contrast_cat"}
#: the joint categories of the "missing categories" ladder
JOINT_COLUMNS = ("size_cat", "lighting_cat")
LADDER_NAMES = ("copies", "size", "lighting", "contrast", "categories", "noise")
NOISE_LEVELS = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class LadderLevel:
    level: float
    features: np.ndarray


def copies_levels(n: int) -> list[int]:
    levels = [1]
    while levels[-1] * 2 < n:
        levels.append(levels[-1] * 2)
    return levels + [n]


def copies_ladder(pool: np.ndarray, n: int, rng: np.random.Generator) -> list[LadderLevel]:
    if len(pool) < n:
        raise MarsdiffError(f"copies ladder: the pool has {len(pool)} rows, fewer than the set size {n}")
    order = rng.permutation(len(pool))
    return [LadderLevel(k, pool[order[:k]][np.arange(n) % k]) for k in copies_levels(n)]


def _draw(rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if len(rows) >= count:
        return rng.choice(rows, size=count, replace=False)
    # as few and as even repeats as the category allows: a duplicate is collapse, which the
    # copies ladder measures, not missing categories
    return rng.permutation(rows)[np.arange(count) % len(rows)]


def category_ladder(
    pool: np.ndarray, categories: np.ndarray, n: int, rng: np.random.Generator
) -> list[LadderLevel]:
    names = np.unique(categories)
    if len(names) < 2:
        raise MarsdiffError(f"category ladder needs at least 2 categories, the pool has {len(names)}")
    levels = []
    for k in range(1, len(names) + 1):
        chosen = rng.choice(names, size=k, replace=False)
        counts = np.full(k, n // k)
        counts[rng.choice(k, size=n % k, replace=False)] += 1
        rows = np.concatenate(
            [_draw(np.flatnonzero(categories == name), int(c), rng) for name, c in zip(chosen, counts)]
        )
        levels.append(LadderLevel(k, pool[rows]))
    return levels


def noise_ladder(
    pool: np.ndarray, n: int, rng: np.random.Generator, levels: tuple[float, ...] = NOISE_LEVELS
) -> list[LadderLevel]:
    mean = pool.mean(axis=0)
    centred = pool - mean
    # eps = G Z / sqrt(p - 1) with G standard normal has covariance Z^T Z / (p - 1) = S_pool exactly,
    # without factorising a (possibly singular) d x d covariance.
    eps = rng.standard_normal((n, len(pool))) @ centred / np.sqrt(len(pool) - 1)
    return [LadderLevel(t, mean + t * eps) for t in levels]


def build_ladder(
    name: str, pool: np.ndarray, pool_meta, n: int, rng: np.random.Generator
) -> list[LadderLevel]:
    """The levels of ladder ``name`` drawn from ``pool`` (``pool_meta``: its manifest rows)."""
    if name == "copies":
        return copies_ladder(pool, n, rng)
    if name == "noise":
        return noise_ladder(pool, n, rng)
    if name == "categories":
        missing = [c for c in JOINT_COLUMNS if pool_meta is None or c not in pool_meta]
        if missing:
            raise MarsdiffError(f"ladder 'categories' needs the manifest column(s) {missing}")
        joint = pool_meta[list(JOINT_COLUMNS)].astype(str).agg(" x ".join, axis=1)
        return category_ladder(pool, np.asarray(joint), n, rng)
    if name in CATEGORY_COLUMNS:
        column = CATEGORY_COLUMNS[name]
        if pool_meta is None or column not in pool_meta:
            raise MarsdiffError(f"ladder {name!r} needs the manifest column {column!r}")
        return category_ladder(pool, np.asarray(pool_meta[column].astype(str)), n, rng)
    raise MarsdiffError(f"unknown diversity ladder {name!r}; choose from {', '.join(LADDER_NAMES)}")
