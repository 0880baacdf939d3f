"""Downstream utility: train a crater classifier on a model's images, test it on real craters.

"Train on synthetic, test on real": the number a user of synthetic data cares about. Each
generated image is labelled by what it was conditioned on (its size class; ``samples.csv``'s
``condition_name``), a small classifier is trained on the M labelled images, and it predicts the
true categories of the **held-out** real crops. The ``real`` baseline trains the same classifier
on M random real **train** crops with their true labels: what equally many real images buy.

The classifier is the nearest class centroid in standardised feature space (each dimension
divided by the training set's own standard deviation). It has no tuning knob and a closed form,
so the bootstrap can refit it on every replicate of the generated set (per-image counts as
weights, paired with every other metric by image index) at the cost of a few matrix products. A
class the model never draws has no centroid and is never predicted: its held-out crops count as
errors, which is how missing variety shows up downstream.

Two metrics per category column: ``tstr_accuracy_<column>`` (share of held-out crops classified
right) and ``tstr_balanced_accuracy_<column>`` (mean per-class recall over the classes present in
the held-out split; chance is 1 / number of classes whatever the class shares). A classifier
refitted on a bootstrap resample sees fewer distinct images and scores lower than on the sample
itself, so the interval is the replicates' spread centred on the point estimate (bias-shifted).
"""

from __future__ import annotations

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.bootstrap import BIAS_SHIFTED
from marsdiff.evaluation.metric import Metric

#: Replicates refitted at once: bounds the (chunk, held-out, classes) distance array.
CHUNK = 64
#: Floor of a standard deviation (a constant feature must not divide by zero).
MIN_STD = 1e-12


class TrainOnSynthetic:
    """The held-out test side of one category column, reused for every training set."""

    def __init__(self, column: str, heldout_features: np.ndarray, heldout_labels: np.ndarray):
        self.column = column
        self.test = np.asarray(heldout_features, dtype=np.float64)
        labels = np.asarray(heldout_labels).astype(str)
        self.classes = np.array(sorted(set(labels)))
        self.test_index = np.searchsorted(self.classes, labels)
        if len(self.test) != len(labels) or len(self.classes) < 2:
            raise MarsdiffError(f"train-on-synthetic for {column}: needs held-out crops of at least 2 categories")

    def labels_are_categories(self, labels: np.ndarray) -> bool:
        """Whether generated labels name this column's categories (a prompt is not a size class)."""
        return set(np.asarray(labels).astype(str)) <= set(self.classes)

    def scores(self, train: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy, balanced accuracy) of the classifier fitted with each row of ``counts`` as weights."""
        train = np.asarray(train, dtype=np.float64)
        onehot = (np.asarray(labels).astype(str)[:, None] == self.classes[None, :]).astype(np.float64)
        counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
        accuracy, balanced = [], []
        for lo in range(0, len(counts), CHUNK):
            acc, bal = self._chunk(train, onehot, counts[lo:lo + CHUNK])
            accuracy.append(acc)
            balanced.append(bal)
        return np.concatenate(accuracy), np.concatenate(balanced)

    def _chunk(self, train: np.ndarray, onehot: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = weights.sum(axis=1, keepdims=True)
        mean = weights @ train / total
        variance = np.maximum(weights @ train**2 / total - mean**2, 0.0)
        inverse_variance = 1.0 / np.maximum(variance, MIN_STD**2)  # (B, d)
        class_weight = weights[:, :, None] * onehot[None, :, :]  # (B, M, C)
        class_total = class_weight.sum(axis=1)  # (B, C)
        with np.errstate(invalid="ignore", divide="ignore"):
            centroids = np.einsum("bmc,md->bcd", class_weight, train) / class_total[:, :, None]
        # squared standardised distance of every held-out crop to every centroid, (B, T, C)
        test_term = np.einsum("td,bd->bt", self.test**2, inverse_variance)[:, :, None]
        cross = np.einsum("td,bcd->btc", self.test, np.nan_to_num(centroids) * inverse_variance[:, None, :])
        centroid_term = np.einsum("bcd,bd->bc", np.nan_to_num(centroids) ** 2, inverse_variance)[:, None, :]
        distances = test_term - 2.0 * cross + centroid_term
        distances[np.broadcast_to((class_total == 0)[:, None, :], distances.shape)] = np.inf
        predicted = distances.argmin(axis=2)
        right = predicted == self.test_index[None, :]
        accuracy = right.mean(axis=1)
        recalls = [right[:, self.test_index == c].mean(axis=1) for c in range(len(self.classes))]
        return accuracy, np.mean(recalls, axis=0)

    def metrics(self, train: np.ndarray, labels: np.ndarray) -> list[Metric]:
        """The two metrics of one labelled training set, as statistics of bootstrap counts."""
        cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

        def both(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            key = np.ascontiguousarray(counts).tobytes()
            if key not in cache:
                cache[key] = self.scores(train, labels, counts)
            return cache[key]

        chance = 1.0 / len(self.classes)
        detail = (f"nearest class centroid trained on these images labelled by their conditioning, tested on "
                  f"{len(self.test)} held-out crops' true {self.column}; balanced chance {chance:.2f}")
        return [
            Metric(f"tstr_accuracy_{self.column}", True, lambda c: both(c)[0], BIAS_SHIFTED, detail,
                   value_range=(0.0, 1.0)),
            Metric(f"tstr_balanced_accuracy_{self.column}", True, lambda c: both(c)[1], BIAS_SHIFTED, detail,
                   value_range=(0.0, 1.0)),
        ]
