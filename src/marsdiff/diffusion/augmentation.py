"""Augmentation of the base model's training batches: the sun-preserving mirror, the crater-centre
shift and the photometric jitter.

All reference craters come from one HRSC image, so they share one sun azimuth: the bright and
shadowed crater walls lie along it. A mirror changes that azimuth unless the mirror line is
parallel to the sun direction, so a left-right or top-bottom flip (or a 90 degree rotation) would
teach the model lighting that never occurs. ``flip: auto`` measures the sun axis from the train
images (:func:`sun_axis`) and uses the one pixel-grid mirror whose line lies within
:data:`SUN_AXIS_TOLERANCE_DEG` of it; if none does, or the dipole is too weak to trust, no mirror
is used. Translation keeps the azimuth: ``shift_px`` moves each training image by up to that many
whole pixels (a crater centre is only known to about a pixel), so the model sees more than one
window per crater and copies its 306 crops less. The photometric jitter (``brightness_jitter``,
``contrast_jitter``) gives each image its own brightness offset and contrast gain: neither moves a
shadow, so it keeps the sun direction too, and it widens the brightness and contrast the model
draws, which the reference crops vary in more than a model trained without it reproduces
(docs/base_model.md).

Every random draw comes from the generator the caller passes, in a fixed order (mirror, shift,
jitter): the training loop's batch-order generator, so a run is reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from marsdiff.diffusion.pixel import VALUE_BOUNDS

SUN_AXIS_TOLERANCE_DEG = 15.0
# Per-class sun axes agreeing less than this (mean resultant length): no trusted sun direction.
MIN_AXIS_CONSISTENCY = 0.8
# Direction (degrees, image coordinates: x = column to the right, y = row downwards) of the
# line each pixel-grid mirror leaves fixed.
MIRROR_LINES_DEG = {"top_bottom": 0.0, "transpose": 45.0, "left_right": 90.0, "antitranspose": 135.0}


def sun_axis(images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[float, float]:
    """(axis in degrees [0, 180), consistency in [0, 1]) of the illumination in crater crops.

    The crops are centred on their craters, so the mean image of a size class is an average
    crater: a dark lobe (the wall in shadow) and a bright lobe (the wall facing the sun) along
    the sun direction, over terrain that averages to grey. Per class, the vector from the dark
    to the bright lobe centroid (lobes weighted by the 4th power of their contrast, within the
    central disc, so the strongest shading dominates over leftover terrain) gives the axis.
    Classes are combined as axes (doubled angles); consistency is the mean resultant length of
    the per-class axes, 1 when every class agrees.
    """
    x = images[:, 0].double()
    size = x.shape[-1]
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    col, row = coords[None, :], coords[:, None]
    central = torch.hypot(col, row) <= size / 4.0
    if labels is None:
        labels = torch.zeros(x.shape[0], dtype=torch.int64)
    doubled = []
    for cls in torch.unique(labels):
        mean = x[labels == cls].mean(dim=0)
        mean = mean - mean.median()
        bright = mean.clamp(min=0).pow(4) * central
        dark = (-mean).clamp(min=0).pow(4) * central
        if bright.sum() <= 0 or dark.sum() <= 0:
            continue
        dx = float((bright * col).sum() / bright.sum() - (dark * col).sum() / dark.sum())
        dy = float((bright * row).sum() / bright.sum() - (dark * row).sum() / dark.sum())
        if dx == 0 and dy == 0:
            continue
        doubled.append(2.0 * math.atan2(dy, dx))
    if not doubled:
        return 0.0, 0.0
    cx = float(np.mean(np.cos(doubled)))
    cy = float(np.mean(np.sin(doubled)))
    angle = math.degrees(math.atan2(cy, cx) / 2.0) % 180.0
    return angle, math.hypot(cx, cy)


def choose_flip(images: torch.Tensor, setting: str, labels: torch.Tensor | None = None) -> dict[str, Any]:
    """The mirror to use (``setting`` unless 'auto') and the measured sun axis, for the metadata."""
    angle, consistency = sun_axis(images, labels)
    info = {"setting": setting, "sun_axis_deg": round(angle, 1), "axis_consistency": round(consistency, 3),
            "tolerance_deg": SUN_AXIS_TOLERANCE_DEG}
    if setting != "auto":
        return {**info, "flip": setting}
    chosen = "none"
    if consistency >= MIN_AXIS_CONSISTENCY:
        for name, line in MIRROR_LINES_DEG.items():
            gap = abs((angle - line + 90.0) % 180.0 - 90.0)
            if gap <= SUN_AXIS_TOLERANCE_DEG:
                chosen = name
    return {**info, "flip": chosen}


def apply_mirror(images: torch.Tensor, name: str) -> torch.Tensor:
    if name == "left_right":
        return images.flip(-1)
    if name == "top_bottom":
        return images.flip(-2)
    if name == "transpose":
        return images.transpose(-1, -2)
    if name == "antitranspose":
        return images.flip(-1, -2).transpose(-1, -2)
    return images


def mirror_half(batch: torch.Tensor, flip: str, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch with the sun-preserving mirror (or nothing)."""
    if flip == "none":
        return batch
    chosen = torch.rand(batch.shape[0], generator=generator) < 0.5
    return torch.where(chosen[:, None, None, None], apply_mirror(batch, flip), batch)


def shift_each(batch: torch.Tensor, max_px: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own whole-pixel offset in [-max_px, max_px] on both axes.

    The uncovered border repeats the edge pixels: a reflection would mirror the shading there,
    and a wrap-around would put the opposite edge's terrain beside it.
    """
    if max_px == 0:
        return batch
    count, _, height, width = batch.shape
    padded = torch.nn.functional.pad(batch, (max_px,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_px + 1, (count, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, top:top + height, left:left + width] for i, (top, left) in enumerate(offsets)])


def jitter_photometry(batch: torch.Tensor, brightness_sd: float, contrast_sd: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Give each image its own contrast and brightness, clipped to the value range.

    The deviations from the image's mean are scaled by exp(N(0, contrast_sd)) (haze and dust
    opacity flatten or sharpen a scene), then an offset N(0, brightness_sd) in model units is
    added (albedo and exposure). Neither moves a shadow, so the sun direction is kept. Without
    it the model draws craters 24 % too uniform in brightness (docs/base_model.md).
    """
    if brightness_sd == 0 and contrast_sd == 0:
        return batch
    shape = (batch.shape[0],) + (1,) * (batch.dim() - 1)
    gain = torch.exp(torch.randn(shape, generator=generator) * contrast_sd)
    offset = torch.randn(shape, generator=generator) * brightness_sd
    mean = batch.mean(dim=tuple(range(1, batch.dim())), keepdim=True)
    low, high = VALUE_BOUNDS
    return (mean + gain * (batch - mean) + offset).clamp(low, high)


def augment(batch: torch.Tensor, flip: str, shift_px: int, generator: torch.Generator,
            brightness_sd: float, contrast_sd: float) -> torch.Tensor:
    """The training batch's augmentation: the sun-preserving mirror, the crater-centre jitter,
    then the photometric jitter (``brightness_sd`` in model units)."""
    moved = shift_each(mirror_half(batch, flip, generator), shift_px, generator)
    return jitter_photometry(moved, brightness_sd, contrast_sd, generator)
