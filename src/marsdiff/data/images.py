"""Reading and writing images: one place that decides what a valid image is.

Every image that enters marsdiff passes :func:`load_image`, which converts 16-bit, RGBA,
palette, CMYK and grey images to 8-bit RGB or grey instead of rejecting them, and turns a
corrupt, empty or non-image file into a one-line :class:`MarsdiffError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm", ".ppm", ".webp")


def is_image_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map an integer or float array of any range to uint8 without clipping the useful range."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        hi = int(arr.max()) if arr.size else 0
        # 16-bit files often use only 10-12 bits: scale by the container unless values exceed 8 bits.
        top = 255 if hi <= 255 else (4095 if hi <= 4095 and info.max > 4095 else info.max)
        return np.clip(np.round(arr.astype(np.float64) * 255.0 / top), 0, 255).astype(np.uint8)
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("non-finite pixel values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.round(arr * 255.0).astype(np.uint8)
    span = hi - lo if hi > lo else 1.0
    return np.round((arr - lo) * 255.0 / span).astype(np.uint8)


def load_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Load ``path`` as uint8, ``mode`` "RGB" (H, W, 3) or "L" (H, W).

    Raises MarsdiffError naming the file for missing, empty, corrupt or non-image files.
    """
    path = Path(path)
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if not path.is_file():
        raise MarsdiffError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise MarsdiffError(f"{path}: image file is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()
            img = _normalise_mode(img)
    except UnidentifiedImageError:
        raise MarsdiffError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise MarsdiffError(f"{path}: corrupt image ({err})") from None
    return np.asarray(img.convert(mode), dtype=np.uint8)


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Bring any PIL mode to L or RGB (16-bit and float through numpy, alpha over black)."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img)), mode="L")
    if img.mode in ("LA", "RGBA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "1":
        return img.convert("L")
    return img.convert("RGB")


def resize_to(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 grey (H, W) or RGB (H, W, 3) -> (size, size) by PIL's BOX filter (area averaging).

    The one resampling path between image sizes: the pixel model's training set, the reference
    set brought to the generator's output size and generated images brought down to the matched
    scoring resolution all pass here, so both sides of a reward see the same pixels. BOX averages
    every source pixel once, so crater rims do not alias. An image already at ``size`` is
    returned unchanged (no re-encoding, bit-identical).
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"resize_to expects a uint8 (H, W) or (H, W, 3) array, got {arr.dtype} {arr.shape}")
    if size < 1:
        raise ValueError(f"resize_to: size must be >= 1, got {size}")
    if arr.shape[:2] == (size, size):
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 grey (H, W) or RGB (H, W, 3) array as PNG, atomically."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8, got {arr.dtype}")
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
