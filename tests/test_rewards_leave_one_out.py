"""Closed-form per-image credit equals brute-force recomputation without each image (1e-9)."""

import numpy as np
import pytest

from marsdiff.rewards import RewardModel, build_term, per_image_table

KINDS = ["mmd", "cmmd", "information_gain", "conditional_information_gain", "frechet", "vendi"]


def brute_force(term, x):
    full = term.value(x).reward
    return np.array([full - term.value(np.delete(x, a, axis=0)).reward for a in range(len(x))])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_matches_recomputation(kind, seed):
    rng = np.random.default_rng(seed)
    dim = 6
    reference = rng.normal(size=(40, dim))
    generated = rng.normal(0.2, 0.9, size=(25, dim))
    generated[3] = generated[7]  # an exact duplicate must be handled too
    term = build_term(kind, reference, bandwidth=2.5)
    closed = term.leave_one_out(generated)
    assert closed.shape == (25,)
    np.testing.assert_allclose(closed, brute_force(term, generated), rtol=0, atol=1e-9)


def test_biased_mmd_leave_one_out():
    rng = np.random.default_rng(5)
    reference, generated = rng.normal(size=(30, 4)), rng.normal(size=(12, 4))
    term = build_term("mmd", reference, 1.3, {"estimator": "biased", "scale": 7.0})
    np.testing.assert_allclose(term.leave_one_out(generated), brute_force(term, generated), atol=1e-9)


def test_frechet_leave_one_out_with_singular_covariance():
    rng = np.random.default_rng(6)
    reference, generated = rng.normal(size=(15, 30)), rng.normal(size=(12, 30))  # n, m < d
    term = build_term("frechet", reference, 1.0)
    np.testing.assert_allclose(term.leave_one_out(generated), brute_force(term, generated), atol=1e-9)


def test_information_gain_credit_is_posterior_variance():
    rng = np.random.default_rng(7)
    generated = rng.normal(size=(10, 3))
    term = build_term("information_gain", rng.normal(size=(20, 3)), 1.0, {"noise_var": 0.5})
    credit = term.leave_one_out(generated)
    assert (credit > 0).all()
    generated[1] = generated[0]  # a duplicate earns less than it would alone
    assert term.leave_one_out(generated)[0] < credit[0]


def test_combined_credit_matches_recomputation():
    rng = np.random.default_rng(8)
    reference, generated = rng.normal(size=(60, 5)), rng.normal(size=(16, 5))
    config = {
        "bandwidth": "median",
        "baseline_repeats": 5,
        "terms": {
            "mmd": {"kind": "mmd", "weight": 0.7, "standardise": "zscore"},
            "ig": {"kind": "information_gain", "weight": 0.3, "standardise": "zscore"},
            "fd": {"kind": "frechet", "weight": 0.1, "standardise": "none"},
        },
    }
    model = RewardModel(reference, config)
    credit = model.leave_one_out(generated)
    full = model.score(generated)
    baseline = model.baseline(len(generated))

    def standardised_total(x):  # the affine map of the round's set size, applied to X - a too
        total = 0.0
        for name, weight in (("mmd", 0.7), ("ig", 0.3)):
            raw = model.terms[name].value(x).reward
            total += weight * (raw - baseline.mean[name]) / baseline.std[name]
        return total + 0.1 * model.terms["fd"].value(x).reward

    assert full.value == pytest.approx(standardised_total(generated), abs=1e-12)
    expected = [standardised_total(generated) - standardised_total(np.delete(generated, a, 0)) for a in range(16)]
    np.testing.assert_allclose(credit.combined, expected, atol=1e-9)
    assert full.bandwidth_source == "median" and full.bandwidth > 0


def test_per_image_table_columns_and_flags():
    rng = np.random.default_rng(9)
    reference = rng.normal(size=(50, 4))
    generated = rng.normal(size=(8, 4))
    generated[5] = generated[2] + 1e-6  # near-duplicate pair
    generated[7] = 50.0  # far from every reference image
    model = RewardModel(reference, {"baseline_repeats": 4})
    table = per_image_table(model, generated, ids=[f"g{i}" for i in range(8)])
    for column in ["id", "reward", "rank", "reward_mmd", "reward_vendi", "nn_id", "nn_distance",
                   "duplicate", "ref_nn_id", "ref_nn_distance", "novel"]:
        assert column in table.columns
    assert table.loc[2, "nn_id"] == "g5" and table.loc[5, "nn_id"] == "g2"
    assert table["duplicate"].tolist() == [False, False, True, False, False, True, False, False]
    assert table["novel"].tolist() == [False] * 7 + [True]
    assert sorted(table["rank"]) == list(range(1, 9))
    assert table.loc[table["reward"].idxmax(), "rank"] == 1
    explicit = per_image_table(model, generated, duplicate_distance=0.0, novel_distance=1e9)
    assert not explicit["duplicate"].any() and not explicit["novel"].any()
