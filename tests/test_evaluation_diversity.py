"""Vendi score, near-duplicate pairs, mode coverage and the memorisation check on fixed data."""

import numpy as np
import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.bootstrap import bootstrap_counts
from marsdiff.evaluation.distances import pairwise_distances
from marsdiff.evaluation.diversity import near_duplicate_metric, near_duplicate_pairs, vendi_metric, weighted_vendi
from marsdiff.evaluation.fidelity import rbf_from_distances
from marsdiff.evaluation.memorisation import MemorisationReference, nearest_train_distance, weighted_median
from marsdiff.evaluation.modes import ModeReference
from marsdiff.rewards.vendi import vendi_score


def vendi_by_definition(x, sigma):
    kernel = np.exp(-pairwise_distances(x) ** 2 / (2 * sigma**2))
    eigenvalues = np.linalg.eigvalsh(kernel / len(x))
    eigenvalues = eigenvalues[eigenvalues > 1e-15]
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


def test_vendi_matches_definition_and_reward_module():
    x = np.random.default_rng(1).normal(size=(11, 3))
    metric = vendi_metric(pairwise_distances(x), 1.3)
    value = metric.statistic(np.ones((1, 11)))[0]
    assert value == pytest.approx(vendi_by_definition(x, 1.3), rel=1e-9)
    assert value == pytest.approx(vendi_score(x, bandwidth=1.3).score, rel=1e-9)


def test_vendi_limits_identical_and_orthogonal_sets():
    same = np.zeros((6, 2))
    far = np.eye(6) * 1e3
    assert weighted_vendi(rbf_from_distances(pairwise_distances(same), 1.0), np.ones(6)) == pytest.approx(1.0)
    assert weighted_vendi(rbf_from_distances(pairwise_distances(far), 1.0), np.ones(6)) == pytest.approx(6.0)


def test_weighted_vendi_equals_vendi_of_the_resample_with_repeats():
    x = np.random.default_rng(2).normal(size=(8, 3))
    counts = np.array([3, 0, 1, 2, 0, 1, 1, 0], dtype=float)
    kernel = rbf_from_distances(pairwise_distances(x), 1.1)
    resample = np.repeat(x, counts.astype(int), axis=0)
    assert weighted_vendi(kernel, counts) == pytest.approx(vendi_by_definition(resample, 1.1), rel=1e-9)


def test_near_duplicate_pairs_match_a_pair_loop_including_exact_duplicates():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(6, 2)), np.zeros((3, 2))])  # three identical rows: 3 pairs
    threshold = 0.4
    expected = sum(np.linalg.norm(x[i] - x[j]) <= threshold for i in range(9) for j in range(i + 1, 9))
    assert near_duplicate_pairs(pairwise_distances(x), threshold) == expected >= 3
    metric = near_duplicate_metric(pairwise_distances(x), threshold, 0.25)
    assert metric.statistic(np.ones((1, 9)))[0] == pytest.approx(expected)


def test_copies_made_by_resampling_are_not_near_duplicate_pairs():
    x = np.arange(5, dtype=float)[:, None] * 10.0  # far apart: no close pairs at all
    metric = near_duplicate_metric(pairwise_distances(x), 1.0, 0.25)
    assert metric.statistic(np.array([[5.0, 0, 0, 0, 0], [2, 3, 0, 0, 0]]))[1] == 0.0
    assert np.isnan(metric.statistic(np.array([[5.0, 0, 0, 0, 0]]))[0])  # one distinct image: no pairs


def clustered(rng, centres, per_cluster, spread=0.05):
    return np.concatenate([c + spread * rng.normal(size=(per_cluster, len(c))) for c in centres])


