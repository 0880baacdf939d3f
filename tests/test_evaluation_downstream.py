"""Train on synthetic, test on real: the nearest-centroid classifier against scikit-learn's, the
bootstrap refit, and the rows evaluate_models adds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from marsdiff.evaluation.bootstrap import bootstrap_counts
from marsdiff.evaluation.downstream import TrainOnSynthetic
from marsdiff.evaluation.evaluate import evaluate_models
from marsdiff.evaluation.reference import ReferenceSet
from marsdiff.config import filled_section
from marsdiff.evaluation.settings import EvaluationSettings

CLASSES = np.array(["s1_small", "s2_medium", "s3_large"])


def labelled_set(n: int, seed: int, spread: float = 1.0, classes=CLASSES):
    """Three overlapping Gaussian classes in 5 dimensions with unequal feature scales."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes, size=n)
    centres = {c: i * np.array([1.0, 0.5, 0.0, 2.0, 0.1]) for i, c in enumerate(CLASSES)}
    scale = np.array([1.0, 0.3, 5.0, 2.0, 0.05])
    features = np.stack([centres[c] for c in labels]) + spread * rng.normal(size=(n, 5)) * scale
    return features, labels


def sklearn_scores(train, labels, test, test_labels, weights):
    """The same classifier through scikit-learn, integer weights as repeated rows."""
    rows = np.repeat(np.arange(len(train)), weights.astype(int))
    model = make_pipeline(StandardScaler(), NearestCentroid()).fit(train[rows], labels[rows])
    predicted = model.predict(test)
    return accuracy_score(test_labels, predicted), balanced_accuracy_score(test_labels, predicted)


def test_every_bootstrap_replicate_matches_scikit_learn_refitted_on_it():
    train, labels = labelled_set(40, seed=0)
    test, test_labels = labelled_set(60, seed=1)
    tstr = TrainOnSynthetic("size_cat", test, test_labels)
    counts = bootstrap_counts(40, 70, seed=3)  # 70 replicates: more than one chunk
    accuracy, balanced = tstr.scores(train, labels, counts)
    for b in range(0, 70, 7):
        expected = sklearn_scores(train, labels, test, test_labels, counts[b])
        assert (accuracy[b], balanced[b]) == pytest.approx(expected, abs=1e-12), b
    assert accuracy.std() > 0, "replicates refit the classifier"


def test_a_class_the_model_never_draws_is_never_predicted_and_costs_balanced_accuracy():
    test, test_labels = labelled_set(90, seed=1, spread=0.05)
    train, labels = labelled_set(60, seed=0, spread=0.05)
    tstr = TrainOnSynthetic("size_cat", test, test_labels)
    full = tstr.scores(train, labels, np.ones((1, 60)))
    keep = labels != "s3_large"
    missing = tstr.scores(train[keep], labels[keep], np.ones((1, int(keep.sum()))))
    assert full[1][0] == pytest.approx(1.0)
    assert missing[1][0] == pytest.approx(2 / 3), "the large crops are all misclassified"
    assert missing == pytest.approx(sklearn_scores(train[keep], labels[keep], test, test_labels, np.ones(keep.sum())))


def test_labels_that_are_not_categories_give_no_downstream_metric():
    test, test_labels = labelled_set(30, seed=1)
    tstr = TrainOnSynthetic("size_cat", test, test_labels)
    assert tstr.labels_are_categories(np.array(["s1_small", "s3_large"]))
    assert not tstr.labels_are_categories(np.array(["a photo of a crater"]))


def test_evaluate_models_scores_labelled_models_and_the_real_draws_downstream():
    heldout, heldout_labels = labelled_set(30, seed=1)
    train, train_labels = labelled_set(50, seed=2)
    generated, generated_labels = labelled_set(12, seed=4)
    reference = ReferenceSet.from_arrays(
        heldout, train, pd.DataFrame({"size_cat": heldout_labels}), pd.DataFrame({"size_cat": train_labels})
    )
    settings = EvaluationSettings.from_config(filled_section("evaluation.metrics", dict(
        category_columns=["size_cat"], bootstrap_replicates=20, baseline_repeats=5, n_modes=2, k_precision_recall=3,
        k_density_coverage=3, kid_subset_size=5)), "features")
    evaluation = evaluate_models({"model": generated, "unlabelled": generated + 0.1}, reference, settings,
                                 labels={"model": generated_labels})
    table = evaluation.metrics.set_index(["model", "metric"])
    row = table.loc[("model", "tstr_balanced_accuracy_size_cat")]
    expected = sklearn_scores(generated, generated_labels, heldout, heldout_labels, np.ones(12))
    assert row["value"] == pytest.approx(expected[1]) and row["ci_low"] <= row["value"] <= row["ci_high"]
    assert bool(row["higher_is_better"])
    assert ("real", "tstr_accuracy_size_cat") in table.index, "the reference: the same classifier on real crops"
    assert not any(m.startswith("tstr_") for m in table.loc["unlabelled"].index)
    replicates = evaluation.replicates
    assert len(replicates[(replicates["model"] == "model") & (replicates["metric"] == "tstr_accuracy_size_cat")]) == 20
