"""How close a base model's images are to the held-out craters: the base-model check.

One table row per image set, each against the held-out crops at the matched resolution and in the
reward's feature space (the path of stage ``evaluate``): k-NN precision, recall, density and
coverage (one k for all four), MMD^2 with the median-distance RBF bandwidth, the memorisation ratio
(median distance to the nearest train crop over the held-out crops' own) and two pixel
statistics: the brightness spread (standard deviation of the image means) and the contrast (mean
within-image standard deviation), in grey levels, each with a 95 % bootstrap interval. The first
rows are draws of real train crops, the yardstick a model is measured against. ``marsdiff
assess-base`` prints the table; ``make base-checkpoint`` stores it in the shipped model's
provenance; docs/base_model.md shows it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.pixels import PIXEL_STATISTICS, pixel_statistics
from marsdiff.io.reading import read_csv

log = logging.getLogger(__name__)

COLUMNS = ("set", "precision", "recall", "density", "coverage", "mmd2", "memorisation_ratio",
           "brightness_spread", "contrast")


@dataclass(frozen=True)
class AssessSettings:
    """One measurement: images per set, k of all four k-NN metrics, sampling steps and eta, the
    seed stream (the evaluation's seed 0) and how many draws of real train crops to compare."""

    images: int
    steps: int
    k: int = 5
    eta: float = 1.0
    seed: int = 0
    real_draws: int = 3


class HeldoutYardstick:
    """Held-out and train features and pixels at the matched resolution, prepared once."""

    def __init__(self, manifest: str | os.PathLike, features: str | os.PathLike, k: int):
        from marsdiff.data.images import load_image
        from marsdiff.evaluation.distances import pairwise_distances
        from marsdiff.evaluation.fidelity import median_pairwise_distance, rbf_from_distances
        from marsdiff.evaluation.memorisation import MemorisationReference
        from marsdiff.evaluation.reference import ReferenceSet

        self.reference = ReferenceSet.from_files(manifest, features, category_columns=("size_cat",))
        self.k = int(k)
        if len(self.reference.heldout) <= self.k:
            raise MarsdiffError(f"{manifest}: {len(self.reference.heldout)} held-out crops, need more than k = {self.k}")
        held_distances = pairwise_distances(self.reference.heldout)
        self.bandwidth = median_pairwise_distance(held_distances)
        self.heldout_kernel = rbf_from_distances(held_distances, self.bandwidth)
        self.memorisation = MemorisationReference(self.reference.heldout, self.reference.train)
        table = read_csv(manifest, "reference index", "prepare_reference", columns=("id", "path"), dtype={"id": str})
        paths = dict(zip(table["id"], table["path"]))
        root = Path(manifest).parent
        self.train_pixels = np.stack([load_image(root / paths[i], mode="L") for i in self.reference.train_ids])
        self.heldout_pixels = np.stack([load_image(root / paths[i], mode="L") for i in self.reference.heldout_ids])

    def row(self, name: str, features: np.ndarray, pixels: np.ndarray) -> dict[str, Any]:
        from marsdiff.evaluation.distances import pairwise_distances
        from marsdiff.evaluation.fidelity import rbf_from_distances, unbiased_mmd2
        from marsdiff.evaluation.manifold import precision_recall_density_coverage

        features = self.reference.check_generated(features, name)
        if len(features) <= self.k:
            raise MarsdiffError(f"set {name!r}: {len(features)} images, need more than k = {self.k}")
        prdc = precision_recall_density_coverage(features, self.reference.heldout, self.k, self.k)
        kxx = rbf_from_distances(pairwise_distances(features), self.bandwidth)
        kxy = rbf_from_distances(pairwise_distances(features, self.reference.heldout), self.bandwidth)
        return {"set": name, **prdc, "mmd2": unbiased_mmd2(kxx, self.heldout_kernel, kxy),
                "memorisation_ratio": self.memorisation.ratio(features), **pixel_statistics(pixels)}

    def real_rows(self, images: int, draws: int, seed: int) -> list[dict[str, Any]]:
        """Draws of real train crops (as many as a model's set) and the held-out crops themselves."""
        rng = np.random.default_rng(seed)
        rows = []
        n = min(int(images), len(self.reference.train))
        for draw in range(int(draws)):
            pick = rng.choice(len(self.reference.train), size=n, replace=False)
            row = self.row(f"real train crops, draw {draw + 1}", self.reference.train[pick], self.train_pixels[pick])
            # a train crop is its own nearest train crop: the ratio says nothing here
            row["memorisation_ratio"] = None
            rows.append(row)
        rows.append({"set": "held-out crops (the target)", **pixel_statistics(self.heldout_pixels)})
        return rows


def assess_model(model_dir: str | os.PathLike, yardstick: HeldoutYardstick, extractor_name: str,
                 features_cfg: Mapping[str, Any], resolution: int, settings: AssessSettings,
                 sampling: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The row of one pixel model directory: its seeded images through the evaluation's path.

    ``sampling``: the config's sampling section (the chain's ``min_std``, ``batch_size``,
    ``device``; steps, eta and seed are the settings'), as stage generate_samples passes it."""
    from marsdiff.data.images import load_image
    from marsdiff.evalset.generate import generate_model_samples
    from marsdiff.evalset.models import BASE, BASE_MODEL
    from marsdiff.features.registry import build_extractor
    from marsdiff.rewards.round_scoring import round_features

    sampling = {k: v for k, v in sampling.items() if k in ("min_std", "batch_size", "device")}
    device = str(sampling["device"])
    spec = dict(name=BASE_MODEL, kind=BASE, eta=settings.eta, noise_scale=1.0, class_weights="uniform",
                class_weights_name="sampling.class_distribution", experiment=None, round=None)
    with tempfile.TemporaryDirectory(prefix="marsdiff-assess-") as scratch:
        scratch = Path(scratch)
        generate_model_samples(spec, {"backend": "pixel", "pixel": {"device": device}},
                               {**sampling, "eta": settings.eta}, settings.images, settings.seed,
                               settings.steps, scratch / "images", scratch / "samples.csv", model_dir=model_dir)
        paths = sorted((scratch / "images").glob("*.png"))
        extractor = build_extractor(extractor_name, dict(features_cfg))
        features, _ = round_features(paths, extractor, None, resolution)
        pixels = np.stack([load_image(p, mode="L") for p in paths])
    label = name or f"{Path(model_dir).name} (eta {settings.eta:g}, {settings.steps} steps)"
    return yardstick.row(label, features, pixels)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of assessment rows (blank where a value does not apply); the pixel
    statistics carry their 95 % interval where the row has one."""

    def number(value: Any) -> str:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
        return str(value)

    def cell(row: Mapping[str, Any], column: str) -> str:
        text = number(row.get(column))
        interval = row.get(f"{column}_ci") if column in PIXEL_STATISTICS else None
        if text and interval:
            text += f" [{interval[0]:.1f}, {interval[1]:.1f}]"
        return text

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row, c) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
