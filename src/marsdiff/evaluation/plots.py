"""Evaluation figures (matplotlib, Agg backend): every one with a title, labelled axes and a legend.

Each function writes one PNG atomically and returns its path. The figure size is fixed
(``figsize`` x ``dpi`` pixels, no tight bounding box) so the report layout does not jump when the
data change; constrained layout keeps the labels inside.

* :func:`plot_tsne`: t-SNE (scikit-learn) of reference vs base vs tuned features;
* :func:`plot_reward_curves`: reward mean +- std over RL rounds, one line per experiment;
* :func:`plot_category_coverage`: per-category coverage bars with intervals, one group per category;
* :func:`plot_sample_grid`: one row per model, columns = the same seeds for every model;
* :func:`plot_extremes_by_credit`: the most novel and the most redundant images by per-image credit;
* :func:`plot_metric_intervals`: every metric's value and interval per model (a forest plot).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.data.category_order import category_sort_key
from marsdiff.evaluation.metric import direction_symbol
from marsdiff.io.figures import pyplot, save_png, subplots

if TYPE_CHECKING:
    from matplotlib.axes import Axes

DPI = 100
REFERENCE_COLOUR = "0.55"
EXACT_TSNE_MAX_POINTS = 600


def _colours(n: int) -> list:
    cmap = pyplot().get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


# --------------------------------------------------------------------------------------------
# t-SNE
# --------------------------------------------------------------------------------------------


def plot_tsne(
    features: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    reference: str | None = None,
    *,
    seed: int,
    perplexity: float,
    max_iter: int,
    title: str = "t-SNE of image features",
    figsize: tuple[float, float] = (7.0, 6.0),
    dpi: int = DPI,
    fit: Sequence[str] | None = None,
    neighbours: int = 10,
) -> Path:
    """One 2-D t-SNE embedding (``name -> (n, d)``), one colour per set.

    ``fit``: the sets the embedding is fitted on (default: all). The other sets are **placed**
    into it, not fitted (:func:`place_points`): a policy's images lie about 0.4 from the base
    model's same-seed images while real crops lie about 2.5 apart, so fitting near-identical sets
    together makes t-SNE pull each same-seed group into an artificial clump. Placed sets are
    drawn with hollow markers and "(placed)" in the legend.

    ``reference``: the set drawn in grey underneath (default: the first). Features are reduced to
    at most 50 principal components first (standard practice; faster, less noisy). Perplexity is
    capped at (n - 1) / 3 so small sets work. scikit-learn spends the first 250 iterations in
    early exaggeration: ``max_iter`` below about 500 leaves the map unfinished.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if not features:
        raise MarsdiffError("plot_tsne needs at least one feature set")
    names = list(features)
    reference = names[0] if reference is None else reference
    if reference not in features:
        raise MarsdiffError(f"plot_tsne: reference set {reference!r} is not among {names}")
    arrays = [np.asarray(features[name], dtype=np.float64) for name in names]
    if len({a.shape[1] for a in arrays}) != 1:
        raise MarsdiffError(f"plot_tsne: feature dimension mismatch {[a.shape for a in arrays]}")
    stacked = np.concatenate(arrays)
    if len(stacked) < 5:
        raise MarsdiffError(f"plot_tsne needs at least 5 points in all, got {len(stacked)}")
    fitted = list(names) if fit is None else [n for n in names if n in set(fit)]
    if reference not in fitted:
        raise MarsdiffError(f"plot_tsne: the reference set {reference!r} must be among the fitted sets {fitted}")
    fit_rows = np.concatenate([arrays[names.index(n)] for n in fitted])
    if len(fit_rows) < 5:
        raise MarsdiffError(f"plot_tsne needs at least 5 fitted points, got {len(fit_rows)}")
    centre = fit_rows.mean(axis=0)
    components = min(50, stacked.shape[1], len(fit_rows))
    pca = PCA(n_components=components, random_state=seed).fit(fit_rows - centre)
    reduced = {n: pca.transform(arrays[names.index(n)] - centre) for n in names}
    fit_reduced = np.concatenate([reduced[n] for n in fitted])
    fit_embedding = TSNE(
        n_components=2,
        perplexity=min(perplexity, (len(fit_reduced) - 1) / 3.0),
        init="pca",
        random_state=seed,
        max_iter=max(250, max_iter),
        # The exact gradient is faster than Barnes-Hut below a few hundred points (measured).
        method="exact" if len(fit_reduced) <= EXACT_TSNE_MAX_POINTS else "barnes_hut",
    ).fit_transform(fit_reduced)
    fit_bounds = np.cumsum([0] + [len(reduced[n]) for n in fitted])
    placed_sets = {n: place_points(reduced[n], fit_reduced, fit_embedding, neighbours) for n in names if n not in fitted}
    embedding = np.concatenate([
        fit_embedding[fit_bounds[fitted.index(n)]:fit_bounds[fitted.index(n) + 1]] if n in fitted else placed_sets[n]
        for n in names
    ])
    bounds = np.cumsum([0] + [len(a) for a in arrays])

    fig, ax = subplots(figsize=figsize, layout="constrained")
    colours = iter(_colours(len(names)))
    # The reference first and in grey, so the models are drawn over it.
    for name in [reference] + [n for n in names if n != reference]:
        index = names.index(name)
        points = embedding[bounds[index] : bounds[index + 1]]
        if name == reference:
            ax.scatter(*points.T, s=22, c=REFERENCE_COLOUR, marker="o", alpha=0.7, label=f"{name} (n={len(points)})")
        elif name in placed_sets:
            ax.scatter(*points.T, s=22, facecolors="none", edgecolors=next(colours), marker="o", linewidths=1.2,
                       alpha=0.9, label=f"{name} (n={len(points)}, placed)")
        else:
            ax.scatter(*points.T, s=16, color=next(colours), marker="^", alpha=0.8, label=f"{name} (n={len(points)})")
    ax.set_xlabel("t-SNE dimension 1")
    ax.set_ylabel("t-SNE dimension 2")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small", frameon=True)
    return save_png(fig, path, dpi)


