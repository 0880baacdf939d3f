"""The evaluation figures of the workflow (stage ``plot_evaluation``), drawn from files.

* ``tsne.png``: t-SNE fitted on the held-out crops + the base model; the frozen knob and every
  experiment's final policy placed into it (:func:`marsdiff.evaluation.plots.place_points`);
* ``sample_grid.png``: every model's first images, the same seeds in each column;
* ``category_coverage.png``: per size / lighting category, the share of held-out crops each
  model reaches (real draws, base model, final policies);
* ``metric_intervals.png``: every metric with its interval, all models;
* ``reward_curves.png``: the set reward of each RL round, one line per experiment;
* ``novel_redundant_<model>.png``: the base model's and each final policy's most novel and most
  redundant evaluation images by per-image credit: the exact leave-one-out credit of the reward
  that model was trained for (the experiment's, the top-level one for the base model) on its
  evaluation images, against the train split (as score_round computes it for a round).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from marsdiff.evalset.models import BASE, FINAL, FROZEN
from marsdiff.evaluation import plots
from marsdiff.evaluation.evaluate import REAL_MODEL
from marsdiff.evaluation.results import Evaluation
from marsdiff.io.reading import read_csv
from marsdiff.stages.evaluate import load_conditioning

log = logging.getLogger(__name__)

HELDOUT_LABEL = "held-out reference"


def load_model_images(samples_csv: str | os.PathLike, images_dir: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """One model's evaluation images (uint8, image-index order) and their ids."""
    from marsdiff.data.images import load_image
    from marsdiff.data.resolution import file_mode
    from marsdiff.io.reading import read_samples

    ids, paths = read_samples(samples_csv, images_dir)
    return ids, np.stack([load_image(p, mode=file_mode(p)) for p in paths])


def heldout_row(manifest: str | os.PathLike, count: int, column: str = "size_cat") -> tuple[np.ndarray, list[str]]:
    """``count`` held-out crops at the evaluation's resolution, spread evenly over ``column``'s
    classes from the smallest to the largest, and their classes (the sample grid's real row)."""
    from marsdiff.data.category_order import category_sort_key
    from marsdiff.data.images import load_image
    from marsdiff.data.manifest import read_manifest
    from marsdiff.data.resolution import file_mode
    from marsdiff.evaluation.reference import HELDOUT_SPLIT

    rows = read_manifest(manifest)
    heldout = rows[rows["split"].astype(str) == HELDOUT_SPLIT]
    if column in heldout.columns:
        order = sorted(range(len(heldout)), key=lambda i: (category_sort_key(heldout[column].iloc[i]),
                                                          str(heldout["id"].iloc[i])))
        heldout = heldout.iloc[order]
    picks = np.unique(np.linspace(0, len(heldout) - 1, min(count, len(heldout))).round().astype(int))
    chosen = heldout.iloc[picks]
    root = Path(manifest).parent
    paths = [root / str(p) for p in chosen["path"]]
    classes = chosen[column].astype(str).tolist() if column in chosen.columns else [""] * len(chosen)
    return np.stack([load_image(p, mode=file_mode(p)) for p in paths]), classes