def test_mode_coverage_counts_clusters_that_receive_images():
    rng = np.random.default_rng(4)
    centres = np.eye(5) * 10.0
    modes = ModeReference(clustered(rng, centres, 8), n_modes=5, seed=0)
    assert modes.modes_covered(clustered(rng, centres, 3)) == 5
    assert modes.modes_covered(clustered(rng, centres[:2], 6)) == 2
    metric = modes.metric(clustered(rng, centres[:2], 6))
    assert metric.statistic(np.ones((1, 12)))[0] == 2.0
    # real-vs-real: a fresh draw of the same distribution reaches every mode
    assert modes.modes_covered(clustered(rng, centres, 4)) == 5


def test_mode_count_larger_than_the_heldout_set_is_an_error():
    with pytest.raises(MarsdiffError, match=r"n_modes = 9 must be at most the number of held-out images \(4\)"):
        ModeReference(np.random.default_rng(0).normal(size=(4, 2)), n_modes=9, seed=0)


def test_weighted_median_matches_median_of_expanded_sample():
    rng = np.random.default_rng(5)
    values = rng.normal(size=7)
    counts = rng.multinomial(7, np.full(7, 1 / 7), size=20).astype(float)
    expected = [np.median(np.repeat(values, c.astype(int))) for c in counts]
    assert weighted_median(values, counts) == pytest.approx(expected)
    assert weighted_median(np.array([1.0, 5.0, 5.0, 2.0]), np.ones((1, 4)))[0] == pytest.approx(3.5)


def test_memorisation_flags_copies_of_train_and_passes_fresh_samples():
    rng = np.random.default_rng(6)
    train, heldout = rng.normal(size=(80, 4)), rng.normal(size=(30, 4))
    check = MemorisationReference(heldout, train)
    brute_heldout = np.median([min(np.linalg.norm(h - t) for t in train) for h in heldout])
    assert check.heldout_median == pytest.approx(brute_heldout)
    copies = train[:20].copy()
    assert check.ratio(copies) == 0.0
    fresh = rng.normal(size=(30, 4))
    assert check.ratio(fresh) == pytest.approx(1.0, abs=0.3)
    ratio, passed = check.metrics(copies, min_ratio=0.8, seed=0)
    ones = np.ones((1, 20))
    assert passed.statistic(ones)[0] == 0.0 and ratio.statistic(ones)[0] == 0.0
    assert "20 generated closer to train than any held-out crop" in ratio.detail


def test_memorisation_interval_resamples_the_heldout_crops_too():
    rng = np.random.default_rng(9)
    train, heldout, fresh = rng.normal(size=(80, 4)), rng.normal(size=(30, 4)), rng.normal(size=(25, 4))
    check = MemorisationReference(heldout, train)
    ratio, passed = check.metrics(fresh, min_ratio=0.8, seed=3)
    assert ratio.point == pytest.approx(check.ratio(fresh)) and passed.point == float(check.ratio(fresh) >= 0.8)
    # The generated sample held fixed (every count 1): the replicates still vary, by exactly the
    # held-out medians' resampling, the same for every model at one seed.
    fixed = np.ones((200, 25))
    replicates = ratio.statistic(fixed)
    generated_median = np.median(nearest_train_distance(fresh, train))
    np.testing.assert_allclose(replicates, generated_median / check.heldout_medians(200, 3))
    assert replicates.std() > 0.01
    np.testing.assert_array_equal(MemorisationReference(heldout, train).metrics(fresh, 0.8, 3)[0].statistic(fixed), replicates)
    assert not np.array_equal(MemorisationReference(heldout, train).metrics(fresh, 0.8, 4)[0].statistic(fixed), replicates)
    # Resampling both sides gives a wider interval than resampling the generated side alone.
    both = ratio.statistic(bootstrap_counts(25, 400, 1))
    generated_only = weighted_median(nearest_train_distance(fresh, train), bootstrap_counts(25, 400, 1)) / check.heldout_median
    assert both.std() > generated_only.std()


def test_memorisation_refuses_splits_that_share_images():
    train = np.random.default_rng(7).normal(size=(10, 3))
    with pytest.raises(MarsdiffError, match="share images"):
        MemorisationReference(train[:6], train)
