"""Comparison with the best noise-knob setting, the verdict sentences, and summary.md."""

import numpy as np
import pandas as pd
import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.evaluation.report import (
    BETTER,
    UNCLEAR,
    WORSE,
    compare_to_baseline,
    experiment_verdict,
    summary_markdown,
    write_summary_markdown,
)


def row(model, metric, value, low, high, higher, interval="percentile"):
    return dict(model=model, metric=metric, value=value, ci_low=low, ci_high=high, higher_is_better=higher,
                interval=interval, n_generated=64, n_reference=100, feature_space="mobilenet_v2", detail="")


@pytest.fixture
def table():
    return pd.DataFrame(
        [
            row("eta=0", "coverage", 0.60, 0.50, 0.70, True, "bias-shifted percentile"),
            row("eta=1", "coverage", 0.70, 0.60, 0.80, True, "bias-shifted percentile"),
            row("rl", "coverage", 0.85, 0.78, 0.92, True, "bias-shifted percentile"),
            row("eta=0", "FD_mobilenet_v2", 40.0, 35.0, 45.0, False),
            row("eta=1", "FD_mobilenet_v2", 50.0, 45.0, 55.0, False),
            row("rl", "FD_mobilenet_v2", 41.0, 36.0, 46.0, False),
            row("eta=0", "precision", 0.80, 0.75, 0.85, True),
            row("eta=1", "precision", 0.70, 0.65, 0.75, True),
            row("rl", "precision", 0.60, 0.55, 0.65, True),
            row("rl", "memorisation_ratio", 0.95, 0.9, 1.0, True),
            row("eta=1", "memorisation_ratio", 1.05, 1.0, 1.1, True),
            row("rl", "memorisation_pass", 1.0, 1.0, 1.0, True),
            row("eta=1", "memorisation_pass", 1.0, 1.0, 1.0, True),
            row("real", "coverage", 0.9, 0.85, 0.95, True, "spread over draws"),
        ]
    )


def replicates_for(table, spread, seed=0):
    """Replicates: each model's value plus noise shared by all models (paired, as the bootstrap is)."""
    rng = np.random.default_rng(seed)
    frames = []
    for metric in table["metric"].unique():
        shared = rng.normal(scale=spread.get(metric, 0.01), size=200)
        for _, r in table[table["metric"] == metric].iterrows():
            own = rng.normal(scale=spread.get(metric, 0.01) / 4, size=200)
            frames.append(pd.DataFrame({"model": r["model"], "metric": metric, "replicate": range(200),
                                        "value": r["value"] + shared + own}))
    return pd.concat(frames, ignore_index=True)


def test_best_baseline_is_chosen_per_metric_in_the_metric_direction(table):
    comparison = compare_to_baseline(table, "rl", ["eta=0", "eta=1"]).set_index("metric")
    assert comparison.loc["coverage", "best_baseline"] == "eta=1"  # higher is better
    assert comparison.loc["FD_mobilenet_v2", "best_baseline"] == "eta=0"  # lower is better
    assert comparison.loc["coverage", "improvement"] == pytest.approx(0.15)
    assert comparison.loc["FD_mobilenet_v2", "improvement"] == pytest.approx(-1.0)  # positive = better
    assert comparison.loc["precision", "improvement"] == pytest.approx(-0.2)
    assert comparison.loc["coverage", "verdict"] == BETTER + " (no interval)"
    assert "real" not in set(comparison["best_baseline"])


def test_paired_replicates_give_an_interval_of_the_improvement(table):
    replicates = replicates_for(table, {"coverage": 0.05, "FD_mobilenet_v2": 5.0, "precision": 0.03})
    comparison = compare_to_baseline(table, "rl", ["eta=0", "eta=1"], replicates).set_index("metric")
    coverage = comparison.loc["coverage"]
    # paired: the shared noise cancels, so the improvement interval is narrow and excludes 0
    assert coverage["improvement_ci_low"] <= coverage["improvement"] <= coverage["improvement_ci_high"]
    assert coverage["improvement_ci_low"] > 0 and coverage["verdict"] == BETTER
    assert comparison.loc["precision", "verdict"] == WORSE
    assert comparison.loc["FD_mobilenet_v2", "verdict"] == UNCLEAR  # -1 with noise 5/4 per model
    assert comparison.loc["memorisation_ratio", "verdict"] == "check passes"  # not "worse" for 0.95 < 1.05
    # a check has no best knob setting and no improvement
    assert comparison.loc["memorisation_ratio", "best_baseline"] == ""
    assert np.isnan(comparison.loc["memorisation_ratio", "improvement"])


def test_verdict_says_what_improved_what_got_worse_and_how_sure(table):
    replicates = replicates_for(table, {"coverage": 0.05, "FD_mobilenet_v2": 5.0, "precision": 0.03})
    text = experiment_verdict(compare_to_baseline(table, "rl", ["eta=0", "eta=1"], replicates))
    assert "Variety, clearly better on coverage (+0.15" in text and "vs eta=1" in text
    assert "Realism, clearly worse on precision (-0.2" in text
    assert "No clear difference (interval includes 0, or no interval) on FD_mobilenet_v2" in text
    assert "Memorisation check passes" in text
    assert "trade-off: better on 1 metric(s) (1 of variety), worse on 1 (1 of realism)" in text


def test_a_model_that_only_matches_the_knob_is_reported_as_such(table):
    same = table[table["model"] == "eta=1"].assign(model="rl_same")
    doubled = pd.concat([table, same], ignore_index=True)
    replicates = replicates_for(doubled, {"coverage": 0.05})
    text = experiment_verdict(compare_to_baseline(doubled, "rl_same", ["eta=1"], replicates))
    assert "only matches the best knob setting" in text


def test_comparison_errors_are_one_line(table):
    with pytest.raises(MarsdiffError, match="at least one baseline"):
        compare_to_baseline(table, "rl", [])
    with pytest.raises(MarsdiffError, match=r"model\(s\) \['eta=9'\] are not in the metrics table"):
        compare_to_baseline(table, "rl", ["eta=9"])
    with pytest.raises(MarsdiffError, match="also listed among its baselines"):
        compare_to_baseline(table, "rl", ["rl", "eta=1"])


def test_summary_markdown_has_the_table_with_intervals_and_one_verdict_per_experiment(table, tmp_path):
    replicates = replicates_for(table, {"coverage": 0.05})
    reference = pd.DataFrame([dict(quantity="heldout_images", value=103.0, ci_low=np.nan, ci_high=np.nan, detail="held out")])
    path = write_summary_markdown(tmp_path / "report" / "summary.md", table, ["rl"], ["eta=0", "eta=1"], replicates, reference)
    text = path.read_text()
    assert text == summary_markdown(table, ["rl"], ["eta=0", "eta=1"], replicates, reference)
    assert "| metric | better | eta=0 | eta=1 | rl | real |" in text
    assert "| coverage | ↑ | 0.6 [0.5, 0.7] | 0.7 [0.6, 0.8] | 0.85 [0.78, 0.92] | 0.9 [0.85, 0.95] |" in text
    assert "### rl" in text and "**rl** against the best noise-knob setting" in text
    assert "| heldout_images | 103 | held out |" in text
    assert "| memorisation_ratio | check |" in text, "a check is not marked higher-is-better"
    assert "| memorisation_ratio | 0.95 [0.9, 1] | n/a (a check, not a score) | n/a | check passes |" in text
    assert text.index("## Verdict\n") < text.index("## Metrics"), "the summary leads with the verdict"
    assert "- **rl**: " in text.split("## Metrics")[0]
    assert "mobilenet_v2 feature space" in text