def place_points(points: np.ndarray, fitted: np.ndarray, embedding: np.ndarray, neighbours: int = 10) -> np.ndarray:
    """Positions of new ``points`` in a fitted 2-D embedding: each one's Gaussian-kernel-weighted
    mean of the embedded positions of its ``neighbours`` nearest fitted points (in the space the
    embedding was fitted from), the kernel width that point's distance to its nearest fitted
    point: the nearest dominates (a point on top of a fitted one lands on it), a tie between two
    near neighbours lands between them, and the far ones barely count (a width as wide as all k
    would pull every placed point toward the map's centre). t-SNE itself never sees the placed points."""
    from marsdiff.evaluation.distances import pairwise_distances

    k = max(1, min(int(neighbours), len(fitted)))
    distances = pairwise_distances(np.asarray(points, dtype=np.float64), np.asarray(fitted, dtype=np.float64))
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    near = np.take_along_axis(distances, nearest, axis=1)
    width = np.maximum(near[:, :1], 1e-12)
    weights = np.exp(-0.5 * (near / width) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", weights, embedding[nearest])


# --------------------------------------------------------------------------------------------
# Reward curves
# --------------------------------------------------------------------------------------------

REWARD_COLUMNS = ("experiment", "round", "reward_mean", "reward_std")


def plot_reward_curves(
    metrics: pd.DataFrame,
    path: str | os.PathLike,
    title: str = "Set reward over RL rounds",
    ylabel: str = "reward (mean ± 1 std over the round's images)",
    figsize: tuple[float, float] = (7.0, 4.5),
    dpi: int = DPI,
) -> Path:
    """Reward mean with a +-1 std band per experiment (columns experiment, round, reward_mean, reward_std)."""
    missing = [c for c in REWARD_COLUMNS if c not in metrics.columns]
    if missing:
        raise MarsdiffError(f"plot_reward_curves: the metrics table lacks column(s) {', '.join(missing)}")
    if metrics.empty:
        raise MarsdiffError("plot_reward_curves: the metrics table has no rows")
    fig, ax = subplots(figsize=figsize, layout="constrained")
    experiments = list(dict.fromkeys(metrics["experiment"]))
    for colour, experiment in zip(_colours(len(experiments)), experiments):
        rows = metrics[metrics["experiment"] == experiment].sort_values("round")
        rounds = rows["round"].astype(int).to_numpy()
        mean = rows["reward_mean"].to_numpy(dtype=np.float64)
        std = np.nan_to_num(rows["reward_std"].to_numpy(dtype=np.float64))
        ax.plot(rounds, mean, marker="o", color=colour, label=str(experiment))
        ax.fill_between(rounds, mean - std, mean + std, color=colour, alpha=0.2)
    ax.set_xlabel("RL round (0 = base model)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(title="experiment", fontsize="small")
    ax.grid(alpha=0.3)
    return save_png(fig, path, dpi)


# --------------------------------------------------------------------------------------------
# Per-category coverage
# --------------------------------------------------------------------------------------------


def plot_category_coverage(
    category_coverage: pd.DataFrame,
    path: str | os.PathLike,
    models: Sequence[str] | None = None,
    title: str = "Coverage of held-out craters by category",
    figsize: tuple[float, float] | None = None,
    dpi: int = DPI,
) -> Path:
    """Grouped bars: per category column one panel, per category one group, per model one bar
    (coverage with its interval as an error bar). Input: ``Evaluation.category_coverage``."""
    needed = ("model", "column", "category", "coverage", "ci_low", "ci_high")
    missing = [c for c in needed if c not in category_coverage.columns]
    if missing or category_coverage.empty:
        raise MarsdiffError(f"plot_category_coverage: no per-category coverage rows (missing {missing or 'rows'})")
    models = list(models) if models is not None else list(dict.fromkeys(category_coverage["model"]))
    columns = list(dict.fromkeys(category_coverage["column"]))
    figsize = figsize or (max(6.0, 3.5 * len(columns) + 0.4 * len(models)), 5.2)
    fig, axes = subplots(1, len(columns), figsize=figsize, layout="constrained", squeeze=False)
    colours = _colours(len(models))
    width = 0.8 / len(models)
    for ax, column in zip(axes[0], columns):
        rows = category_coverage[category_coverage["column"] == column]
        categories = sorted(set(rows["category"].astype(str)), key=category_sort_key)
        x = np.arange(len(categories))
        for offset, (model, colour) in enumerate(zip(models, colours)):
            part = rows[rows["model"] == model].set_index(rows[rows["model"] == model]["category"].astype(str))
            part = part.reindex(categories)
            value = part["coverage"].to_numpy(dtype=np.float64)
            errors = np.vstack([value - part["ci_low"].to_numpy(np.float64), part["ci_high"].to_numpy(np.float64) - value])
            ax.bar(
                x + (offset - (len(models) - 1) / 2.0) * width,
                value,
                width,
                yerr=np.clip(np.nan_to_num(errors), 0.0, None),
                capsize=2,
                color=colour,
                label=model,
            )
        counts = rows.drop_duplicates("category").set_index(rows.drop_duplicates("category")["category"].astype(str))
        labels = [f"{c}\n(n={int(counts.loc[c, 'n_heldout'])})" if "n_heldout" in counts else c for c in categories]
        # many classes: slant the labels so that neighbours never overlap
        ax.set_xticks(x, labels, fontsize="small", rotation=30 if len(categories) > 3 else 0,
                      ha="right" if len(categories) > 3 else "center")
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel(f"held-out {column}")
        ax.set_ylabel("coverage (share of held-out crops reached)")
        ax.set_title(column)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(models), 5),
               fontsize="small", title="model")
    fig.suptitle(title)
    return save_png(fig, path, dpi)


