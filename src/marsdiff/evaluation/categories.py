"""Category histograms of generated images: a classifier, the KL divergence, per-category coverage.

Generated images have no labels, so a **classifier** assigns each one a category (crater size
bin, lighting bin; the manifest's ``size_cat`` / ``lighting_cat``): scikit-learn
``LogisticRegression`` on standardised features, fitted on the **train** split only. Its accuracy
on the held-out split is reported beside the KL (with the chance level, the share of the most
common train category), because a KL measured through a weak classifier says little.

**KL divergence** ``KL(P || Q) = sum_c P_c log(P_c / Q_c)`` between the category histogram of the
held-out crops, P, and that of the generated images, Q. Both histograms are the *classifier's
predictions* (not P from the true labels): the classifier's errors then act on both sides alike,
and a generator that matches the real distribution gets KL about 0. The direction ``KL(real ||
generated)`` punishes categories the generator misses. Empty bins: ``kl_pseudocount`` (0.5 by
default) is added to every bin of both histograms before normalising, so a missing category
costs a large but finite amount. The plug-in KL rises with resampling noise: bias-shifted interval.

For the real-vs-real baseline, train rows need predictions from a classifier that did not see
them: :meth:`CategoryClassifier.out_of_fold_train_predictions` (5-fold cross-validation).

**Per-category coverage** (:func:`coverage_by_category`): the coverage of Naeem et al. restricted
to the held-out crops of each true category, i.e. which kinds of crater the generator reaches.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy.stats import entropy
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.bootstrap import BIAS_SHIFTED, bias_shifted_interval, bootstrap_counts, percentile_interval
from marsdiff.evaluation.metric import Metric

log = logging.getLogger(__name__)

MAX_ITERATIONS = 5000
FOLDS = 5


def kl_divergence(reference_counts: np.ndarray, generated_counts: np.ndarray, pseudocount: float) -> np.ndarray:
    """``KL(P || Q)`` of smoothed histograms; the last axis is the category, leading axes broadcast."""
    p = np.asarray(reference_counts, dtype=np.float64) + pseudocount
    q = np.asarray(generated_counts, dtype=np.float64) + pseudocount
    # scipy normalises both histograms and takes 0 log 0 = 0 (pseudocount 0) and p log(p/0) = inf
    return entropy(p, q, axis=-1)


@dataclass(frozen=True)
class ClassifierAccuracy:
    column: str
    accuracy: float
    ci_low: float
    ci_high: float
    chance: float
    n_heldout: int
    n_classes: int


class CategoryClassifier:
    """Logistic regression on standardised features predicting one category column."""

    def __init__(
        self,
        column: str,
        train_features: np.ndarray,
        train_labels: pd.Series | np.ndarray,
        heldout_features: np.ndarray,
        heldout_labels: pd.Series | np.ndarray,
        c: float,
        seed: int,
    ):
        self.column = column
        self.seed = seed
        self.c = c
        self._train_features = train_features
        self._train_labels = np.asarray(train_labels).astype(str)
        labels, counts = np.unique(self._train_labels, return_counts=True)
        if len(labels) < 2:
            raise MarsdiffError(
                f"category column {column!r} has a single value ({labels[0] if len(labels) else 'none'}) "
                "in the train split: nothing to classify"
            )
        self.pipeline = self._new_pipeline().fit_quiet(train_features, self._train_labels)
        self.classes = np.asarray(self.pipeline.classes_).astype(str)
        self.chance = float(counts.max() / counts.sum())
        heldout_labels = np.asarray(heldout_labels).astype(str)
        self.heldout_predictions = self.predict_index(heldout_features)
        correct = (self.classes[self.heldout_predictions] == heldout_labels).astype(np.float64)
        replicates = bootstrap_counts(len(correct), 1000, seed) @ correct / len(correct)
        bounds = percentile_interval(replicates, 0.95)
        self.accuracy = ClassifierAccuracy(
            column, float(correct.mean()), bounds.low, bounds.high, self.chance, len(correct), len(self.classes)
        )
        self.reference_histogram = self.histogram(self.heldout_predictions)

    def _new_pipeline(self) -> "_QuietPipeline":
        return _QuietPipeline(make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=MAX_ITERATIONS)))

    def predict_index(self, features: np.ndarray) -> np.ndarray:
        """Index into :attr:`classes` of the predicted category of each row."""
        predicted = np.asarray(self.pipeline.predict(features)).astype(str)
        return np.searchsorted(self.classes, predicted)

    def histogram(self, predictions: np.ndarray) -> np.ndarray:
        return np.bincount(predictions, minlength=len(self.classes)).astype(np.float64)

    @cached_property
    def out_of_fold_train_predictions(self) -> np.ndarray:
        """Predicted class index of every train row by a model fitted on the other folds."""
        _, counts = np.unique(self._train_labels, return_counts=True)
        folds = min(FOLDS, int(counts.min()))
        if folds >= 2:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
        else:  # a category with a single train row cannot be stratified
            splitter = KFold(FOLDS, shuffle=True, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            predicted = cross_val_predict(
                self._new_pipeline().pipeline, self._train_features, self._train_labels, cv=splitter
            )
        return np.searchsorted(self.classes, np.asarray(predicted).astype(str))

    def kl_metric(self, predictions: np.ndarray, pseudocount: float) -> Metric:
        """KL(held-out || generated) as a function of counts on the generated images."""
        one_hot = np.eye(len(self.classes))[predictions]
        reference = self.reference_histogram

        def kl(counts: np.ndarray) -> np.ndarray:
            return kl_divergence(reference[None, :], counts @ one_hot, pseudocount)

        acc = self.accuracy
        return Metric(
            f"KL_{self.column}",
            higher_is_better=False,
            statistic=kl,
            interval_method=BIAS_SHIFTED,
            detail=(
                f"KL(held-out || generated) of predicted {self.column} over {len(self.classes)} bins, "
                f"+{pseudocount:g} per bin; classifier held-out accuracy {acc.accuracy:.2f} "
                f"[{acc.ci_low:.2f}, {acc.ci_high:.2f}] (chance {acc.chance:.2f})"
            ),
            value_range=(0.0, np.inf),
        )

    def generated_shares(self, predictions: np.ndarray) -> pd.DataFrame:
        """Share of images predicted in each category, beside the held-out predicted share."""
        generated = self.histogram(predictions)
        return pd.DataFrame(
            {
                "column": self.column,
                "category": self.classes,
                "generated_share": generated / generated.sum(),
                "heldout_share": self.reference_histogram / self.reference_histogram.sum(),
            }
        )


class _QuietPipeline:
    """A scikit-learn pipeline whose fit logs (instead of printing) convergence warnings."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    def fit_quiet(self, features: np.ndarray, labels: np.ndarray) -> Pipeline:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self.pipeline.fit(features, labels)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.info("category classifier: logistic regression stopped at %d iterations", MAX_ITERATIONS)
        return self.pipeline


def coverage_by_category(
    point: np.ndarray, replicates: np.ndarray, heldout_labels: pd.Series | np.ndarray, column: str, confidence: float
) -> pd.DataFrame:
    """Coverage per true held-out category, one row per category.

    ``point``: (m,) booleans, held-out ball i holds a generated image of the sample itself;
    ``replicates``: (B, m) the same per bootstrap replicate. Bias-shifted interval, clipped to
    [0, 1] (see :mod:`.manifold`).
    """
    labels = np.asarray(heldout_labels).astype(str)
    rows = []
    for category in sorted(set(labels)):
        members = labels == category
        value = float(point[members].mean())
        bounds = bias_shifted_interval(value, replicates[:, members].mean(axis=1), confidence)
        rows.append(
            {
                "column": column,
                "category": category,
                "coverage": value,
                "ci_low": max(0.0, bounds.low),
                "ci_high": min(1.0, bounds.high),
                "n_heldout": int(members.sum()),
            }
        )
    return pd.DataFrame(rows)
