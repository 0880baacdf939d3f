"""Crater crops from a labelled tile: the HRSC tile pycda ships, or the user's tile and labels."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from marsdiff.data import assets
from marsdiff.data.crops import image_statistics, resize_square
from marsdiff.data.images import load_image, save_png
from marsdiff.data.reference_config import ReferenceConfig
from marsdiff.errors import MarsdiffError

log = logging.getLogger(__name__)


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


def tile_source(cfg: ReferenceConfig) -> tuple[Path, Path, str]:
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


def check_window(cfg: ReferenceConfig, tile_path: Path, width: int, height: int) -> None:
    if cfg.window_px > min(width, height):
        raise MarsdiffError(f"reference.window_px={cfg.window_px} is larger than the tile {tile_path} ({width}x{height})")


def selected_craters(cfg: ReferenceConfig, labels: pd.DataFrame) -> pd.DataFrame:
    """The labels that become crops: all, or ``max_craters`` spread over the sizes."""
    if cfg.max_craters is not None and cfg.max_craters < len(labels):
        return labels.iloc[spread_subset(labels.diameter_px.to_numpy(), cfg.max_craters)].reset_index(drop=True)
    return labels


def tile_records(cfg: ReferenceConfig, images_dir: Path) -> pd.DataFrame:
    """Crop every labelled crater of the tile into ``images_dir``; one record per crop."""
    tile_path, labels_path, source = tile_source(cfg)
    tile = load_image(tile_path, mode="L")
    labels = load_crater_labels(labels_path, width=tile.shape[1], height=tile.shape[0])
    check_window(cfg, tile_path, tile.shape[1], tile.shape[0])
    labels = selected_craters(cfg, labels)
    log.info("cropping %d craters from %s (window %d px -> %d px)", len(labels), tile_path, cfg.window_px, cfg.image_size)
    records = []
    for index, crater in enumerate(labels.itertuples(index=False)):
        crop = resize_square(crop_window(tile, crater.x, crater.y, cfg.window_px), cfg.image_size)
        crater_id = f"crater_{index:04d}"
        save_png(images_dir / f"{crater_id}.png", crop)
        records.append({
            "id": crater_id, "path": f"images/{crater_id}.png", "source": source,
            "x": float(crater.x), "y": float(crater.y), "diameter_px": float(crater.diameter_px),
            **image_statistics(crop),
        })
    return pd.DataFrame.from_records(records)
