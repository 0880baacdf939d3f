"""Per-image random streams: every image of a round has its own seed and CPU generator.

An image then depends only on (sampling seed, round, image index), never on the batch it was
drawn in or the device, and a re-run of a killed round reproduces it exactly. The policy's plan
draws from a second stream per image (:func:`plan_seeds`), so x_T and the step noise do not
depend on what the policy draws.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _derived_seeds(entropy: Sequence[Sequence[int]]) -> np.ndarray:
    """One int63 seed per entropy tuple (numpy's SeedSequence mixes the tuple's words)."""
    out = np.empty(len(entropy), dtype=np.int64)
    for j, words in enumerate(entropy):
        state = np.random.SeedSequence([int(w) for w in words]).generate_state(1, dtype=np.uint64)
        out[j] = int(state[0] >> np.uint64(1))
    return out


def image_seeds(seed: int, round_index: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-image seeds (int63) from (seed, round, image index): stable under any batching."""
    return _derived_seeds([(seed, round_index, index) for index in np.asarray(indices, dtype=np.int64)])


def plan_seeds(seeds: Sequence[int] | np.ndarray) -> np.ndarray:
    """The seeds of each image's plan stream (condition and knob draws), derived from its seed.

    A separate stream keeps x_T and every step's noise the same at a given seed whatever the
    policy draws first, so the base model, the knob settings and every policy are paired image
    by image (the evaluation's paired intervals rely on it).
    """
    return _derived_seeds([(seed, 1) for seed in np.asarray(seeds, dtype=np.int64)])


def image_generators(seeds: Sequence[int] | np.ndarray) -> list[torch.Generator]:
    """One CPU generator per image seed."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]
