"""Stage ``prepare_reference``: the reference images, ``images.csv`` and the contact sheet, on files.

What the set holds (crops from a labelled tile or a folder tree, sizes, the stratified split, each
image's SHA-256) is :mod:`marsdiff.data.reference`'s; this module stages the folder atomically,
writes the index and draws the contact sheet (one row of example crops per size category).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from marsdiff.data.category_order import category_sort_key
from marsdiff.data.reference import build_images, write_reference_table
from marsdiff.data.reference_config import ReferenceConfig
from marsdiff.io.atomic import atomic_dir

log = logging.getLogger(__name__)


def build_reference_images(cfg_dict: dict, images_dir: str | os.PathLike, index_csv: str | os.PathLike,
                           contact_sheet: str | os.PathLike) -> pd.DataFrame:
    """Stage prepare_reference: ``images/``, ``images.csv`` and the contact sheet, each atomic."""
    cfg = ReferenceConfig.from_dict(cfg_dict)
    index_csv = Path(index_csv)
    with atomic_dir(images_dir) as staging:
        table = build_images(cfg, staging)
    write_reference_table(table, index_csv)
    write_contact_sheet(Path(contact_sheet), table, index_csv.parent)
    counts = table.groupby(["size_cat", "split"]).size().unstack(fill_value=0)
    log.info("reference set: %d images\n%s", len(table), counts.to_string())
    return table


def write_contact_sheet(path: Path, manifest: pd.DataFrame, root: Path, per_row: int = 8) -> None:
    """One row of example crops per size category, smallest craters on top."""
    from marsdiff.io.figures import save_png, subplots

    categories = sorted(manifest["size_cat"].unique(), key=category_sort_key)
    fig, axes = subplots(len(categories), per_row, figsize=(per_row * 1.1, len(categories) * 1.2), squeeze=False)
    rng = np.random.default_rng(0)
    for row, category in enumerate(categories):
        members = manifest[manifest["size_cat"] == category]
        picks = members.iloc[rng.permutation(len(members))[:per_row]]
        for col in range(per_row):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(picks):
                image = np.asarray(Image.open(root / picks.iloc[col]["path"]))
                ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            if col == 0:
                ax.set_ylabel(category, fontsize=7)
    fig.suptitle("Reference craters by size category", fontsize=9)
    fig.tight_layout()
    save_png(fig, path, dpi=100)
