"""Input checking for every reward: one place that decides what a valid feature matrix is.

Rewards accept numpy arrays, torch tensors (converted on the CPU, gradients detached) or nested
lists of shape (n, d). Everything is converted to float64 here, so the formulas downstream never
see float32 rounding, NaN or inf. Problems become a one-line :class:`MarsdiffError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from marsdiff.errors import MarsdiffError


def as_features(values: Any, name: str = "features", min_rows: int = 2) -> np.ndarray:
    """Return ``values`` as a finite float64 array of shape (n, d) with n >= ``min_rows``."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch.Tensor without importing torch
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MarsdiffError(f"{name} cannot be read as a numeric (n, d) array: {err}") from None
    if array.ndim != 2:
        raise MarsdiffError(f"{name} must be a 2-D array (n images, d features), got shape {array.shape}")
    if array.shape[1] == 0:
        raise MarsdiffError(f"{name} has 0 feature dimensions")
    bad_rows = ~np.isfinite(array).all(axis=1)
    if bad_rows.any():
        first = int(np.flatnonzero(bad_rows)[0])
        raise MarsdiffError(
            f"{name} contains NaN or inf in {int(bad_rows.sum())} of {len(array)} rows (first: row {first})"
        )
    if len(array) < min_rows:
        raise MarsdiffError(f"{name} has {len(array)} rows; this needs at least {min_rows} images")
    return array


def check_same_dim(generated: np.ndarray, reference: np.ndarray) -> None:
    """Generated and reference features must live in the same feature space."""
    if generated.shape[1] != reference.shape[1]:
        raise MarsdiffError(
            f"feature dimension mismatch: generated features have {generated.shape[1]} dimensions, "
            f"reference features {reference.shape[1]} (were they made by the same extractor?)"
        )


def unit_normalise(features: np.ndarray, name: str = "features") -> np.ndarray:
    """Rows scaled to unit Euclidean norm (the CMMD convention); a zero row is an error."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    if (norms == 0).any():
        row = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise MarsdiffError(f"cannot unit-normalise {name}: row {row} is the zero vector")
    return features / norms
