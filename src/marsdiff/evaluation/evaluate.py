"""Evaluate generated feature sets against the held-out reference: every metric, every interval.

:func:`evaluate_models` is the entry point of the ``evaluate`` stage: it takes a mapping
``model name -> (M, d) generated features`` and a :class:`ReferenceSet`, prepares everything that
depends only on the reference once (distances, k-NN radii, bandwidth, k-means clusters, category
classifiers), scores each model with a seeded bootstrap, and adds two real-vs-real baselines.
Models whose images come with the categories they were conditioned on (``labels``) are also
scored downstream: a classifier trained on their images, tested on the held-out crops
(:mod:`marsdiff.evaluation.downstream`). The baselines:

* ``real``: ``baseline_repeats`` random draws of M **train** crops (disjoint from the held-out
  split), each scored against the held-out split exactly like a model (same M, same reference,
  so directly comparable, FD's sample-size bias included). Value = mean over draws, interval =
  middle 95 % of draws. Category KL uses out-of-fold classifier predictions for these rows;
  memorisation is not defined for train crops and is left out; the downstream classifier is
  trained on the draw's true categories. If M exceeds the train split, draws use every train
  crop and the detail column says so.
* ``real (held-out halves)``: unbiased MMD^2 between random halves of the held-out split (the
  split-half baseline).

:func:`evaluate_feature_set` is the one-model shortcut that returns the metrics table only.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.bootstrap import bootstrap_counts, point_counts
from marsdiff.evaluation.categories import CategoryClassifier, coverage_by_category
from marsdiff.evaluation.distances import nearest_other_distance, pairwise_distances
from marsdiff.evaluation.downstream import TrainOnSynthetic
from marsdiff.evaluation.diversity import near_duplicate_metric, near_duplicate_threshold, vendi_metric
from marsdiff.evaluation.fidelity import FrechetReference, KIDReference, MMDReference, median_pairwise_distance
from marsdiff.evaluation.manifold import ManifoldReference, Memberships
from marsdiff.evaluation.memorisation import MemorisationReference
from marsdiff.evaluation.metric import Metric, MetricEstimate, estimate
from marsdiff.evaluation.modes import ModeReference
from marsdiff.evaluation.reference import ReferenceSet
from marsdiff.evaluation.results import (
    CATEGORY_COVERAGE_COLUMNS,
    CATEGORY_SHARE_COLUMNS,
    METRIC_COLUMNS,
    REFERENCE_COLUMNS,
    REPLICATE_COLUMNS,
    Evaluation,
)
from marsdiff.evaluation.settings import EvaluationSettings, require_neighbours

log = logging.getLogger(__name__)

REAL_MODEL = "real"
SPLIT_HALF_MODEL = "real (held-out halves)"
REAL_MODELS = (REAL_MODEL, SPLIT_HALF_MODEL)
SPREAD_OVER_DRAWS = "spread over draws"


class PreparedReference:
    """Everything that depends only on the reference and the settings, computed once."""

    def __init__(self, reference: ReferenceSet, settings: EvaluationSettings):
        self.reference = reference
        self.settings = settings
        reference.require_category_columns(settings.category_columns)
        heldout = reference.heldout
        self.heldout_distances = pairwise_distances(heldout)
        self.bandwidth = settings.bandwidth_scale * median_pairwise_distance(self.heldout_distances)
        self.heldout_nn = nearest_other_distance(self.heldout_distances)
        self.duplicate_threshold = near_duplicate_threshold(self.heldout_nn, settings.near_duplicate_fraction)
        self.manifold = ManifoldReference(
            heldout, settings.k_precision_recall, settings.k_density_coverage, self.heldout_distances
        )
        self.modes = ModeReference(heldout, settings.n_modes, settings.seed)
        self.frechet = FrechetReference(heldout)
        self.kid = KIDReference(heldout, settings.kid_subsets, settings.kid_subset_size, settings.seed)
        self.mmd = MMDReference(heldout, self.bandwidth, self.heldout_distances)
        self.memorisation = MemorisationReference(heldout, reference.train)
        self.classifiers = {
            column: CategoryClassifier(
                column,
                reference.train,
                reference.train_categories[column],
                heldout,
                reference.heldout_categories[column],
                settings.classifier_c,
                settings.seed,
            )
            for column in settings.category_columns
        }
        self.downstream = {
            column: TrainOnSynthetic(column, heldout, np.asarray(reference.heldout_categories[column]))
            for column in settings.category_columns
        }

    def label_columns(self, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        """Generated images' conditioning labels, keyed by the category column they name (if any)."""
        if labels is None:
            return {}
        return {column: np.asarray(labels) for column, tstr in self.downstream.items() if tstr.labels_are_categories(labels)}

    def metrics(
        self, generated: np.ndarray, predictions: Mapping[str, np.ndarray] | None = None, memorisation: bool = True,
        labels: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[list[Metric], Memberships]:
        """All metrics of one generated set (statistics of counts) and its ball memberships.

        ``predictions``: category index per row and column (default: the classifiers' predictions).
        ``labels``: column -> each row's category, for the train-on-synthetic metrics.
        """
        settings = self.settings
        generated_distances = pairwise_distances(generated)
        cross_distances = pairwise_distances(generated, self.reference.heldout)
        member = self.manifold.memberships(generated, generated_distances, cross_distances)
        if predictions is None:
            predictions = {column: clf.predict_index(generated) for column, clf in self.classifiers.items()}
        metrics = [
            self.frechet.metric(generated, settings.feature_space),
            self.kid.metric(generated),
            self.mmd.metric(generated, generated_distances, cross_distances),
            *self.manifold.metrics(member),
            vendi_metric(generated_distances, self.bandwidth),
            *(clf.kl_metric(predictions[column], settings.kl_pseudocount) for column, clf in self.classifiers.items()),
            self.modes.metric(generated),
            near_duplicate_metric(generated_distances, self.duplicate_threshold, settings.near_duplicate_fraction),
        ]
        if memorisation:
            metrics.extend(self.memorisation.metrics(generated, settings.memorisation_min_ratio, settings.seed))
        for column, column_labels in (labels or {}).items():
            metrics.extend(self.downstream[column].metrics(generated, column_labels))
        return metrics, member

    def summary(self) -> pd.DataFrame:
        """One row per reference-side quantity the report should show."""
        reference, settings = self.reference, self.settings
        sizes = self.modes.reference_sizes
        rows = [
            ("heldout_images", len(reference.heldout), "held-out crops compared against (never trained on)"),
            ("train_images", len(reference.train), "train crops: classifier, memorisation, real baseline"),
            ("feature_dim", reference.dim, f"{settings.feature_space} features"),
            ("rbf_bandwidth", self.bandwidth, f"{settings.bandwidth_scale:g} x median pairwise held-out distance"),
            ("heldout_median_nn_distance", float(np.median(self.heldout_nn)), "held-out crop to its nearest other"),
            ("near_duplicate_threshold", self.duplicate_threshold, f"{settings.near_duplicate_fraction:g} x the above"),
            ("heldout_median_distance_to_train", self.memorisation.heldout_median, "memorisation denominator"),
            ("n_modes", settings.n_modes, f"k-means cluster sizes {int(sizes.min())}..{int(sizes.max())} held-out crops"),
            ("bootstrap_replicates", settings.bootstrap_replicates,
             f"seed {settings.seed}, confidence {settings.confidence:g}"),
        ]
        table = [dict(quantity=q, value=float(v), ci_low=np.nan, ci_high=np.nan, detail=d) for q, v, d in rows]
        for column, clf in self.classifiers.items():
            acc = clf.accuracy
            table.append(
                dict(
                    quantity=f"classifier_accuracy_{column}",
                    value=acc.accuracy,
                    ci_low=acc.ci_low,
                    ci_high=acc.ci_high,
                    detail=(
                        f"logistic regression on standardised train features, {acc.n_classes} classes, "
                        f"{acc.n_heldout} held-out crops, chance {acc.chance:.2f}"
                    ),
                )
            )
        return pd.DataFrame(table, columns=REFERENCE_COLUMNS)


def evaluate_models(
    generated: Mapping[str, Any], reference: ReferenceSet, settings: EvaluationSettings,
    labels: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Score every generated set against the held-out split, with bootstrap intervals and baselines.

    ``labels``: model -> the category each image was conditioned on (``samples.csv``'s
    ``condition_name``), in the rows' order; models without labels get no downstream metrics.
    """
    if not generated:
        raise MarsdiffError("evaluation needs at least one generated feature set")
    reserved = sorted(set(generated) & set(REAL_MODELS))
    if reserved:
        raise MarsdiffError(f"model name(s) {reserved} are reserved for the real-vs-real baselines")
    features = {str(name): reference.check_generated(values, str(name)) for name, values in generated.items()}
    for name, x in features.items():  # before the reference-side work, so a bad k fails fast
        require_neighbours(settings.k_precision_recall, len(x), "k_precision_recall", f"generated images of {name!r}")
    prepared = PreparedReference(reference, settings)
    model_labels = {}
    for name, x in features.items():
        given = None if labels is None else labels.get(name)
        if given is not None and len(given) != len(x):
            raise MarsdiffError(f"{name}: {len(given)} conditioning labels for {len(x)} generated images")
        model_labels[name] = prepared.label_columns(given)
    labelled_columns = sorted({column for columns in model_labels.values() for column in columns})

    metric_rows, replicate_frames, coverage_frames, share_frames = [], [], [], []
    n_reference = len(reference.heldout)
    for name, x in features.items():
        log.info("evaluating %s (%d images)", name, len(x))
        counts = bootstrap_counts(len(x), settings.bootstrap_replicates, settings.seed)
        metrics, member = prepared.metrics(x, labels=model_labels[name])
        estimates = [estimate(metric, counts, settings.confidence) for metric in metrics]
        metric_rows += [_metric_row(name, e, len(x), n_reference, settings.feature_space) for e in estimates]
        replicate_frames += [_replicate_frame(name, e) for e in estimates]
        covered_point, covered_replicates = member.covered(point_counts(len(x)))[0], member.covered(counts)
        for column in settings.category_columns:
            table = coverage_by_category(
                covered_point, covered_replicates, reference.heldout_categories[column], column, settings.confidence
            )
            coverage_frames.append(table.assign(model=name))
            share_frames.append(prepared.classifiers[column].generated_shares(
                prepared.classifiers[column].predict_index(x)).assign(model=name))

    for n in sorted({len(x) for x in features.values()}):
        name = REAL_MODEL if len({len(x) for x in features.values()}) == 1 else f"{REAL_MODEL} (N={n})"
        rows, coverage = real_draw_baseline(prepared, n, name, labelled_columns)
        metric_rows += rows
        coverage_frames += coverage
    metric_rows.append(_split_half_row(prepared))

    return Evaluation(
        metrics=pd.DataFrame(metric_rows, columns=METRIC_COLUMNS),
        replicates=_concat(replicate_frames, REPLICATE_COLUMNS),
        category_coverage=_concat(coverage_frames, CATEGORY_COVERAGE_COLUMNS),
        category_shares=_concat(share_frames, CATEGORY_SHARE_COLUMNS),
        reference_summary=prepared.summary(),
    )


def evaluate_feature_set(
    generated: Any,
    heldout: Any,
    train: Any,
    heldout_categories: pd.DataFrame | None = None,
    train_categories: pd.DataFrame | None = None,
    *,
    settings: EvaluationSettings,
    model: str = "model",
) -> pd.DataFrame:
    """Metrics table (long form) of one generated set; without categories the KL rows are skipped."""
    if heldout_categories is None and train_categories is None:
        settings = dataclasses.replace(settings, category_columns=())
    reference = ReferenceSet.from_arrays(heldout, train, heldout_categories, train_categories)
    return evaluate_models({model: generated}, reference, settings).metrics


def _metric_row(model: str, e: MetricEstimate, n: int, m: int, feature_space: str) -> dict:
    return dict(
        model=model,
        metric=e.name,
        value=e.value,
        ci_low=e.ci_low,
        ci_high=e.ci_high,
        higher_is_better=e.higher_is_better,
        interval=e.interval_method,
        n_generated=n,
        n_reference=m,
        feature_space=feature_space,
        detail=e.detail,
    )


def _replicate_frame(model: str, e: MetricEstimate) -> pd.DataFrame:
    return pd.DataFrame(
        {"model": model, "metric": e.name, "replicate": np.arange(len(e.replicates)), "value": e.replicates}
    )


def real_draw_baseline(prepared: PreparedReference, n: int, name: str,
                       labelled_columns: Sequence[str] = ()) -> tuple[list[dict], list[pd.DataFrame]]:
    """Random draws of n train crops scored like a model: mean and middle interval over draws.

    ``labelled_columns``: the category columns some model is scored downstream on; the draws
    train the same classifier on their true categories there.
    """
    settings, reference = prepared.settings, prepared.reference
    n_train = len(reference.train)
    n_draw = min(n, n_train)
    rng = np.random.default_rng([settings.seed, n, 7])
    values: dict[str, list[float]] = {}
    directions: dict[str, bool] = {}
    covered_by_draw = []
    ones = point_counts(n_draw)
    for _ in range(settings.baseline_repeats):
        rows = np.sort(rng.choice(n_train, n_draw, replace=False))
        predictions = {c: clf.out_of_fold_train_predictions[rows] for c, clf in prepared.classifiers.items()}
        draw_labels = {c: np.asarray(reference.train_categories[c])[rows] for c in labelled_columns}
        metrics, member = prepared.metrics(reference.train[rows], predictions, memorisation=False, labels=draw_labels)
        for metric in metrics:
            value = metric.point if metric.point is not None else float(metric.statistic(ones)[0])
            values.setdefault(metric.name, []).append(value)
            directions[metric.name] = metric.higher_is_better
        covered_by_draw.append(member.covered(ones)[0])
    lo_q, hi_q = (1.0 - settings.confidence) / 2.0, (1.0 + settings.confidence) / 2.0
    note = f"{settings.baseline_repeats} random draws of {n_draw} train crops scored like a model"
    if n_draw < n:
        note += f" (only {n_train} train crops, fewer than M={n}: not comparable at equal N)"
    rows_out = []
    for metric_name, draws in values.items():
        draws_array = np.asarray(draws)
        low, high = np.quantile(draws_array, [lo_q, hi_q])
        rows_out.append(
            dict(
                model=name,
                metric=metric_name,
                value=float(draws_array.mean()),
                ci_low=float(low),
                ci_high=float(high),
                higher_is_better=directions[metric_name],
                interval=SPREAD_OVER_DRAWS,
                n_generated=n_draw,
                n_reference=len(reference.heldout),
                feature_space=settings.feature_space,
                detail=note,
            )
        )
    covered = np.asarray(covered_by_draw, dtype=np.float64)
    coverage = []
    for column in settings.category_columns:
        labels = np.asarray(reference.heldout_categories[column]).astype(str)
        per_category = []
        for category in sorted(set(labels)):
            members = labels == category
            share = covered[:, members].mean(axis=1)
            low, high = np.quantile(share, [lo_q, hi_q])
            per_category.append(
                dict(model=name, column=column, category=category, coverage=float(share.mean()),
                     ci_low=float(low), ci_high=float(high), n_heldout=int(members.sum()))
            )
        coverage.append(pd.DataFrame(per_category))
    return rows_out, coverage


def _split_half_row(prepared: PreparedReference) -> dict:
    settings = prepared.settings
    values = prepared.mmd.split_half(settings.baseline_repeats, settings.seed)
    low, high = np.quantile(values, [(1.0 - settings.confidence) / 2.0, (1.0 + settings.confidence) / 2.0])
    m = len(prepared.reference.heldout)
    return dict(
        model=SPLIT_HALF_MODEL,
        metric="MMD2_rbf",
        value=float(values.mean()),
        ci_low=float(low),
        ci_high=float(high),
        higher_is_better=False,
        interval=SPREAD_OVER_DRAWS,
        n_generated=m // 2,
        n_reference=m // 2,
        feature_space=settings.feature_space,
        detail=f"{settings.baseline_repeats} random splits of the held-out set into halves of {m // 2}",
    )


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]