def reward_curve_table(metric_tables: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The round metrics of every experiment (runs/{exp}/metrics.csv) as plot_reward_curves reads them.

    A round has one set reward (its images as a set), so there is no spread to draw around it.
    """
    frames = []
    for path in metric_tables:
        table = read_csv(path, "experiment metrics", "plot_experiment", columns=("experiment", "round", "set_reward"))
        frames.append(pd.DataFrame({"experiment": table["experiment"].astype(str), "round": table["round"].astype(int),
                                    "reward_mean": table["set_reward"].astype(float), "reward_std": np.nan}))
    return pd.concat(frames, ignore_index=True)


def per_image_credit(features: np.ndarray, reference_features: str | os.PathLike, manifest: str | os.PathLike,
                     extractor: str, reward_section: Mapping[str, Any]) -> np.ndarray:
    """Exact leave-one-out credit of each image under a reward, against the train split."""
    from marsdiff.rewards.combined import RewardConfig, RewardModel
    from marsdiff.rewards.round_scoring import train_reference_features

    train, _ = train_reference_features(reference_features, manifest, extractor, features.shape[1])
    model = RewardModel(train, RewardConfig.from_dict(dict(reward_section)))
    return model.leave_one_out(features).combined


def draw_evaluation_figures(
    eval_dir: str | os.PathLike,
    models: Sequence[Mapping[str, Any]],
    features: Mapping[str, str | os.PathLike],
    samples: Mapping[str, tuple[str | os.PathLike, str | os.PathLike]],
    reference_features: str | os.PathLike,
    manifest: str | os.PathLike,
    extractor: str,
    rewards: Mapping[str, Mapping[str, Any]],
    run_metrics: Sequence[str | os.PathLike],
    plot_cfg: Mapping[str, Any],
    outputs: Mapping[str, str | os.PathLike],
    resized_manifest: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Every evaluation figure into ``outputs`` (keys: tsne, sample_grid, category_coverage,
    metric_intervals, reward_curves when there are runs, novel_redundant_<model>).

    ``samples``: model -> (samples.csv, images folder); ``rewards``: model -> reward section
    for the credit figures (base model and final policies); ``plot_cfg``: the schema-filled
    ``evaluation.plots``; ``resized_manifest``: the reference at the evaluation's resolution, whose
    held-out crops make the sample grid's real row.
    """
    from marsdiff.data.manifest import read_manifest
    from marsdiff.evaluation.reference import HELDOUT_SPLIT
    from marsdiff.io.feature_files import read_feature_set

    evaluation = Evaluation.read(eval_dir)
    names = [m["name"] for m in models]
    focus = [m["name"] for m in models if m["kind"] in (BASE, FROZEN, FINAL)]  # base vs frozen knob vs tuned
    x = {name: read_feature_set(features[name], extractor=extractor)[0] for name in names}
    written: dict[str, Path] = {}

    # t-SNE: the held-out crops under the base model and the final policies.
    reference, ids = read_feature_set(reference_features, extractor=extractor)
    rows = read_manifest(manifest)
    split = dict(zip(rows["id"].astype(str), rows["split"].astype(str)))
    heldout = reference[[split.get(i) == HELDOUT_SPLIT for i in ids]]
    written["tsne"] = plots.plot_tsne(
        {HELDOUT_LABEL: heldout, **{name: x[name] for name in focus}}, outputs["tsne"], reference=HELDOUT_LABEL,
        seed=int(plot_cfg["seed"]), perplexity=float(plot_cfg["tsne_perplexity"]),
        max_iter=int(plot_cfg["tsne_max_iter"]),
        title=f"t-SNE of {extractor} features: fitted on held-out + base, others placed",
        # fitted on the held-out crops and the base model only: the frozen knob's and the
        # policies' same-seed near-copies of the base images are placed, not fitted (plots.place_points)
        fit=[HELDOUT_LABEL, *[m["name"] for m in models if m["kind"] == BASE]],
    )

    images = {name: load_model_images(*samples[name]) for name in names}
    # each image's conditioning, as the evaluate stage's train-on-synthetic metric reads it
    classes = load_conditioning({name: samples[name][0] for name in names}, {name: images[name][0] for name in names})
    real = None
    if resized_manifest is not None:
        crops, crop_classes = heldout_row(resized_manifest, int(plot_cfg["grid_columns"]))
        real = ("held-out crops", crops, crop_classes)
    written["sample_grid"] = plots.plot_sample_grid(
        {name: images[name][1] for name in names}, outputs["sample_grid"], n_columns=int(plot_cfg["grid_columns"]),
        title="Samples: a seed per column, class under each image", labels=classes, real=real,
    )
    coverage_models = [REAL_MODEL, *focus]
    coverage = evaluation.category_coverage
    written["category_coverage"] = plots.plot_category_coverage(
        coverage[coverage["model"].isin(coverage_models)], outputs["category_coverage"],
        models=[m for m in coverage_models if m in set(coverage["model"])],
    )
    written["metric_intervals"] = plots.plot_metric_intervals(evaluation.metrics, outputs["metric_intervals"])
    if run_metrics:
        written["reward_curves"] = plots.plot_reward_curves(
            reward_curve_table(run_metrics), outputs["reward_curves"], title="Set reward over RL rounds",
            ylabel="set reward of the round's images (z-scored)",
        )
    for name, reward in rewards.items():
        key = f"novel_redundant_{name}"
        credit = per_image_credit(x[name], reference_features, manifest, extractor, reward)
        written[key] = plots.plot_extremes_by_credit(
            images[name][1], credit, outputs[key], n=int(plot_cfg["extremes"]), ids=images[name][0],
            title=f"{name}: most novel / redundant by credit",
        )
    log.info("wrote %d figures", len(written))
    return written
