"""Reference crops as images: squared to the configured size, their HSV statistics, header sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from marsdiff.data.images import load_image


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


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    pil = Image.fromarray(image)
    side = min(pil.size)
    left, top = (pil.size[0] - side) // 2, (pil.size[1] - side) // 2
    pil = pil.crop((left, top, left + side, top + side))
    return np.asarray(pil.resize((size, size), Image.Resampling.LANCZOS))


def grey_if_colourless(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]):
        return image[..., 0]
    return image


def image_dimensions(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; a file PIL cannot open gets load_image's error."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError):
        load_image(path)  # raises the one-line error naming the file
        raise
