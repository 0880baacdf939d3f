"""Category classifier, KL of category histograms and per-category coverage."""

import numpy as np
import pandas as pd
import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.categories import CategoryClassifier, coverage_by_category, kl_divergence


def test_kl_of_identical_histograms_is_zero():
    assert kl_divergence(np.array([5, 0, 3]), np.array([5, 0, 3]), 0.5) == pytest.approx(0.0, abs=1e-15)
    assert kl_divergence(np.array([10, 0, 6]), np.array([5, 0, 3]), 0.0) == pytest.approx(0.0, abs=1e-15)


def test_kl_matches_the_formula_with_pseudocounts():
    p_counts, q_counts, alpha = np.array([6.0, 3.0, 1.0]), np.array([0.0, 2.0, 8.0]), 0.5
    p = (p_counts + alpha) / (p_counts + alpha).sum()
    q = (q_counts + alpha) / (q_counts + alpha).sum()
    expected = sum(pi * np.log(pi / qi) for pi, qi in zip(p, q))
    assert kl_divergence(p_counts, q_counts, alpha) == pytest.approx(expected)
    # an empty generated bin without smoothing is infinitely surprising; with it, finite
    assert np.isinf(kl_divergence(p_counts, q_counts, 0.0))
    # broadcasting over replicate rows
    rows = kl_divergence(p_counts[None, :], np.stack([q_counts, p_counts]), alpha)
    assert rows == pytest.approx([expected, 0.0])


def separable(rng, n_per_class, labels=("small", "medium", "large")):
    centres = {label: 6.0 * np.eye(3)[i] for i, label in enumerate(labels)}
    names = np.repeat(np.array(labels), n_per_class)
    features = np.stack([centres[name] for name in names]) + 0.5 * rng.normal(size=(len(names), 3))
    return features, pd.Series(names)


def test_classifier_is_fitted_on_train_and_scored_on_heldout():
    rng = np.random.default_rng(0)
    train, train_labels = separable(rng, 20)
    heldout, heldout_labels = separable(rng, 6)
    classifier = CategoryClassifier("size_cat", train, train_labels, heldout, heldout_labels, c=1.0, seed=0)
    assert classifier.accuracy.accuracy == 1.0
    assert classifier.accuracy.chance == pytest.approx(1 / 3)
    assert classifier.accuracy.ci_low <= classifier.accuracy.accuracy <= classifier.accuracy.ci_high
    # generated images with the held-out category mix: KL 0; all of one category: large KL
    same_mix = classifier.kl_metric(classifier.predict_index(heldout), 0.5)
    one_kind = classifier.kl_metric(classifier.predict_index(heldout[:6]), 0.5)
    assert same_mix.statistic(np.ones((1, 18)))[0] == pytest.approx(0.0, abs=1e-12)
    assert one_kind.statistic(np.ones((1, 6)))[0] > 0.5
    assert "accuracy 1.00" in same_mix.detail and "chance 0.33" in same_mix.detail
    assert len(classifier.out_of_fold_train_predictions) == len(train)


def test_single_category_in_train_is_an_error():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 2))
    with pytest.raises(MarsdiffError, match="single value"):
        CategoryClassifier("lighting_cat", x, ["dark"] * 8, x, ["dark"] * 8, c=1.0, seed=0)


def test_coverage_by_category_splits_the_covered_heldout_crops():
    labels = pd.Series(["a", "a", "b", "b", "b"])
    point = np.array([True, False, True, True, False])
    replicates = np.array([[True, False, True, False, False]] * 10)
    table = coverage_by_category(point, replicates, labels, "size_cat", 0.95).set_index("category")
    assert table.loc["a", "coverage"] == 0.5 and table.loc["b", "coverage"] == pytest.approx(2 / 3)
    assert list(table["n_heldout"]) == [2, 3]
    assert (table["ci_low"] <= table["coverage"]).all() and (table["coverage"] <= table["ci_high"]).all()
