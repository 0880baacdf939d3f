"""Per-image reward table: exact leave-one-out credit plus neighbourhood flags for each image.

One row per generated image (the future ``rewards.csv`` of the score_round stage):

``id`` · ``reward`` (credit to the configured combination, ``R(X) - R(X without x_i)``) ·
``rank`` (1 = largest credit) · ``reward_<term>`` (raw credit of each term) · ``nn_id`` /
``nn_distance`` (nearest other generated image) · ``duplicate`` (``nn_distance <=
duplicate_distance``) · ``ref_nn_id`` / ``ref_nn_distance`` (nearest reference image) · ``novel``
(``ref_nn_distance > novel_distance``, i.e. far from every reference image).

Distances are Euclidean in the reward's feature space. Unless given explicitly, the thresholds
are scale-free: ``duplicate_factor`` and ``novel_factor`` (config) times the median
nearest-neighbour distance within the reference set, so they mean the same for every extractor.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.rewards.combined import RewardModel
from marsdiff.rewards.inputs import as_features
from marsdiff.rewards.kernels import squared_distances


def nearest_neighbours(queries: np.ndarray, points: np.ndarray, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index of and Euclidean distance to the nearest row of ``points`` for each query row."""
    d2 = squared_distances(queries, None if exclude_self else points)
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    index = np.argmin(d2, axis=1)
    return index, np.sqrt(d2[np.arange(len(queries)), index])


def reference_nn_median(reference: np.ndarray) -> float:
    """Median distance from each reference row to its nearest other reference row."""
    _, distances = nearest_neighbours(reference, reference, exclude_self=True)
    return float(np.median(distances))


def per_image_table(
    model: RewardModel,
    generated: Any,
    ids: Sequence[str] | None = None,
    reference_ids: Sequence[str] | None = None,
    duplicate_distance: float | None = None,
    novel_distance: float | None = None,
    pool: Any = None,
) -> pd.DataFrame:
    """The per-image reward table for one generated set (see the module docstring).

    ``pool``: earlier generated features that join the set for the credit (``R(S u P) -
    R(S u P - x)``); the neighbourhood columns stay within the round's own images.
    """
    credit = model.leave_one_out(generated, pool=pool)
    x = as_features(generated, "generated features", min_rows=3)
    n = len(x)
    ids = [str(i) for i in (ids if ids is not None else range(n))]
    if len(ids) != n:
        raise MarsdiffError(f"per-image table: {len(ids)} ids for {n} generated feature rows")
    reference = model.reference
    reference_ids = [str(i) for i in (reference_ids if reference_ids is not None else range(len(reference)))]
    if len(reference_ids) != len(reference):
        raise MarsdiffError(f"per-image table: {len(reference_ids)} reference ids for {len(reference)} reference rows")
    if duplicate_distance is None or novel_distance is None:
        typical = reference_nn_median(reference)
        if duplicate_distance is None:
            duplicate_distance = model.config.duplicate_factor * typical
        if novel_distance is None:
            novel_distance = model.config.novel_factor * typical
    nn_index, nn_distance = nearest_neighbours(x, x, exclude_self=True)
    ref_index, ref_distance = nearest_neighbours(x, reference, exclude_self=False)
    table = pd.DataFrame({"id": ids, "reward": credit.combined})
    table["rank"] = table["reward"].rank(ascending=False, method="min").astype(int)
    for name, values in credit.terms.items():
        table[f"reward_{name}"] = values
    table["nn_id"] = [ids[i] for i in nn_index]
    table["nn_distance"] = nn_distance
    table["duplicate"] = nn_distance <= duplicate_distance
    table["ref_nn_id"] = [reference_ids[i] for i in ref_index]
    table["ref_nn_distance"] = ref_distance
    table["novel"] = ref_distance > novel_distance
    table.attrs.update(
        duplicate_distance=float(duplicate_distance),
        novel_distance=float(novel_distance),
        bandwidth=model.bandwidth,
        bandwidth_source=model.bandwidth_source,
    )
    return table
