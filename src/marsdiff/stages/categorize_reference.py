"""Stage ``categorize_reference``: ``manifest.csv`` = images.csv + lighting and contrast categories.

The categories themselves are :func:`marsdiff.data.reference.assign_appearance`'s. Also here,
:func:`prepare_reference` runs both reference stages into one directory (library use and tests):
it sits with the downstream stage so that prepare_reference's code digest, which follows that
stage's imports, does not cover the appearance categories (changing them retrains nothing).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from marsdiff.data.reference import assign_appearance, build_images, read_image_index, write_reference_table
from marsdiff.data.reference_config import ReferenceConfig
from marsdiff.io.atomic import atomic_dir
from marsdiff.stages.prepare_reference import write_contact_sheet

log = logging.getLogger(__name__)

IMAGE_INDEX_NAME = "images.csv"
MANIFEST_NAME = "manifest.csv"
CONTACT_SHEET_NAME = "contact_sheet.png"


def write_manifest(index_csv: str | os.PathLike, cfg_dict: dict, manifest_csv: str | os.PathLike) -> pd.DataFrame:
    """Stage categorize_reference: ``manifest.csv`` = images.csv + lighting and contrast categories."""
    manifest = assign_appearance(read_image_index(index_csv), ReferenceConfig.from_dict(cfg_dict))
    write_reference_table(manifest, Path(manifest_csv))
    for column in ("lighting_cat", "contrast_cat"):
        log.info("%s: %s", column, manifest[column].value_counts().sort_index().to_dict())
    return manifest


def prepare_reference(cfg_dict: dict, out_dir: str | os.PathLike) -> pd.DataFrame:
    """Build the whole reference set into ``out_dir`` (both stages) and return the manifest.

    The directory appears only when complete; a failure leaves a previous one untouched.
    (In the workflow the two stages write their declared outputs; Snakemake removes a job's old
    outputs before it starts, which is why the Snakefile checks the input at parse time.)
    """
    cfg = ReferenceConfig.from_dict(cfg_dict)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        images_dir = staging / "images"
        images_dir.mkdir()
        table = build_images(cfg, images_dir)
        write_reference_table(table, staging / IMAGE_INDEX_NAME)
        manifest = write_manifest(staging / IMAGE_INDEX_NAME, cfg_dict, staging / MANIFEST_NAME)
        write_contact_sheet(staging / CONTACT_SHEET_NAME, manifest, staging)
    counts = manifest.groupby(["size_cat", "split"]).size().unstack(fill_value=0)
    log.info("reference set: %d images\n%s", len(manifest), counts.to_string())
    return manifest
