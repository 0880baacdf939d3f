"""Building the reference set: crater crops from a labelled tile, or a user's image folders.

Two workflow stages write it, so that a change to the appearance categories does not rebuild
what training reads:

- ``prepare_reference`` (:func:`build_reference_images`): ``images/<id>.png``, ``images.csv``
  (one row per image: id, path, source, position and diameter, image statistics, ``size_cat``,
  ``split``, and the ``sha256`` of the PNG) and ``contact_sheet.png``. Training reads only this.
- ``categorize_reference`` (:func:`write_manifest`): ``manifest.csv`` = images.csv plus
  ``lighting_cat`` and ``contrast_cat``; columns in :data:`MANIFEST_COLUMNS` (then extra ones).
  ``split`` is 'train' or 'heldout' (the held-out split is read only by evaluation).

:func:`check_reference_inputs` validates the user's tile, labels, folder and metadata CSV
without writing anything and returns a digest of their content; the workflow calls it when the
Snakefile is parsed, so bad input stops the run before Snakemake deletes any previous output.
:func:`prepare_reference` runs both stages into one directory (library use and tests).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from marsdiff.data import assets
from marsdiff.data.categories import (
    contrast_categories,
    equal_count_bins,
    lighting_categories,
    size_categories,
    stratified_split,
)
from marsdiff.data.images import is_image_name, load_image, save_png
from marsdiff.data.manifest import MANIFEST_COLUMNS, read_manifest
from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import atomic_dir, atomic_path
from marsdiff.io.digests import file_digest

log = logging.getLogger(__name__)

IMAGE_INDEX_NAME = "images.csv"
MANIFEST_NAME = "manifest.csv"
CONTACT_SHEET_NAME = "contact_sheet.png"
#: Keys naming where the user's data lives; the data's content is tracked instead (a digest),
#: so moving the data and updating the path re-runs nothing.
LOCATION_KEYS = ("folder", "metadata_csv", "tile", "labels")
#: Keys only categorize_reference reads: training never sees lighting or contrast categories.
APPEARANCE_KEYS = ("lighting_bins", "contrast_bins")
#: Keys that only refuse bad data and change no output: left out of the stages' params, so
#: tightening or loosening a limit re-runs nothing that already passed it.
CHECK_KEYS = ("min_image_px", "min_images_per_class")


@dataclass(frozen=True)
class ReferenceConfig:
    """The ``reference`` config section (defaults mirror the schema)."""

    source: str = "hrsc"
    folder: str | None = None
    metadata_csv: str | None = None
    tile: str | None = None
    labels: str | None = None
    window_px: int = 64
    image_size: int = 64
    size_bins: int = 6
    lighting_bins: int = 3
    contrast_bins: int = 3
    heldout_fraction: float = 0.25
    max_craters: int | None = None
    seed: int = 0
    min_image_px: int = 16
    min_images_per_class: int = 4

    @classmethod
    def from_dict(cls, cfg: dict) -> "ReferenceConfig":
        return cls(**{k: v for k, v in (cfg or {}).items()})


# ---------------------------------------------------------------------------- image statistics

def image_statistics(image: np.ndarray) -> dict[str, float]:
    """Mean/std of H, S, V (0-1 scale) and RMS contrast (std of V over its mean)."""
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    hsv = np.asarray(Image.fromarray(rgb, mode="RGB").convert("HSV"), dtype=np.float64) / 255.0
    stats = {}
    for channel, name in enumerate("hsv"):
        stats[f"{name}_mean"] = float(hsv[..., channel].mean())
        stats[f"{name}_std"] = float(hsv[..., channel].std())
    stats["contrast"] = stats["v_std"] / max(stats["v_mean"], 1e-6)
    return stats


def _resize_square(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    pil = Image.fromarray(image)
    side = min(pil.size)
    left, top = (pil.size[0] - side) // 2, (pil.size[1] - side) // 2
    pil = pil.crop((left, top, left + side, top + side))
    return np.asarray(pil.resize((size, size), Image.Resampling.LANCZOS))


def _grey_if_colourless(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]):
        return image[..., 0]
    return image


# ---------------------------------------------------------------------------- labelled tile

def load_crater_labels(path: str | os.PathLike, width: int, height: int) -> pd.DataFrame:
    """Crater labels as columns x (pixel column), y (pixel row), diameter_px.

    Accepts pycda's columns (``long`` = x, ``lat`` = y, ``diameter``) or ``x, y, diameter_px``.
    A label whose centre is outside the image or whose diameter is not a positive finite number
    is an error naming the file and the row.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise MarsdiffError(f"{path}: cannot read crater labels ({err})") from None
    renames = {"long": "x", "lat": "y", "diameter": "diameter_px"}
    table = table.rename(columns={k: v for k, v in renames.items() if k in table.columns})
    missing = [c for c in ("x", "y", "diameter_px") if c not in table.columns]
    if missing:
        raise MarsdiffError(f"{path}: crater labels lack column(s) {', '.join(missing)} (need long/lat/diameter or x/y/diameter_px)")
    if table.empty:
        raise MarsdiffError(f"{path}: crater labels file has no rows")
    values = table[["x", "y", "diameter_px"]].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().any(axis=1) | ~np.isfinite(values.to_numpy()).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise MarsdiffError(f"{path}: row {row + 2} has a non-numeric or missing x/y/diameter")
    outside = (values.x < 0) | (values.x >= width) | (values.y < 0) | (values.y >= height)
    if outside.any():
        row = int(np.flatnonzero(outside.to_numpy())[0])
        r = values.iloc[row]
        raise MarsdiffError(
            f"{path}: row {row + 2} label at x={r.x:g}, y={r.y:g} lies outside the {width}x{height} image"
        )
    if (values.diameter_px <= 0).any():
        row = int(np.flatnonzero((values.diameter_px <= 0).to_numpy())[0])
        raise MarsdiffError(f"{path}: row {row + 2} has a non-positive diameter")
    return values.reset_index(drop=True)