# --------------------------------------------------------------------------------------------
# Image grids
# --------------------------------------------------------------------------------------------


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise MarsdiffError(f"{what}: images must be uint8 (0-255), got {images.dtype}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise MarsdiffError(f"{what}: images must have shape (N, H, W) or (N, H, W, 3), got {images.shape}")
    if len(images) == 0:
        raise MarsdiffError(f"{what}: no images")
    return images


def _show(ax: Axes, image: np.ndarray) -> None:
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_sample_grid(
    images: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    n_columns: int,
    seeds: Sequence[int] | None = None,
    title: str = "Samples per model (each column: the same seed)",
    cell_inches: float = 1.1,
    dpi: int = DPI,
    labels: Mapping[str, Sequence[str]] | None = None,
    real: tuple[str, np.ndarray, Sequence[str]] | None = None,
) -> Path:
    """One row per model, the first ``n_columns`` images of each (image i = seed i for every model).

    ``labels``: model -> each image's class, written under it. ``real``: (row name, real crops,
    their classes), drawn as the first row so the models can be compared with real craters."""
    if not images:
        raise MarsdiffError("plot_sample_grid needs at least one model's images")
    arrays = {name: _check_images(values, f"plot_sample_grid[{name}]") for name, values in images.items()}
    columns = min(n_columns, min(len(a) for a in arrays.values()))
    seeds = list(seeds) if seeds is not None else list(range(columns))
    rows: list[tuple[str, np.ndarray, Sequence[str] | None]] = []
    if real is not None:
        rows.append((real[0], _check_images(real[1], f"plot_sample_grid[{real[0]}]"), real[2]))
    rows += [(name, array, (labels or {}).get(name)) for name, array in arrays.items()]
    fig, axes = subplots(
        len(rows),
        columns,
        figsize=(cell_inches * columns + 1.6, (cell_inches + (0.2 if labels or real else 0.0)) * len(rows) + 0.8),
        layout="constrained",
        squeeze=False,
    )
    for row, (name, array, row_labels) in enumerate(rows):
        for column in range(columns):
            ax = axes[row][column]
            if column >= len(array):
                ax.axis("off")
                continue
            _show(ax, array[column])
            if row == (1 if real is not None else 0):
                ax.set_title(f"seed {seeds[column]}", fontsize="small")
            if row_labels is not None:
                ax.set_xlabel(str(row_labels[column]), fontsize="x-small", labelpad=1)
        axes[row][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize="small")
    fig.suptitle(title)
    return save_png(fig, path, dpi)


def plot_extremes_by_credit(
    images: np.ndarray,
    credit: np.ndarray,
    path: str | os.PathLike,
    *,
    n: int,
    ids: Sequence[str] | None = None,
    title: str = "Most novel and most redundant images by per-image credit",
    cell_inches: float = 1.3,
    dpi: int = DPI,
) -> Path:
    """Top row: the ``n`` images with the highest credit (most novel); bottom row: the lowest (most redundant)."""
    images = _check_images(images, "plot_extremes_by_credit")
    credit = np.asarray(credit, dtype=np.float64).ravel()
    if len(credit) != len(images):
        raise MarsdiffError(f"plot_extremes_by_credit: {len(credit)} credits for {len(images)} images")
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(images))]
    n = min(n, len(images))
    order = np.argsort(-credit, kind="stable")
    rows = (("most novel\n(highest\ncredit)", order[:n]), ("most\nredundant\n(lowest\ncredit)", order[::-1][:n]))
    figsize = (cell_inches * n + 1.8, 2 * cell_inches + 1.2)
    fig, axes = subplots(2, n, figsize=figsize, layout="constrained", squeeze=False)
    for row, (label, chosen) in enumerate(rows):
        for column, index in enumerate(chosen):
            ax = axes[row][column]
            _show(ax, images[index])
            ax.set_title(f"{ids[index]}\ncredit {credit[index]:.3g}", fontsize="x-small")
        axes[row][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize="small")
    fig.suptitle(title)
    return save_png(fig, path, dpi)


