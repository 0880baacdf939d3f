"""Reference images from a user's folder tree (categories from the folders) and metadata CSV."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from marsdiff.data.crops import grey_if_colourless, image_statistics, resize_square
from marsdiff.data.images import is_image_name, load_image, save_png
from marsdiff.data.reference_config import ReferenceConfig
from marsdiff.errors import MarsdiffError

log = logging.getLogger(__name__)

UNSPECIFIED = "unspecified"
CATEGORY_AXES = {"size": "size_cat", "lighting": "lighting_cat", "contrast": "contrast_cat"}


def folder_categories(relative: Path) -> dict[str, str]:
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


def folder_root(cfg: ReferenceConfig) -> Path:
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


def join_metadata(table: pd.DataFrame, meta: pd.DataFrame | None) -> pd.DataFrame:
    """The metadata CSV's columns joined on ``source``; its columns win over the folder's."""
    if meta is None:
        return table
    keep = [c for c in table.columns if c not in meta.columns or c == "source"]
    return table[keep].merge(meta, on="source", how="left")


def folder_records(cfg: ReferenceConfig, images_dir: Path) -> pd.DataFrame:
    root = folder_root(cfg)
    relatives = scan_image_folder(root)
    ids = folder_ids(root, relatives)
    meta = read_metadata(Path(cfg.metadata_csv), relatives) if cfg.metadata_csv else None
    log.info("reading %d images from %s", len(relatives), root)
    records = []
    for relative, image_id in zip(relatives, ids):
        original = load_image(root / relative, mode="RGB")
        check_image_size(root / relative, original.shape[1], original.shape[0], cfg.min_image_px)
        image = grey_if_colourless(resize_square(original, cfg.image_size))
        save_png(images_dir / f"{image_id}.png", image)
        records.append({
            "id": image_id, "path": f"images/{image_id}.png", "source": str(relative),
            **folder_categories(relative), **image_statistics(image),
        })
    return join_metadata(pd.DataFrame.from_records(records), meta)


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
