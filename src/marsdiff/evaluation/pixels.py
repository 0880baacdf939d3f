"""Pixel statistics of image sets against the held-out crops: brightness spread and contrast.

Two numbers that a feature space can hide and a planetary scientist looks at first, in grey
levels (0-255) at the matched resolution:

* **brightness spread**: the standard deviation of the image means. Real craters range from dark
  to bright scenes; a model that draws every crater at one brightness has a small spread.
* **contrast**: the mean of the within-image standard deviations. Flat, washed-out craters have
  little.

Each comes with a percentile bootstrap interval over images (``bootstrap_counts``, so models
with the same number of images are resampled with the same indices, as in the evaluation), and
the held-out crops' own value and interval are the target. Generated images reach the statistic
by the path their features took: read as grey, brought down to the matched resolution with the
BOX filter of :func:`marsdiff.data.images.resize_to`.

:func:`pixel_statistics_table` is the table of the evaluation's ``pixel_statistics`` stage
(:mod:`marsdiff.stages.pixel_statistics`, ``pixel_statistics.csv``); :func:`pixel_statistics_markdown`
is its section of ``summary.md``; ``marsdiff assess-base`` uses :func:`pixel_statistics` for its
two pixel columns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from marsdiff.errors import MarsdiffError

PIXEL_STATISTICS = ("brightness_spread", "contrast")
STATISTIC_LABELS = {"brightness_spread": "brightness spread", "contrast": "contrast"}
PIXEL_TABLE_COLUMNS = ["model", "statistic", "value", "ci_low", "ci_high", "n_images", "heldout_value",
                       "heldout_ci_low", "heldout_ci_high", "relative_difference"]
#: The intervals of :func:`pixel_statistics`, the base-model check's own protocol (assess-base,
#: like its AssessSettings), not the evaluation's configured bootstrap.
CHECK_REPLICATES = 1000
CHECK_CONFIDENCE = 0.95
CHECK_SEED = 0
# The held-out crops' resamples use their own stream, so they never coincide with a model's.
HELDOUT_SEED_OFFSET = 7919


def image_means_and_stds(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean and standard deviation of (N, H, W) grey images, float64."""
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    return flat.mean(axis=1), flat.std(axis=1)


def brightness_and_contrast(images: np.ndarray) -> tuple[float, float]:
    """(std of the image means, mean within-image std) of uint8 images (N, H, W), grey levels."""
    means, stds = image_means_and_stds(images)
    return float(means.std()), float(stds.mean())


def bootstrap_replicates(images: np.ndarray, replicates: int, seed: int) -> dict[str, np.ndarray]:
    """Both statistics on ``replicates`` resamples of the images (with replacement)."""
    from marsdiff.evaluation.bootstrap import bootstrap_counts

    means, stds = image_means_and_stds(images)
    weights = bootstrap_counts(len(means), replicates, seed) / len(means)
    centre = weights @ means
    spread = np.sqrt((weights * (means[None, :] - centre[:, None]) ** 2).sum(axis=1))
    return {"brightness_spread": spread, "contrast": weights @ stds}


