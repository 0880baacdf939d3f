"""Degenerate inputs give a one-line MarsdiffError naming the problem, never a silent value."""

import numpy as np
import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.rewards import (
    RewardModel,
    build_term,
    frechet_distance,
    information_gain,
    mmd2,
    vendi_score,
)
from marsdiff.rewards.kernels import median_heuristic

RNG = np.random.default_rng(0)
REFERENCE = RNG.normal(size=(20, 3))
GENERATED = RNG.normal(size=(6, 3))


def single_line(err):
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: mmd2(x, REFERENCE, "median", "unbiased", 1.0),
        lambda x: information_gain(x, bandwidth=1.0, noise_var=0.1),
        lambda x: frechet_distance(x, REFERENCE),
        lambda x: vendi_score(x, bandwidth=1.0),
    ],
)
def test_fewer_than_two_images(call):
    with pytest.raises(MarsdiffError) as err:
        call(GENERATED[:1])
    assert "at least 2" in single_line(err)


@pytest.mark.parametrize("kind", ["mmd", "information_gain", "frechet", "vendi"])
def test_leave_one_out_needs_three_images(kind):
    term = build_term(kind, REFERENCE, 1.0)
    with pytest.raises(MarsdiffError, match="at least 3"):
        term.leave_one_out(GENERATED[:2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(bad):
    x = GENERATED.copy()
    x[2, 1] = bad
    with pytest.raises(MarsdiffError) as err:
        mmd2(x, REFERENCE, "median", "unbiased", 1.0)
    assert "NaN or inf" in single_line(err) and "row 2" in str(err.value)
    with pytest.raises(MarsdiffError, match="reference features contains NaN"):
        frechet_distance(GENERATED, np.where(np.arange(3) == 0, bad, REFERENCE))


def test_dimension_mismatch():
    for call in (lambda x, y: mmd2(x, y, "median", "unbiased", 1.0), frechet_distance, lambda x, y: RewardModel(y).score(x)):
        with pytest.raises(MarsdiffError, match="dimension mismatch: generated features have 4"):
            call(RNG.normal(size=(6, 4)), REFERENCE)


def test_not_two_dimensional():
    with pytest.raises(MarsdiffError, match="2-D"):
        mmd2(GENERATED[0], REFERENCE, "median", "unbiased", 1.0)


@pytest.mark.parametrize("bandwidth", [0.0, -1.0, np.nan, "wide"])
def test_bad_bandwidth(bandwidth):
    with pytest.raises(MarsdiffError, match="bandwidth"):
        mmd2(GENERATED, REFERENCE, bandwidth, "unbiased", 1.0)


def test_all_identical_inputs():
    same = np.ones((10, 3))
    with pytest.raises(MarsdiffError, match="median-heuristic bandwidth is 0"):
        median_heuristic(same)
    with pytest.raises(MarsdiffError, match="median-heuristic bandwidth is 0"):
        mmd2(GENERATED, same, "median", "unbiased", 1.0)
    with pytest.raises(MarsdiffError, match="median-heuristic bandwidth is 0"):
        vendi_score(same, "median")
    with pytest.raises(MarsdiffError, match="zero spread"):
        RewardModel(same, {"bandwidth": 1.0, "baseline_repeats": 3}).score(GENERATED)
    # A collapsed *generated* set under a fixed bandwidth is a valid (worst) outcome, not an error:
    # RL must see a low reward exactly when the policy collapses.
    assert vendi_score(same, bandwidth=1.0).score == pytest.approx(1.0)
    assert mmd2(same, REFERENCE, 1.0, "unbiased", 1.0).mmd2 > mmd2(GENERATED, REFERENCE, 1.0, "unbiased", 1.0).mmd2


def test_zero_vector_cannot_be_unit_normalised():
    x = GENERATED.copy()
    x[0] = 0.0
    with pytest.raises(MarsdiffError, match="zero vector"):
        build_term("cmmd", REFERENCE, 1.0).value(x)


def test_config_errors():
    # the section is checked against the schema, which names the key
    with pytest.raises(MarsdiffError, match=r"config key reward\.terms\.x\.kind: 'fid' is not one of"):
        RewardModel(REFERENCE, {"terms": {"x": {"kind": "fid", "weight": 1}}})
    with pytest.raises(MarsdiffError, match="unknown reward kind"):
        build_term("fid", REFERENCE, 1.0)
    with pytest.raises(MarsdiffError, match="no option"):
        RewardModel(REFERENCE, {"terms": {"x": {"kind": "frechet", "weight": 1, "noise_var": 1}}})
    with pytest.raises(MarsdiffError, match="non-zero weight"):
        RewardModel(REFERENCE, {"terms": {"x": {"kind": "frechet", "weight": 0}}})
    with pytest.raises(MarsdiffError, match="noise variance"):
        information_gain(GENERATED, bandwidth=1.0, noise_var=0.0)
    with pytest.raises(MarsdiffError, match="more reference rows"):
        RewardModel(REFERENCE[:8], {"baseline_repeats": 3}).score(RNG.normal(size=(7, 3)))