def crop_window(image: np.ndarray, x: float, y: float, window: int) -> np.ndarray:
    """A ``window`` x ``window`` crop centred on (x, y), reflect-padded where it leaves the image."""
    half = window // 2
    cx, cy = int(round(x)), int(round(y))
    pad = window
    padded = np.pad(image, ((pad, pad), (pad, pad)) + ((0, 0),) * (image.ndim - 2), mode="reflect")
    top, left = cy - half + pad, cx - half + pad
    return padded[top: top + window, left: left + window].copy()


def spread_subset(diameters: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` craters spread evenly over the size ranking (for tiny test runs)."""
    order = np.argsort(diameters, kind="stable")
    picks = np.linspace(0, len(order) - 1, count).round().astype(int)
    return np.sort(order[np.unique(picks)])


def _tile_source(cfg: ReferenceConfig) -> tuple[Path, Path, str]:
    """``(tile, labels, source name)``: the user's tile or the HRSC tile shipped by pycda."""
    if cfg.tile or cfg.labels:
        if not (cfg.tile and cfg.labels):
            raise MarsdiffError("reference.tile and reference.labels must be given together")
        tile_path, labels_path = Path(cfg.tile), Path(cfg.labels)
        for key, path in (("reference.tile", tile_path), ("reference.labels", labels_path)):
            if not path.is_file():
                raise MarsdiffError(f"{key}: {path} is not a file")
        return tile_path, labels_path, tile_path.name
    tile_path, labels_path = assets.hrsc_tile_and_labels()
    return tile_path, labels_path, "hrsc_nanedi_vallis"


def _image_dimensions(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; a file PIL cannot open gets load_image's error."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError):
        load_image(path)  # raises the one-line error naming the file
        raise


def _check_window(cfg: ReferenceConfig, tile_path: Path, width: int, height: int) -> None:
    if cfg.window_px > min(width, height):
        raise MarsdiffError(f"reference.window_px={cfg.window_px} is larger than the tile {tile_path} ({width}x{height})")


def _selected_craters(cfg: ReferenceConfig, labels: pd.DataFrame) -> pd.DataFrame:
    """The labels that become crops: all, or ``max_craters`` spread over the sizes."""
    if cfg.max_craters is not None and cfg.max_craters < len(labels):
        return labels.iloc[spread_subset(labels.diameter_px.to_numpy(), cfg.max_craters)].reset_index(drop=True)
    return labels


def tile_records(cfg: ReferenceConfig, images_dir: Path) -> pd.DataFrame:
    """Crop every labelled crater of the tile into ``images_dir``; one record per crop."""
    tile_path, labels_path, source = _tile_source(cfg)
    tile = load_image(tile_path, mode="L")
    labels = load_crater_labels(labels_path, width=tile.shape[1], height=tile.shape[0])
    _check_window(cfg, tile_path, tile.shape[1], tile.shape[0])
    labels = _selected_craters(cfg, labels)
    log.info("cropping %d craters from %s (window %d px -> %d px)", len(labels), tile_path, cfg.window_px, cfg.image_size)
    records = []
    for index, crater in enumerate(labels.itertuples(index=False)):
        crop = _resize_square(crop_window(tile, crater.x, crater.y, cfg.window_px), cfg.image_size)
        crater_id = f"crater_{index:04d}"
        save_png(images_dir / f"{crater_id}.png", crop)
        records.append({
            "id": crater_id, "path": f"images/{crater_id}.png", "source": source,
            "x": float(crater.x), "y": float(crater.y), "diameter_px": float(crater.diameter_px),
            **image_statistics(crop),
        })
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------------------- image folders

UNSPECIFIED = "unspecified"
CATEGORY_AXES = {"size": "size_cat", "lighting": "lighting_cat", "contrast": "contrast_cat"}


def _folder_categories(relative: Path) -> dict[str, str]:
    """Categories from an image's folders: ``by_<axis>/<value>/...`` or ``<value>/...``."""
    parts = relative.parts[:-1]
    if parts and parts[0].startswith("by_") and len(parts) >= 2:
        axis = parts[0][3:]
        return {CATEGORY_AXES.get(axis, f"{axis}_cat"): parts[1]}
    return {"category": parts[0]}


def _safe_id(relative: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "__".join(relative.with_suffix("").parts))


def scan_image_folder(root: Path) -> list[Path]:
    """Image files below ``root`` (relative paths), checking the tree is a category tree."""
    if not root.is_dir():
        raise MarsdiffError(f"reference.folder {root} is not a directory")
    images: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        here = Path(directory)
        visible = sorted(f for f in files if not f.startswith("."))
        if here != root and not visible and not subdirs:
            raise MarsdiffError(f"{here}: empty category folder (no images)")
        for name in visible:
            path = here / name
            if here == root:
                if name.lower().endswith(".csv"):
                    continue
                raise MarsdiffError(f"{path}: images must sit in category sub-folders of {root}, not at its top level")
            if not is_image_name(name):
                raise MarsdiffError(f"{path}: not an image file (expected one of png, jpg, tif, bmp, pgm, webp)")
            images.append(path.relative_to(root))
    if not images:
        raise MarsdiffError(f"reference.folder {root} contains no images")
    return images


def folder_ids(root: Path, relatives: list[Path]) -> list[str]:
    """The image ids (file paths made safe), refusing two files that map to one id."""
    ids, seen = [], set()
    for relative in relatives:
        image_id = _safe_id(relative)
        if image_id in seen:
            raise MarsdiffError(f"{root / relative}: id {image_id} collides with another image; rename one")
        seen.add(image_id)
        ids.append(image_id)
    return ids


def _folder_root(cfg: ReferenceConfig) -> Path:
    if not cfg.folder:
        raise MarsdiffError("reference.source is 'folder' but reference.folder is not set")
    return Path(cfg.folder)


def check_image_size(path: Path, width: int, height: int, min_px: int) -> None:
    """Refuse an image whose shorter side is below ``reference.min_image_px``: resizing it to
    ``image_size`` would invent every pixel (a 1x1 image becomes a flat square)."""
    if min(width, height) < min_px:
        raise MarsdiffError(
            f"{path}: image is {width}x{height} px, below reference.min_image_px = {min_px} "
            "(small images are refused, not upscaled)"
        )


def _join_metadata(table: pd.DataFrame, meta: pd.DataFrame | None) -> pd.DataFrame:
    """The metadata CSV's columns joined on ``source``; its columns win over the folder's."""
    if meta is None:
        return table
    keep = [c for c in table.columns if c not in meta.columns or c == "source"]
    return table[keep].merge(meta, on="source", how="left")


def folder_records(cfg: ReferenceConfig, images_dir: Path) -> pd.DataFrame:
    root = _folder_root(cfg)
    relatives = scan_image_folder(root)
    ids = folder_ids(root, relatives)
    meta = read_metadata(Path(cfg.metadata_csv), relatives) if cfg.metadata_csv else None
    log.info("reading %d images from %s", len(relatives), root)
    records = []
    for relative, image_id in zip(relatives, ids):
        original = load_image(root / relative, mode="RGB")
        check_image_size(root / relative, original.shape[1], original.shape[0], cfg.min_image_px)
        image = _grey_if_colourless(_resize_square(original, cfg.image_size))
        save_png(images_dir / f"{image_id}.png", image)
        records.append({
            "id": image_id, "path": f"images/{image_id}.png", "source": str(relative),
            **_folder_categories(relative), **image_statistics(image),
        })
    return _join_metadata(pd.DataFrame.from_records(records), meta)


def read_metadata(csv_path: Path, relatives: list[Path]) -> pd.DataFrame:
    """The metadata CSV keyed by ``source`` (image path relative to the folder), checked."""
    if not csv_path.is_file():
        raise MarsdiffError(f"reference.metadata_csv: {csv_path} is not a file")
    try:
        meta = pd.read_csv(csv_path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise MarsdiffError(f"{csv_path}: cannot read metadata CSV ({err})") from None
    if "file" not in meta.columns:
        raise MarsdiffError(f"{csv_path}: metadata CSV needs a 'file' column (image path relative to reference.folder)")
    meta = meta.assign(source=meta["file"].astype(str).map(lambda p: str(Path(p)))).drop(columns="file")
    unknown = sorted(set(meta["source"]) - {str(r) for r in relatives})
    if unknown:
        raise MarsdiffError(f"{csv_path}: metadata names {len(unknown)} file(s) not in the folder, e.g. {unknown[0]}")
    clash = [c for c in meta.columns if c in ("id", "path", "split", "sha256")]
    if clash:
        raise MarsdiffError(f"{csv_path}: metadata column(s) {', '.join(clash)} are reserved")
    if "diameter_px" in meta.columns:
        # A bad diameter must stop the run: assign_size_and_split would otherwise quietly fall
        # back to folder categories (NaN, text) or name a class after it (s1_-68-10px).
        values = pd.to_numeric(meta["diameter_px"], errors="coerce").astype(np.float64)
        bad = ~(np.isfinite(values.to_numpy()) & (values.to_numpy() > 0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise MarsdiffError(
                f"{csv_path}: row {row + 2} ({meta['source'].iloc[row]}) has diameter_px "
                f"{_cell_text(meta['diameter_px'].iloc[row])}; diameters must be positive finite numbers (pixels)"
            )
        meta = meta.assign(diameter_px=values)
    return meta


def _cell_text(value) -> str:
    """A CSV cell as the user typed it (an empty cell reads as NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "(empty)"
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, (int, float)) else str(value)


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
        tile_path, labels_path, source = _tile_source(cfg)
        width, height = _image_dimensions(tile_path)
        load_crater_labels(labels_path, width=width, height=height)
        _check_window(cfg, tile_path, width, height)
        named.append((f"tile/{source}", digest_file(tile_path, check=_check_image, kind="image")))
        named.append(("labels", digest_file(labels_path, check=None, kind="file")))
    elif cfg.source == "folder":
        root = _folder_root(cfg)
        relatives = scan_image_folder(root)
        folder_ids(root, relatives)
        for relative in relatives:
            named.append((f"folder/{relative.as_posix()}", digest_file(root / relative, check=_check_image, kind="image")))
            # the header only, every parse: the cached digest says "decodes", not "large enough"
            check_image_size(root / relative, *_image_dimensions(root / relative), cfg.min_image_px)
        if cfg.metadata_csv:
            read_metadata(Path(cfg.metadata_csv), relatives)
            named.append(("metadata", digest_file(Path(cfg.metadata_csv), check=None, kind="file")))
    else:
        raise MarsdiffError(f"reference.source must be 'hrsc' or 'folder', got {cfg.source!r}")
    return named


def planned_split(cfg_dict: dict) -> pd.DataFrame:
    """The size category and split each reference image will get, from the labels, the folder
    tree and the metadata CSV alone (no image is decoded): one row per image, columns
    ``size_cat`` and ``split``. The same functions as prepare_reference assign them, so the
    workflow can check class sizes, the train split and class names when it parses the Snakefile.
    """
    cfg = ReferenceConfig.from_dict(cfg_dict)
    if cfg.source == "hrsc":
        tile_path, labels_path, _ = _tile_source(cfg)
        width, height = _image_dimensions(tile_path)
        table = _selected_craters(cfg, load_crater_labels(labels_path, width=width, height=height))
    elif cfg.source == "folder":
        root = _folder_root(cfg)
        relatives = scan_image_folder(root)
        table = pd.DataFrame.from_records([{"source": str(r), **_folder_categories(r)} for r in relatives])
        meta = read_metadata(Path(cfg.metadata_csv), relatives) if cfg.metadata_csv else None
        table = _join_metadata(table, meta)
    else:
        raise MarsdiffError(f"reference.source must be 'hrsc' or 'folder', got {cfg.source!r}")
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


def _build_images(cfg: ReferenceConfig, images_dir: Path) -> pd.DataFrame:
    """Write the images into ``images_dir``; the image index (sizes and split, no appearance)."""
    if cfg.source == "hrsc":
        table = tile_records(cfg, images_dir)
    elif cfg.source == "folder":
        table = folder_records(cfg, images_dir)
    else:
        raise MarsdiffError(f"reference.source must be 'hrsc' or 'folder', got {cfg.source!r}")
    table = assign_size_and_split(table, cfg)
    check_class_sizes(table, cfg)
    # The index changes whenever an image does: downstream stages that skip the image folder's
    # time stamp (a copied project) still see content changes through this small file.
    table["sha256"] = [file_digest(images_dir / Path(rel).name) for rel in table["path"]]
    return table[_index_columns(table)]


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def build_reference_images(cfg_dict: dict, images_dir: str | os.PathLike, index_csv: str | os.PathLike,
                           contact_sheet: str | os.PathLike) -> pd.DataFrame:
    """Stage prepare_reference: ``images/``, ``images.csv`` and the contact sheet, each atomic."""
    cfg = ReferenceConfig.from_dict(cfg_dict)
    index_csv = Path(index_csv)
    with atomic_dir(images_dir) as staging:
        table = _build_images(cfg, staging)
    _write_csv(table, index_csv)
    write_contact_sheet(Path(contact_sheet), table, index_csv.parent)
    counts = table.groupby(["size_cat", "split"]).size().unstack(fill_value=0)
    log.info("reference set: %d images\n%s", len(table), counts.to_string())
    return table


def read_image_index(path: str | os.PathLike) -> pd.DataFrame:
    """images.csv with category-like columns kept as text (folder names such as '1' stay '1')."""
    text = {c: str for c in ("id", "path", "source", "size_cat", "lighting_cat", "contrast_cat", "split", "category", "sha256")}
    read_manifest(path)  # the clear errors for a missing or malformed file
    return pd.read_csv(path, dtype=text)


def write_manifest(index_csv: str | os.PathLike, cfg_dict: dict, manifest_csv: str | os.PathLike) -> pd.DataFrame:
    """Stage categorize_reference: ``manifest.csv`` = images.csv + lighting and contrast categories."""
    manifest = assign_appearance(read_image_index(index_csv), ReferenceConfig.from_dict(cfg_dict))
    _write_csv(manifest, Path(manifest_csv))
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
        table = _build_images(cfg, images_dir)
        _write_csv(table, staging / IMAGE_INDEX_NAME)
        manifest = write_manifest(staging / IMAGE_INDEX_NAME, cfg_dict, staging / MANIFEST_NAME)
        write_contact_sheet(staging / CONTACT_SHEET_NAME, manifest, staging)
    counts = manifest.groupby(["size_cat", "split"]).size().unstack(fill_value=0)
    log.info("reference set: %d images\n%s", len(manifest), counts.to_string())
    return manifest


def write_contact_sheet(path: Path, manifest: pd.DataFrame, root: Path, per_row: int = 8) -> None:
    """One row of example crops per size category, smallest craters on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = sorted(manifest["size_cat"].unique(), key=_category_sort_key)
    fig, axes = plt.subplots(len(categories), per_row, figsize=(per_row * 1.1, len(categories) * 1.2), squeeze=False)
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
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _category_sort_key(name: str):
    match = re.match(r"s(\d+)_", str(name))
    return (0, int(match.group(1)), "") if match else (1, 0, str(name))


__all__ = [
    "MANIFEST_COLUMNS", "ReferenceConfig", "prepare_reference", "build_reference_images", "write_manifest",
    "check_reference_inputs", "planned_split", "check_class_sizes", "check_image_size", "crop_window",
    "load_crater_labels", "image_statistics", "scan_image_folder", "equal_count_bins",
]
