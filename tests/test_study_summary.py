"""The study summary (marsdiff.study.summary) on small hand-made comparisons whose answer is
known: a planted win, a planted null, Holm's order, non-inferiority, the A/A check, the arm
against its shuffled control, the reward trend and the markdown's verdict lines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from marsdiff.config import load_config
from marsdiff.errors import MarsdiffError
from marsdiff.study.pairing import study_settings
from marsdiff.study.summary import (
    SEED_INTERVAL_CONFIDENCE,
    StudySettings,
    holm,
    seed_interval,
    summarise,
    summary_markdown,
    write_study_summary,
)

SEEDS = (0, 1, 2)
#: The default config's declared endpoints (alpha 0.05, precision margin 0.03), as the stage gets them.
_PARAMS = study_settings(load_config())
SETTINGS = StudySettings.declared(_PARAMS["alpha"], _PARAMS["margins"])


def test_the_declared_settings_are_the_evaluations_endpoints():
    assert (SETTINGS.alpha, dict(SETTINGS.margins), SETTINGS.confidence) == (0.05, {"precision": 0.03}, 0.95)
    other = study_settings(load_config(overrides={"evaluation": {"endpoints": {
        "alpha": 0.01, "non_inferiority": {"precision": 0.05}}}}))
    assert (other["alpha"], other["margins"]) == (0.01, {"precision": 0.05})


def design():
    out = {}
    for arm, control, mode in (("win", "none", "lora_unet"), ("null", "none", "scheduler_policy"),
                               ("shuffled", "shuffled_credit", "lora_unet"), ("aa", "zero_lr", "lora_unet")):
        for s in SEEDS:
            name = arm if s == 0 else f"{arm}_s{s}"
            out[name] = {"arm": arm, "seed": s, "control": control, "mode": mode, "algorithm": "ppo"}
    return out


def comparisons(differences):
    """differences: (model, baseline, metric) -> [difference per stream]; role from the metric."""
    role = {"recall": "primary", "coverage": "primary", "precision": "non_inferiority"}
    rows = []
    for (model, baseline, metric), values in differences.items():
        for stream, d in enumerate(values):
            rows.append({"stream": stream, "model": model, "baseline": baseline, "metric": metric,
                         "role": role.get(metric, "descriptive"), "value": 0.5 + d, "baseline_value": 0.5,
                         "difference": d, "low": d - 0.05, "high": d + 0.05, "p_value": 0.5, "p_holm": 1.0,
                         "verdict": ""})
    return pd.DataFrame(rows)


def planted(win=(0.10, 0.12, 0.11), null=(0.02, -0.03, 0.01), precision=(-0.005, 0.0, 0.004)):
    diffs = {}
    for name, row in design().items():
        s = row["seed"]
        arm_value = {"win": win[s], "null": null[s], "shuffled": 0.01 * (s - 1), "aa": 0.0}[row["arm"]]
        for metric in ("recall", "coverage"):
            # two streams around the seed's value: their mean is the planted value
            diffs[(name, "frozen_knob", metric)] = [arm_value - 0.01, arm_value + 0.01]
        diffs[(name, "frozen_knob", "precision")] = [precision[s], precision[s]]
        diffs[(name, "frozen_knob", "fd")] = [5.0, -5.0]
        if row["arm"] == "aa":
            for metric in ("recall", "coverage", "precision", "fd"):
                diffs[(name, "base", metric)] = [0.0, 0.0]
    return comparisons(diffs)


def metrics_tables():
    out = {}
    for name, row in design().items():
        rounds = np.arange(4)
        reward = -10 + (1.0 if row["arm"] == "win" else 0.0) * rounds + 0.1 * row["seed"]
        table = pd.DataFrame({"round": rounds, "set_reward": reward, "kl_post_update": 1e-6 * (1 + rounds)})
        if row["control"] != "zero_lr":
            table["paired_base"] = f"aa_s{row['seed']}" if row["seed"] else "aa"
            table["paired_improvement"] = reward + 10
        if row["arm"] == "null":
            table["plan/eta"] = 1.0 - 0.1 * rounds
        out[name] = table
    return out


def section(summary, name, arm=None, metric=None):
    part = summary[summary["section"] == name]
    if arm is not None:
        part = part[part["arm"] == arm]
    if metric is not None:
        part = part[part["metric"] == metric]
    return part


def test_holm_adjusts_in_step_down_order_and_keeps_the_given_order():
    p = [0.04, 0.01, 0.03, np.nan, 0.02]
    # sorted: 0.01*4, 0.02*3, 0.03*2, 0.04*1 -> 0.04, 0.06, 0.06 (monotone), 0.06
    assert holm(p)[[1, 4, 2, 0]] == pytest.approx([0.04, 0.06, 0.06, 0.06])
    assert np.isnan(holm(p)[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_seed_interval_is_a_t_interval_and_a_one_sample_t_test():
    x = [0.10, 0.12, 0.11]
    out = seed_interval(x, SEED_INTERVAL_CONFIDENCE)
    half = stats.t.ppf(0.975, 2) * np.std(x, ddof=1) / np.sqrt(3)
    assert (out["low"], out["high"]) == pytest.approx((0.11 - half, 0.11 + half))
    assert out["p_value"] == pytest.approx(stats.ttest_1samp(x, 0).pvalue)
    assert seed_interval([0.0, 0.0, 0.0], 0.95)["p_value"] == 1.0 and seed_interval([0.2, 0.2], 0.95)["p_value"] == 0.0
    assert np.isnan(seed_interval([0.3], 0.95)["p_value"])


def test_a_planted_win_beats_the_frozen_knob_and_a_planted_null_does_not():
    summary, seeds = summarise(planted(), design(), metrics_tables(), SETTINGS)
    win = section(summary, "primary", "win")
    assert set(win["verdict"]) == {"better"}
    assert win["mean"].tolist() == pytest.approx([0.11, 0.11])
    null = section(summary, "primary", "null")
    assert set(null["verdict"]) == {"no difference"}
    verdicts = section(summary, "verdict").set_index("arm")
    assert verdicts.loc["win", "verdict"] == "beats" and verdicts.loc["null", "verdict"] == "does not beat"
    assert verdicts.loc["win", "detail"].startswith("win beats the frozen knob on the primary endpoints")
    # controls are not arms of the verdict
    assert set(verdicts.index) == {"win", "null"}
    # the per-seed values are the stream means; the bootstrap intervals stand beside them
    row = seeds[(seeds["experiment"] == "win_s1") & (seeds["metric"] == "recall")].iloc[0]
    assert row["difference"] == pytest.approx(0.12) and row["streams"] == 2
    assert "stream 0: [0.06, 0.16]" in row["bootstrap"] and row["bootstrap_excluding_zero"] == 2


def test_holm_runs_over_arms_times_primary_endpoints():
    summary, _ = summarise(planted(), design(), metrics_tables(), SETTINGS)
    primary = section(summary, "primary")
    assert len(primary) == 4  # 2 arms x 2 endpoints; the controls are outside the family
    assert primary["p_holm"].to_numpy() == pytest.approx(holm(primary["p_value"].to_numpy()))
    assert (primary["p_holm"] >= primary["p_value"]).all()


def test_a_significant_loss_or_failed_non_inferiority_stops_a_win():
    worse = planted(null=(-0.10, -0.12, -0.11))
    summary, _ = summarise(worse, design(), metrics_tables(), SETTINGS)
    assert set(section(summary, "primary", "null")["verdict"]) == {"worse"}
    lost_precision = planted(precision=(-0.05, -0.06, -0.04))
    summary, _ = summarise(lost_precision, design(), metrics_tables(), SETTINGS)
    assert section(summary, "non_inferiority", "win")["verdict"].tolist() == ["not shown non-inferior"]
    assert section(summary, "verdict", "win")["verdict"].tolist() == ["does not beat"]
    # within the margin: non-inferior
    summary, _ = summarise(planted(), design(), metrics_tables(), SETTINGS)
    assert section(summary, "non_inferiority", "win")["verdict"].tolist() == ["non-inferior"]


def test_controls_aa_against_base_arm_against_shuffled_and_trends():
    summary, _ = summarise(planted(), design(), metrics_tables(), SETTINGS)
    aa = section(summary, "aa_vs_base", "aa")
    assert set(aa.loc[aa["metric"] != "all metrics", "verdict"]) == {"no difference"}
    assert aa.loc[aa["metric"] == "all metrics", "verdict"].tolist() == ["identical"]
    versus = section(summary, "arm_vs_shuffled")
    # only the arm of the shuffled control's mode and algorithm is compared with it
    assert set(versus["arm"]) == {"win"} and len(versus) == 2
    assert versus["mean"].tolist() == pytest.approx([0.11, 0.11])  # shuffled's seed values average 0
    trend = section(summary, "reward_trend", metric="set_reward per round").set_index("arm")
    assert trend.loc["win", "mean"] == pytest.approx(1.0) and trend.loc["aa", "mean"] == pytest.approx(0.0)
    last = section(summary, "reward_trend", "win", "paired improvement, last round")
    assert last["mean"].tolist() == pytest.approx([3.0 + 0.1])
    movement = section(summary, "movement", "null").set_index("metric")
    assert movement.loc["plan/eta", "mean"] == pytest.approx(0.7)
    assert movement.loc["kl_post_update", "mean"] == pytest.approx(4e-6)


def test_an_aa_arm_that_differs_from_the_base_fails_the_pipeline_check():
    table = planted()
    broken = (table["baseline"] == "base") & (table["metric"] == "recall")
    table.loc[broken, "difference"] = 0.05 + 0.001 * table.loc[broken].index.to_numpy() % 3
    summary, _ = summarise(table, design(), metrics_tables(), SETTINGS)
    recall = section(summary, "aa_vs_base", "aa", "recall")
    assert recall["verdict"].tolist() == ["differs: check the pipeline"]


def test_an_arm_with_one_seed_is_reported_without_a_test():
    d = design()
    d["trpo"] = {"arm": "trpo", "seed": 0, "control": "none", "mode": "lora_unet", "algorithm": "trpo"}
    table = pd.concat([planted(), comparisons({("trpo", "frozen_knob", m): [0.3, 0.3]
                                              for m in ("recall", "coverage", "precision")})])
    summary, _ = summarise(table, d, metrics_tables(), SETTINGS)
    trpo = section(summary, "primary", "trpo")
    assert trpo["verdict"].str.startswith("no test (1 training seed").all()
    # outside Holm's family: the two real arms' adjustment is unchanged
    assert section(summary, "primary", "win")["p_holm"].tolist() == pytest.approx(
        section(summarise(planted(), design(), metrics_tables(), SETTINGS)[0], "primary", "win")["p_holm"].tolist())
    detail = section(summary, "verdict", "trpo")["detail"].iloc[0]
    assert detail.startswith("trpo does not beat the frozen knob on the primary endpoints (too few training seeds to test)")


def test_a_study_experiment_missing_from_the_comparisons_is_named():
    table = planted()
    with pytest.raises(MarsdiffError, match="comparisons.csv has no rows for model 'null_s2' against 'frozen_knob'"):
        summarise(table[table["model"] != "null_s2"], design(), metrics_tables(), SETTINGS)


def test_files_and_markdown(tmp_path):
    planted().to_csv(tmp_path / "comparisons.csv", index=False)
    paths = {}
    for name, table in metrics_tables().items():
        paths[name] = tmp_path / f"{name}.csv"
        table.to_csv(paths[name], index=False)
    settings = SETTINGS
    write_study_summary(tmp_path / "comparisons.csv", design(), paths, tmp_path / "summary.csv", tmp_path / "seeds.csv",
                        tmp_path / "summary.md", settings)
    text = (tmp_path / "summary.md").read_text()
    assert "- win beats the frozen knob on the primary endpoints: coverage better (mean +0.11, p_holm 0.011); recall better" in text
    assert "- null does not beat the frozen knob on the primary endpoints" in text
    assert "## Control: A/A against the base (must not differ)" in text
    written = pd.read_csv(tmp_path / "summary.csv")
    assert {"primary", "non_inferiority", "verdict", "aa_vs_base", "arm_vs_shuffled", "reward_trend",
            "movement"} == set(written["section"])
    assert len(pd.read_csv(tmp_path / "seeds.csv")) == 12 * 4 + 3 * 4  # vs frozen: 12 experiments x 4 metrics; aa vs base
