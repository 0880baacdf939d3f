"""The reference manifest: its columns and the one reader every stage uses.

Light on imports (pandas only) so stages that only read the manifest do not pull in the
cropping code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from marsdiff.errors import MarsdiffError

MANIFEST_COLUMNS = [
    "id", "path", "source", "x", "y", "diameter_px", "size_cat", "lighting_cat", "contrast_cat",
    "h_mean", "h_std", "s_mean", "s_std", "v_mean", "v_std", "contrast", "split",
]

REQUIRED_COLUMNS = ("id", "path", "size_cat", "split")


def read_manifest(path: str | os.PathLike, split: str | None = None) -> pd.DataFrame:
    """The manifest as a DataFrame, optionally one split; clear error when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise MarsdiffError(f"{path}: reference manifest not found (run the prepare_reference stage)")
    try:
        table = pd.read_csv(path, dtype={"id": str, "path": str, "size_cat": str, "split": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise MarsdiffError(f"{path}: unreadable reference manifest ({' '.join(str(err).split())})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise MarsdiffError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    if split is not None:
        table = table[table["split"] == split].reset_index(drop=True)
    return table