def brightness_and_contrast_intervals(images: np.ndarray, seed: int, replicates: int,
                                      confidence: float) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of both statistics: ``{"brightness_spread_ci": [low, high], ...}``.

    A spread of image means from 64 images is a noisy number (draws of 64 real train crops range
    from 25 to 34 grey levels), so a comparison with the held-out crops' needs its interval, and
    so does the held-out value itself (103 crops)."""
    from marsdiff.evaluation.bootstrap import percentile_interval

    out = {}
    for name, values in bootstrap_replicates(images, replicates, seed).items():
        interval = percentile_interval(values, confidence)
        out[f"{name}_ci"] = [interval.low, interval.high]
    return out


def pixel_statistics(images: np.ndarray) -> dict[str, Any]:
    """Both statistics and their intervals (the base-model check's replicates and seed) as one dict."""
    brightness, contrast = brightness_and_contrast(images)
    intervals = brightness_and_contrast_intervals(images, CHECK_SEED, CHECK_REPLICATES, CHECK_CONFIDENCE)
    return {"brightness_spread": brightness, "contrast": contrast, **intervals}


def grey_images(paths: Sequence[str | os.PathLike], resolution: int) -> np.ndarray:
    """(N, resolution, resolution) uint8 grey images: read as grey, BOX-downsampled when larger."""
    from marsdiff.data.images import load_image, resize_to

    images = []
    for path in paths:
        grey = load_image(path, mode="L")
        if min(grey.shape) < resolution:
            raise MarsdiffError(f"{path}: image is {grey.shape[1]}x{grey.shape[0]} px, below the matched "
                                f"resolution {resolution} px")
        images.append(resize_to(grey, resolution))
    if not images:
        raise MarsdiffError("pixel statistics need at least one image")
    return np.stack(images)


def heldout_images(manifest: str | os.PathLike) -> np.ndarray:
    """The held-out crops of a reference manifest at its own resolution (grey uint8)."""
    from marsdiff.data.images import load_image
    from marsdiff.data.manifest import read_manifest

    table = read_manifest(manifest, split="heldout")
    if table.empty:
        raise MarsdiffError(f"{manifest}: no held-out crops (no row with split == 'heldout')")
    root = Path(manifest).parent
    return np.stack([load_image(root / rel, mode="L") for rel in table["path"]])


def pixel_statistics_table(sets: Mapping[str, np.ndarray], heldout: np.ndarray, replicates: int, seed: int,
                           confidence: float) -> pd.DataFrame:
    """One row per (model, statistic): value, interval, the held-out value and interval, and
    ``relative_difference`` = value / held-out value - 1."""
    if len(heldout) < 2:
        raise MarsdiffError(f"pixel statistics need at least 2 held-out crops, got {len(heldout)}")
    target = dict(zip(PIXEL_STATISTICS, brightness_and_contrast(heldout)))
    target_ci = brightness_and_contrast_intervals(heldout, seed + HELDOUT_SEED_OFFSET, replicates, confidence)
    rows = []
    for model, images in sets.items():
        if len(images) < 2:
            raise MarsdiffError(f"model {model!r}: pixel statistics need at least 2 images, got {len(images)}")
        values = dict(zip(PIXEL_STATISTICS, brightness_and_contrast(images)))
        ci = brightness_and_contrast_intervals(images, seed, replicates, confidence)
        for name in PIXEL_STATISTICS:
            (low, high), (target_low, target_high) = ci[f"{name}_ci"], target_ci[f"{name}_ci"]
            rows.append({
                "model": model, "statistic": name, "value": values[name], "ci_low": low, "ci_high": high,
                "n_images": len(images), "heldout_value": target[name], "heldout_ci_low": target_low,
                "heldout_ci_high": target_high,
                "relative_difference": values[name] / target[name] - 1.0 if target[name] > 0 else float("nan"),
            })
    return pd.DataFrame(rows, columns=PIXEL_TABLE_COLUMNS)


def read_pixel_statistics(path: str | os.PathLike) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise MarsdiffError(f"{path}: unreadable pixel statistics ({' '.join(str(err).split())})") from None
    missing = [c for c in PIXEL_TABLE_COLUMNS if c not in table]
    if missing:
        raise MarsdiffError(f"{path}: no {missing[0]!r} column (written by the pixel_statistics stage?)")
    return table


def pixel_statistics_markdown(table: pd.DataFrame, models: Sequence[str] | None = None) -> str:
    """The summary's table: one row per model plus the held-out target, value [interval] and the
    difference from the target in per cent."""
    from marsdiff.evaluation.report import format_interval

    models = list(models) if models is not None else list(dict.fromkeys(table["model"]))
    if not models:
        raise MarsdiffError("pixel statistics: the table has no model")
    by_key = {(r.model, r.statistic): r for r in table.itertuples(index=False)}

    def row_of(model: str, statistic: str):
        if (model, statistic) not in by_key:
            raise MarsdiffError(f"pixel statistics: no {statistic} row for model {model!r}; "
                                "re-run the pixel_statistics stage")
        return by_key[(model, statistic)]

    header = "| model | " + " | ".join(f"{STATISTIC_LABELS[s]} (grey levels) | vs held-out" for s in PIXEL_STATISTICS)
    lines = [header + " |", "|---|" + "---|---|" * len(PIXEL_STATISTICS)]
    # every row carries the same held-out target; the first model's says it
    target = [row_of(models[0], s) for s in PIXEL_STATISTICS]
    lines.append("| held-out crops | " + " | ".join(
        f"{format_interval(r.heldout_value, r.heldout_ci_low, r.heldout_ci_high)} | target" for r in target) + " |")
    for model in models:
        cells = [row_of(model, s) for s in PIXEL_STATISTICS]
        lines.append(f"| {model} | " + " | ".join(
            f"{format_interval(r.value, r.ci_low, r.ci_high)} | {100 * r.relative_difference:+.0f} %" for r in cells) + " |")
    return "\n".join(lines)
