"""Building the reference set: crater crops from a labelled tile, or a user's image folders.

Two workflow stages write it, so that a change to the appearance categories does not rebuild
what training reads (their file handling is :mod:`marsdiff.stages.prepare_reference` and
:mod:`marsdiff.stages.categorize_reference`):

- ``prepare_reference``: ``images/<id>.png`` and ``images.csv`` (:func:`build_images`: one row
  per image: id, path, source, position and diameter, image statistics, ``size_cat``, ``split``,
  and the ``sha256`` of the PNG), plus a contact sheet. Training reads only this.
- ``categorize_reference``: ``manifest.csv`` = images.csv plus ``lighting_cat`` and
  ``contrast_cat`` (:func:`assign_appearance`); columns in :data:`MANIFEST_COLUMNS` (then extra
  ones). ``split`` is 'train' or 'heldout' (the held-out split is read only by evaluation).

Both tables are written by :func:`write_reference_table` and read back by
:func:`read_image_index`. :func:`check_reference_inputs` validates the user's tile, labels,
folder and metadata CSV without writing anything and returns a digest of their content; the
workflow calls it when the Snakefile is parsed, so bad input stops the run before Snakemake
deletes any previous output.

The sources live apart: :mod:`marsdiff.data.tile` (crops from a labelled tile),
:mod:`marsdiff.data.folders` (a user's folder tree and metadata CSV), :mod:`marsdiff.data.crops`
(squaring, HSV statistics) and :mod:`marsdiff.data.reference_config` (the config section).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from marsdiff.data.categories import contrast_categories, lighting_categories, size_categories, stratified_split
from marsdiff.data.crops import image_dimensions
from marsdiff.data.folders import (
    UNSPECIFIED, check_image_size, folder_categories, folder_ids, folder_records, folder_root, join_metadata,
    read_metadata, scan_image_folder,
)
from marsdiff.data.images import load_image
from marsdiff.data.manifest import MANIFEST_COLUMNS, read_manifest
from marsdiff.data.reference_config import ReferenceConfig
from marsdiff.data.tile import check_window, load_crater_labels, selected_craters, tile_records, tile_source
from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import atomic_path
from marsdiff.io.digests import file_digest

#: Keys naming where the user's data lives; the data's content is tracked instead (a digest),
#: so moving the data and updating the path re-runs nothing.
LOCATION_KEYS = ("folder", "metadata_csv", "tile", "labels")
#: Keys only categorize_reference reads: training never sees lighting or contrast categories.
APPEARANCE_KEYS = ("lighting_bins", "contrast_bins")
#: Keys that only refuse bad data and change no output: left out of the stages' params, so
#: tightening or loosening a limit re-runs nothing that already passed it.
CHECK_KEYS = ("min_image_px", "min_images_per_class")


# ---------------------------------------------------------------------------- input check

def check_reference_inputs(cfg_dict: dict, digest_file=None) -> list[tuple[str, str]]:
    """Validate the data the ``reference`` section names, write nothing; ``(name, content digest)``
    of every file it names.

    Everything prepare_reference would refuse about its input (missing or unreadable files,
    labels outside the tile, images at the folder's top level, id collisions, metadata naming
    unknown files, undecodable images) is refused here with the same one-line error. Names are
    the files' names inside the folder (or the tile's file name), never where the data lives.
    ``digest_file(path, check=..., kind=...)`` runs ``check`` and returns the file's SHA-256; the
    workflow passes a cached one (marsdiff.provenance.ContentDigests.file) so unchanged images
    are not decoded again. (Passed in, not imported: editing the workflow's digest machinery
    must not change this stage's code version.)
    """
    cfg = ReferenceConfig.from_dict(cfg_dict)
    digest_file = digest_file or _checked_sha256
    named: list[tuple[str, str]] = []
    if cfg.source == "hrsc":
        tile_path, labels_path, source = tile_source(cfg)
        width, height = image_dimensions(tile_path)
        load_crater_labels(labels_path, width=width, height=height)
        check_window(cfg, tile_path, width, height)
        named.append((f"tile/{source}", digest_file(tile_path, check=_check_image, kind="image")))
        named.append(("labels", digest_file(labels_path, check=None, kind="file")))
    else:  # "folder" (the schema allows no other source)
        root = folder_root(cfg)
        relatives = scan_image_folder(root)
        folder_ids(root, relatives)
        for relative in relatives:
            named.append((f"folder/{relative.as_posix()}", digest_file(root / relative, check=_check_image, kind="image")))
            # the header only, every parse: the cached digest says "decodes", not "large enough"
            check_image_size(root / relative, *image_dimensions(root / relative), cfg.min_image_px)
        if cfg.metadata_csv:
            read_metadata(Path(cfg.metadata_csv), relatives)
            named.append(("metadata", digest_file(Path(cfg.metadata_csv), check=None, kind="file")))
    return named


def planned_split(cfg_dict: dict) -> pd.DataFrame:
    """The size category and split each reference image will get, from the labels, the folder
    tree and the metadata CSV alone (no image is decoded): one row per image, columns
    ``size_cat`` and ``split``. The same functions as prepare_reference assign them, so the
    workflow can check class sizes, the train split and class names when it parses the Snakefile.
    """
    cfg = ReferenceConfig.from_dict(cfg_dict)
    if cfg.source == "hrsc":
        tile_path, labels_path, _ = tile_source(cfg)
        width, height = image_dimensions(tile_path)
        table = selected_craters(cfg, load_crater_labels(labels_path, width=width, height=height))
    else:  # "folder" (the schema allows no other source)
        root = folder_root(cfg)
        relatives = scan_image_folder(root)
        table = pd.DataFrame.from_records([{"source": str(r), **folder_categories(r)} for r in relatives])
        meta = read_metadata(Path(cfg.metadata_csv), relatives) if cfg.metadata_csv else None
        table = join_metadata(table, meta)
    table = assign_size_and_split(table, cfg)
    check_class_sizes(table, cfg)
    return table[["size_cat", "split"]].assign(size_cat=table["size_cat"].astype(str))


def check_class_sizes(table: pd.DataFrame, cfg: ReferenceConfig) -> None:
    """Every size class needs ``reference.min_images_per_class`` images: a held-out image to
    evaluate it with and train images to learn it from (a 2-image folder would train a model,
    then fail much later on an unrelated error)."""
    counts = table["size_cat"].astype(str).value_counts()
    small = counts[counts < cfg.min_images_per_class].sort_index()
    if len(small):
        name, count = small.index[0], int(small.iloc[0])
        if cfg.source == "folder":
            where, fix = f"reference.folder {cfg.folder}", "add images, merge class folders or lower the limit"
        else:
            where, fix = "reference", "lower reference.size_bins, raise reference.max_craters or lower the limit"
        raise MarsdiffError(
            f"{where}: size class {name!r} has {count} image(s), fewer than reference.min_images_per_class = "
            f"{cfg.min_images_per_class} ({fix})"
        )


def _checked_sha256(path: Path, check=None, kind: str = "file") -> str:
    if check is not None:
        check(path)
    return file_digest(path)


def _check_image(path: Path) -> None:
    load_image(path)


# ---------------------------------------------------------------------------- manifest

def assign_size_and_split(table: pd.DataFrame, cfg: ReferenceConfig) -> pd.DataFrame:
    """Fill the size category (unless the source gave it) and the stratified split."""
    table = table.copy()
    if "diameter_px" not in table.columns:
        table["diameter_px"] = np.nan
    for column in ("x", "y"):
        if column not in table.columns:
            table[column] = np.nan
    if "size_cat" not in table.columns or table["size_cat"].isna().all():
        diameters = pd.to_numeric(table["diameter_px"], errors="coerce")
        if diameters.notna().all():
            table["size_cat"] = size_categories(diameters.to_numpy(), min(cfg.size_bins, len(table)))
        else:
            table["size_cat"] = table.get("category", pd.Series("all", index=table.index))
    # Images filed under another axis (by_lighting/...) carry no size.
    table["size_cat"] = table["size_cat"].fillna(UNSPECIFIED)
    table["split"] = stratified_split(table["size_cat"], cfg.heldout_fraction, cfg.seed)
    return table


def assign_appearance(table: pd.DataFrame, cfg: ReferenceConfig) -> pd.DataFrame:
    """Fill the lighting and contrast categories the source did not give; manifest column order."""
    table = table.copy()
    if "lighting_cat" not in table.columns or table["lighting_cat"].isna().all():
        table["lighting_cat"] = lighting_categories(table["v_mean"].to_numpy(), min(cfg.lighting_bins, len(table)))
    if "contrast_cat" not in table.columns or table["contrast_cat"].isna().all():
        table["contrast_cat"] = contrast_categories(table["contrast"].to_numpy(), min(cfg.contrast_bins, len(table)))
    for column in ("lighting_cat", "contrast_cat"):
        table[column] = table[column].fillna(UNSPECIFIED)
    extra = [c for c in table.columns if c not in MANIFEST_COLUMNS]
    return table[MANIFEST_COLUMNS + extra]


def _index_columns(table: pd.DataFrame) -> list[str]:
    first = [c for c in MANIFEST_COLUMNS if c in table.columns]
    return first + [c for c in table.columns if c not in first]


def build_images(cfg: ReferenceConfig, images_dir: Path) -> pd.DataFrame:
    """Write the images into ``images_dir``; the image index (sizes and split, no appearance)."""
    if cfg.source == "hrsc":
        table = tile_records(cfg, images_dir)
    else:  # "folder" (the schema allows no other source)
        table = folder_records(cfg, images_dir)
    table = assign_size_and_split(table, cfg)
    check_class_sizes(table, cfg)
    # The index changes whenever an image does: downstream stages that skip the image folder's
    # time stamp (a copied project) still see content changes through this small file.
    table["sha256"] = [file_digest(images_dir / Path(rel).name) for rel in table["path"]]
    return table[_index_columns(table)]


def write_reference_table(table: pd.DataFrame, path: Path) -> None:
    """images.csv or manifest.csv, atomically (six significant digits for the statistics)."""
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def read_image_index(path: str | os.PathLike) -> pd.DataFrame:
    """images.csv with category-like columns kept as text (folder names such as '1' stay '1')."""
    text = {c: str for c in ("id", "path", "source", "size_cat", "lighting_cat", "contrast_cat", "split", "category", "sha256")}
    read_manifest(path)  # the clear errors for a missing or malformed file
    return pd.read_csv(path, dtype=text)
