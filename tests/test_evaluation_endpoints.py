"""Declared endpoints (marsdiff.evaluation.endpoints): Holm's adjustment, paired bootstrap
p-values and intervals, the orientation of lower-is-better metrics, the roles, and the rule that
decides whether a policy beats the frozen knob."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.endpoints import (
    COMPARISON_COLUMNS, beats, comparison_table, holm, paired_difference, verdict_line,
)

ENDPOINTS = {"primary": ["recall", "coverage"], "non_inferiority": {"precision": 0.03}, "alpha": 0.05}


def test_holm_matches_the_step_down_by_hand():
    # sorted 0.01, 0.02, 0.04, 0.30 -> x4, x3, x2, x1 with a running maximum
    assert holm([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8]), "monotone: never below an earlier step"
    assert holm([0.9, 0.9, 0.9]) == [1.0, 1.0, 1.0]
    assert np.isnan(holm([float("nan"), 0.01])[0]) and holm([float("nan"), 0.01])[1] == pytest.approx(0.01)


def test_paired_difference_p_value_and_interval():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=500)
    # a shift of 0.5 on top of a shared (paired) noise: the pairing removes the shared part
    low, high, p = paired_difference(shared + 0.5 + rng.normal(scale=0.05, size=500), shared, 0.5, "percentile", 0.05)
    assert 0.4 < low < 0.5 < high < 0.6 and p == pytest.approx(2 / 501)
    low, high, p = paired_difference(shared + rng.normal(scale=0.05, size=500), shared, 0.0, "percentile", 0.05)
    assert low < 0 < high and p > 0.2
    assert np.isnan(paired_difference(shared[:5], shared[:5], 0.0, "percentile", 0.05)[2]), "too few replicates"


def test_bias_shifted_differences_are_recentred_on_the_observed_difference():
    replicates = np.full(200, -0.1) + np.linspace(-0.01, 0.01, 200)  # resampling bias pulls them below 0
    low, high, p = paired_difference(replicates, np.zeros(200), 0.05, "bias-shifted percentile", 0.05)
    assert 0.035 < low < 0.05 < high < 0.065 and p < 0.05
    low, high, p = paired_difference(replicates, np.zeros(200), 0.05, "percentile", 0.05)
    assert high < 0, "the plain percentile rule keeps the bias"


def tables(effects: dict[str, dict[str, float]], replicates: int = 500, seed: int = 0):
    """metrics.csv and bootstrap.csv of models with per-metric true values; replicates share noise."""
    rng = np.random.default_rng(seed)
    directions = {"recall": True, "coverage": True, "precision": True, "FD_x": False, "memorisation_pass": True}
    noise = {m: rng.normal(scale=0.01, size=replicates) for m in directions}
    metrics, reps = [], []
    for model, values in effects.items():
        for metric, value in values.items():
            method = "bias-shifted percentile" if metric in ("recall", "coverage") else "percentile"
            metrics.append(dict(model=model, metric=metric, value=value, ci_low=value - 0.02, ci_high=value + 0.02,
                                higher_is_better=directions[metric], interval=method))
            own = value + noise[metric] + rng.normal(scale=0.002, size=replicates)
            reps += [dict(model=model, metric=metric, replicate=b, value=v) for b, v in enumerate(own)]
    return pd.DataFrame(metrics), pd.DataFrame(reps)


BASELINE = {"recall": 0.50, "coverage": 0.80, "precision": 0.90, "FD_x": 4.0, "memorisation_pass": 1.0}


def test_comparisons_contract_roles_orientation_and_the_rule():
    metrics, reps = tables({
        "base": BASELINE,
        "frozen_knob": dict(BASELINE, recall=0.52),
        "good": dict(BASELINE, recall=0.60, FD_x=3.5),             # better recall, lower (better) FD
        "sloppy": dict(BASELINE, recall=0.60, precision=0.80),      # better recall, precision lost
        "same": dict(BASELINE, recall=0.52),
    })
    table = comparison_table({0: (metrics, reps), 1: (metrics, reps)}, ["good", "sloppy", "same"],
                             ["good", "sloppy", "same"], ENDPOINTS)
    assert list(table.columns) == COMPARISON_COLUMNS
    assert set(table["baseline"]) == {"frozen_knob", "base"} and set(table["stream"]) == {0, 1}
    assert "memorisation_pass" not in set(table["metric"]), "a check is not compared"
    # one row per (stream, model, baseline, metric): 3 policies x 2 baselines + frozen_knob vs base
    assert len(table) == 2 * (3 * 2 + 1) * 4
    assert not table.duplicated(["stream", "model", "baseline", "metric"]).any()
    row = table.set_index(["stream", "model", "baseline", "metric"])
    assert row.loc[(0, "good", "frozen_knob", "FD_x"), "difference"] == pytest.approx(0.5), "lower-is-better: baseline - model"
    assert row.loc[(0, "good", "frozen_knob", "recall"), "difference"] == pytest.approx(0.08)
    assert row.loc[(0, "good", "frozen_knob", "recall"), "role"] == "primary"
    assert row.loc[(0, "good", "frozen_knob", "precision"), "role"] == "non_inferiority"
    assert row.loc[(0, "good", "frozen_knob", "FD_x"), "role"] == "descriptive"
    assert np.isnan(row.loc[(0, "good", "frozen_knob", "FD_x"), "p_holm"])
    assert np.isnan(row.loc[(0, "frozen_knob", "base", "recall"), "p_holm"]), "the frozen knob is outside the family"
    # Holm within (stream, baseline): 2 endpoints x 3 policies = 6 p-values
    family = table[(table["stream"] == 0) & (table["baseline"] == "frozen_knob") & (table["role"] == "primary")]
    assert len(family) == 6 and family["p_holm"].tolist() == pytest.approx(holm(family["p_value"].tolist()))
    for stream in (0, 1):
        part = table[(table["stream"] == stream) & (table["baseline"] == "frozen_knob")]
        assert beats(part[part["model"] == "good"])
        assert not beats(part[part["model"] == "sloppy"]), "precision is not non-inferior"
        assert not beats(part[part["model"] == "same"]), "no primary endpoint better"
        assert "not shown non-inferior" in verdict_line(part[part["model"] == "sloppy"], "frozen_knob", 0.05)
        assert verdict_line(part[part["model"] == "good"], "frozen_knob", 0.05).startswith("**beats frozen_knob**")


def test_a_worse_primary_endpoint_blocks_the_verdict():
    metrics, reps = tables({
        "base": BASELINE, "frozen_knob": BASELINE,
        "mixed": dict(BASELINE, recall=0.60, coverage=0.70),
    })
    table = comparison_table({0: (metrics, reps)}, ["mixed"], ["mixed"], ENDPOINTS)
    part = table[(table["model"] == "mixed") & (table["baseline"] == "frozen_knob")].set_index("metric")
    assert part.loc["recall", "verdict"] == "better" and part.loc["coverage", "verdict"] == "worse"
    assert not beats(part.reset_index())


def test_an_endpoint_the_evaluation_does_not_compute_is_refused():
    metrics, reps = tables({"base": BASELINE, "frozen_knob": BASELINE, "p": BASELINE})
    with pytest.raises(MarsdiffError, match="evaluation.endpoints: 'vendi' is not a metric"):
        comparison_table({0: (metrics, reps)}, ["p"], ["p"], dict(ENDPOINTS, primary=["vendi"]))
