"""Stage pixel_statistics: brightness spread and contrast of every evaluated model's images
against the held-out crops, as ``pixel_statistics.csv``.

Reads the reference manifest's held-out crops and each model's images (its samples table and
folder) and hands them to :func:`marsdiff.evaluation.pixels.pixel_statistics_table`; the
statistics, their intervals and the table's format are :mod:`marsdiff.evaluation.pixels`'.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.pixels import grey_images, heldout_images, pixel_statistics_table

log = logging.getLogger(__name__)


def run_pixel_statistics(manifest: str | os.PathLike, sets: Mapping[str, tuple[str | os.PathLike, str | os.PathLike]],
                         resolution: int, metrics_cfg: Mapping[str, Any], out_csv: str | os.PathLike) -> pd.DataFrame:
    """Stage ``pixel_statistics``: ``sets`` maps a model to (samples.csv, images folder); the
    manifest is the reference at the matched resolution. Bootstrap replicates, seed and confidence
    are the evaluation's: ``metrics_cfg`` holds those keys of the schema-filled ``evaluation.metrics``."""
    from marsdiff.io.atomic import atomic_path
    from marsdiff.io.reading import read_samples

    heldout = heldout_images(manifest)
    if heldout.shape[1:] != (resolution, resolution):
        raise MarsdiffError(f"{manifest}: held-out crops are {heldout.shape[2]}x{heldout.shape[1]} px, "
                            f"not the matched {resolution} px")
    images = {name: grey_images(read_samples(samples, folder)[1], resolution) for name, (samples, folder) in sets.items()}
    table = pixel_statistics_table(images, heldout, int(metrics_cfg["bootstrap_replicates"]), int(metrics_cfg["seed"]),
                                   float(metrics_cfg["confidence"]))
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    log.info("pixel statistics of %d model(s) against %d held-out crops at %d px: %s", len(images), len(heldout),
             resolution, out_csv)
    return table
