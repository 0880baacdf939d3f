"""Category assignment for reference images: equal-count size bins, lighting and contrast bins,
and the seeded held-out split stratified by size.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

LIGHTING_NAMES = {2: ["dark", "bright"], 3: ["dark", "medium", "bright"]}
CONTRAST_NAMES = {2: ["low", "high"], 3: ["low", "medium", "high"]}


def equal_count_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index per value such that bins hold equal counts (+-1), ordered by value.

    Rank-based rather than quantile edges so ties never leave a bin empty or oversized.
    """
    values = np.asarray(values, dtype=np.float64)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    order = np.argsort(values, kind="stable")
    bins = np.empty(len(values), dtype=np.int64)
    for index, members in enumerate(np.array_split(order, n_bins)):
        bins[members] = index
    return bins


def size_categories(diameters: np.ndarray, n_bins: int) -> np.ndarray:
    """Names like ``s1_4-10px`` (bin number, then the diameter range it covers, in pixels)."""
    diameters = np.asarray(diameters, dtype=np.float64)
    bins = equal_count_bins(diameters, n_bins)
    names = np.empty(len(diameters), dtype=object)
    for index in range(n_bins):
        members = bins == index
        if not members.any():
            continue
        lo, hi = diameters[members].min(), diameters[members].max()
        names[members] = f"s{index + 1}_{round(lo)}-{round(hi)}px"
    return names


def _named_bins(values: np.ndarray, n_bins: int, names: dict[int, list[str]], prefix: str) -> np.ndarray:
    bins = equal_count_bins(values, n_bins)
    labels = names.get(n_bins, [f"{prefix}{i + 1}" for i in range(n_bins)])
    return np.asarray([labels[b] for b in bins], dtype=object)


def lighting_categories(mean_brightness: np.ndarray, n_bins: int) -> np.ndarray:
    """Bins of mean brightness V: with one sun direction per tile, brightness tracks the local
    slope and albedo, the visible part of lighting variety."""
    return _named_bins(mean_brightness, n_bins, LIGHTING_NAMES, "l")


def contrast_categories(contrast: np.ndarray, n_bins: int) -> np.ndarray:
    return _named_bins(contrast, n_bins, CONTRAST_NAMES, "c")


def stratified_split(strata: pd.Series, heldout_fraction: float, seed: int) -> np.ndarray:
    """'heldout' for ceil(fraction * n) seeded-random members of every stratum, else 'train'."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError("heldout_fraction must be in (0, 1)")
    rng = np.random.default_rng(seed)
    split = np.full(len(strata), "train", dtype=object)
    positions = np.arange(len(strata))
    for name in sorted(strata.astype(str).unique()):
        members = positions[strata.astype(str).to_numpy() == name]
        n_heldout = min(len(members) - 1, math.ceil(heldout_fraction * len(members)))
        if n_heldout <= 0:
            continue
        split[rng.choice(members, size=n_heldout, replace=False)] = "heldout"
    return split
