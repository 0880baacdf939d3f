"""Soft reference coverage: its value against a direct product formula, and its exact
leave-one-out credit against brute-force recomputation (1e-12), including duplicates, kernel
values of exactly 0 and exactly / nearly 1, with and without a pool of earlier images."""

import numpy as np
import pytest

from marsdiff.rewards import RewardModel, build_term
from marsdiff.rewards.coverage import Coverage, coverage_credit, reach


def direct_coverage(x, reference, sigma):
    """C(S) = (1/m) sum_j [1 - prod_i (1 - a_ij)], a = the kernel normalised over the reference."""
    d2 = ((x[:, None, :] - reference[None, :, :]) ** 2).sum(-1)
    k = np.exp(-d2 / (2 * sigma * sigma))
    a = k / k.sum(axis=1, keepdims=True)
    return float(np.mean(1.0 - np.prod(1.0 - a, axis=0)))


def brute_force(term, x):
    full = term.value(x).reward
    return np.array([full - term.value(np.delete(x, a, axis=0)).reward for a in range(len(x))])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    reference, generated = rng.normal(size=(30, 5)), rng.normal(0.3, 1.1, size=(12, 5))
    term = Coverage(reference, bandwidth=1.7, kernel_scale=0.8)
    assert term.value(generated).reward == pytest.approx(direct_coverage(generated, reference, 1.7 * 0.8), abs=1e-13)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_credit_matches_recomputation_with_duplicates(seed):
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(40, 6))
    generated = rng.normal(0.2, 0.9, size=(20, 6))
    generated[3] = generated[7]  # exact duplicate
    generated[11] = generated[7]  # and a triplicate
    term = build_term("coverage", reference, bandwidth=2.0, options={"kernel_scale": 1.0})
    closed = term.leave_one_out(generated)
    np.testing.assert_allclose(closed, brute_force(term, generated), rtol=0, atol=1e-12)
    assert (closed >= 0).all()
    # three copies share what one of them alone would cover: each earns less than a lone image
    alone = term.leave_one_out(np.delete(generated, [3, 11], axis=0))
    assert closed[7] < alone[6]


def test_one_minus_reach_does_not_cancel_near_one():
    # a row dominated by one crop: 1 - a must be the other crops' share, not 1 - 0.99999... = 0
    d2 = np.array([[0.0, 60.0, 70.0]])
    a, log_miss = reach(d2, 1.0)
    np.testing.assert_allclose(np.exp(log_miss[0, 0]), (np.exp(-30) + np.exp(-35)) / (1 + np.exp(-30) + np.exp(-35)), rtol=1e-12)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-15)


def test_credit_with_reach_of_exactly_one_zero_and_near_one():
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(25, 3))
    generated = rng.normal(size=(10, 3))
    sigma = 0.005
    generated[0] = reference[4]  # every other crop underflows: a = 1, 1 - a = 0, log -inf
    generated[1] = reference[4]  # a second image on the same crop: two zeros in one column
    generated[2] = reference[9]  # the only image on crop 9
    reference[13] = reference[12] + np.array([0.05, 0.0, 0.0])  # a close pair of crops
    generated[3] = (reference[12] + reference[13]) / 2  # half way: a = 0.5 on two crops
    # logit gap 23 between crops 12 and 13: 1 - a ~ 1e-10, near one but not one
    generated[4] = reference[12] + (0.5 - 23 * sigma**2 / 0.05**2) * (reference[13] - reference[12])
    term = Coverage(reference, bandwidth=sigma, kernel_scale=1.0)  # the kernel at sigma itself, as reach() below
    a, log_miss = reach(((generated[:, None] - reference[None]) ** 2).sum(-1), sigma)
    assert np.isneginf(log_miss[0, 4]) and np.isneginf(log_miss[1, 4]) and (a == 0).any()
    assert 0 < np.exp(log_miss[4, 12]) < 1e-9  # 1 - a
    np.testing.assert_allclose(a[3, [12, 13]], 0.5, rtol=1e-9)
    closed = term.leave_one_out(generated)
    assert np.isfinite(closed).all()
    np.testing.assert_allclose(closed, brute_force(term, generated), rtol=0, atol=1e-12)
    assert closed[0] == 0.0 and closed[1] == 0.0  # each is redundant given the other
    assert closed[2] == pytest.approx(1.0 / 25, abs=1e-12)  # alone and fully on crop 9


def test_credit_formula_counts_zero_factors_without_dividing():
    # two images, one crop: both at distance 0 -> neither is needed alone; one at 0, one far -> the
    # one on the crop earns the whole crop
    log_miss = np.array([[-np.inf], [-np.inf]])
    np.testing.assert_array_equal(coverage_credit(log_miss, np.ones((2, 1))), [0.0, 0.0])
    log_miss = np.array([[-np.inf], [np.log(0.75)]])
    np.testing.assert_allclose(coverage_credit(log_miss, np.array([[1.0], [0.25]])), [0.75, 0.0])


def test_spreading_raises_coverage_and_collapse_lowers_it():
    rng = np.random.default_rng(5)
    reference = rng.normal(size=(60, 4))
    spread = reference[rng.choice(60, 16, replace=False)] + 0.01
    collapsed = np.repeat(spread[:2], 8, axis=0)
    term = Coverage(reference, bandwidth=1.0, kernel_scale=1.0)
    assert term.value(spread).reward > term.value(collapsed).reward


@pytest.mark.parametrize("seed", [0, 1])
def test_combined_credit_with_a_pool_matches_recomputation(seed):
    """Credit with a pool P: f(S u P) - f(S u P - i) for the round's own images only."""
    rng = np.random.default_rng(seed)
    reference, generated, pool = rng.normal(size=(70, 5)), rng.normal(size=(10, 5)), rng.normal(size=(12, 5))
    pool[2] = generated[4]  # an earlier round's copy of this image: the pool must take credit away
    config = {
        "bandwidth": "median", "baseline_repeats": 5,
        "terms": {
            "mmd": {"kind": "mmd", "weight": 0.4}, "ig": {"kind": "information_gain", "weight": 0.2},
            "cov": {"kind": "coverage", "weight": 0.4},
        },
    }
    model = RewardModel(reference, config)
    credit = model.leave_one_out(generated, pool=pool)
    assert credit.combined.shape == (10,) and credit.terms["cov"].shape == (10,)
    union = np.concatenate([generated, pool])
    baseline = model.baseline(len(union))

    def total(x):
        return sum(w * (model.terms[n].value(x).reward - baseline.mean[n]) / baseline.std[n]
                   for n, w in (("mmd", 0.4), ("ig", 0.2), ("cov", 0.4)))

    assert model.score(generated, pool=pool).value == pytest.approx(total(union), abs=1e-12)
    expected = [total(union) - total(np.delete(union, a, 0)) for a in range(10)]
    np.testing.assert_allclose(credit.combined, expected, rtol=0, atol=1e-12)
    cov = model.terms["cov"]
    np.testing.assert_allclose(credit.terms["cov"], brute_force(cov, union)[:10], rtol=0, atol=1e-12)
    # the pool's copy of image 4 makes its coverage credit smaller than without the pool
    assert credit.terms["cov"][4] < model.leave_one_out(generated).terms["cov"][4]