# --------------------------------------------------------------------------------------------
# Metric intervals (forest plot)
# --------------------------------------------------------------------------------------------


def plot_metric_intervals(
    table: pd.DataFrame,
    path: str | os.PathLike,
    metrics: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    title: str = "Metrics per model (point and interval)",
    panel_inches: tuple[float, float] = (3.2, 0.35),
    dpi: int = DPI,
) -> Path:
    """One small panel per metric: a dot and interval per model (the metrics table, long form)."""
    if table.empty:
        raise MarsdiffError("plot_metric_intervals: the metrics table has no rows")
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(table["metric"]))
    models = list(models) if models is not None else list(dict.fromkeys(table["model"]))
    n_cols = 3
    n_rows = int(np.ceil(len(metrics) / n_cols))
    height = max(1.6, panel_inches[1] * len(models) + 0.9)
    fig, axes = subplots(
        n_rows, n_cols, figsize=(panel_inches[0] * n_cols + 1.5, height * n_rows + 0.6), layout="constrained", squeeze=False
    )
    colours = dict(zip(models, _colours(len(models))))
    for ax, metric in zip(axes.ravel(), metrics):
        rows = table[table["metric"] == metric].set_index("model")
        for y, model in enumerate(models):
            if model not in rows.index:
                continue
            r = rows.loc[model]
            low, high = float(r["ci_low"]), float(r["ci_high"])
            ax.plot([low, high], [y, y], color=colours[model], lw=2)
            ax.plot([float(r["value"])], [y], "o", color=colours[model], label=model)
        direction = direction_symbol(metric, bool(rows["higher_is_better"].iloc[0]))
        better = {"↑": "higher is better", "↓": "lower is better"}.get(direction, "a pass/fail check")
        ax.set_yticks(range(len(models)), models, fontsize="x-small")
        ax.set_ylim(-0.7, len(models) - 0.3)
        ax.invert_yaxis()
        ax.set_title(metric, fontsize="small")
        ax.set_xlabel(f"value ({better})", fontsize="x-small")
        ax.tick_params(axis="x", labelsize="x-small")
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_visible(False)
    handles = {}
    for ax in axes.ravel():  # a model may be missing from some panels (the split-half row)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [m for m in models if m in handles]
    fig.legend(
        [handles[m] for m in labels], labels, loc="outside lower center", ncols=min(len(models), 4),
        fontsize="small", title="model",
    )
    fig.suptitle(title)
    return save_png(fig, path, dpi)
