"""The reward curves (marsdiff.rl.curves; stage plot_experiment, marsdiff.stages.plot_experiment):
the paired improvement over the A/A base with its jackknife interval (checked against a
brute-force jackknife of a real set reward), the refusal of unpaired images, metrics.csv's
columns, and the figure's panels (log KL axes, TRPO's delta, plan)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.rl import curves
from marsdiff.stages import plot_experiment


def set_reward(features: np.ndarray, reference: np.ndarray) -> float:
    """A non-additive set reward (negative biased MMD^2, RBF kernel): credits are not separable."""
    def k(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / 2.0)
    return float(-(k(features, features).mean() - 2 * k(features, reference).mean() + k(reference, reference).mean()))


def credits(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    full = set_reward(features, reference)
    return np.array([full - set_reward(np.delete(features, i, axis=0), reference) for i in range(len(features))])


def rewards_table(features, reference, seeds):
    return pd.DataFrame({"image_index": np.arange(len(features)), "seed": seeds,
                         "credit": credits(features, reference)})


def test_jackknife_of_the_paired_difference_matches_brute_force():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 3))
    base = rng.normal(loc=0.8, size=(12, 3))
    arm = base + rng.normal(scale=0.4, size=base.shape) - 0.3  # same seeds: arm image i near base image i
    seeds = rng.integers(0, 2**62, size=12)
    out = curves.paired_improvement(rewards_table(arm, reference, seeds), rewards_table(base, reference, seeds),
                                    set_reward(arm, reference), set_reward(base, reference))
    # brute force: recompute the paired difference with image i left out of both sets
    n = len(arm)
    leave_one_out = np.array([set_reward(np.delete(arm, i, 0), reference) - set_reward(np.delete(base, i, 0), reference)
                              for i in range(n)])
    brute_se = np.sqrt((n - 1) / n * ((leave_one_out - leave_one_out.mean()) ** 2).sum())
    assert out["paired_se"] == pytest.approx(brute_se, rel=1e-10)
    assert out["paired_improvement"] == pytest.approx(set_reward(arm, reference) - set_reward(base, reference))
    from scipy import stats
    half = stats.t.ppf(0.975, n - 1) * brute_se
    assert out["paired_low"] == pytest.approx(out["paired_improvement"] - half)
    assert out["paired_high"] == pytest.approx(out["paired_improvement"] + half)
    assert out["paired_images"] == n and brute_se > 0


def test_images_are_matched_by_index_not_by_row_order():
    arm = pd.DataFrame({"image_index": [0, 1, 2, 3], "seed": [5, 6, 7, 8], "credit": [1.0, 2.0, 3.0, 4.0]})
    base = arm.iloc[::-1].assign(credit=[0.0, 0.0, 0.0, 0.0])
    shuffled_rows = curves.paired_improvement(arm, base, 1.0, 0.0)
    assert shuffled_rows["paired_se"] == pytest.approx(curves.jackknife_se(np.array([1.0, 2.0, 3.0, 4.0])))


def test_images_drawn_from_other_seeds_are_refused():
    arm = pd.DataFrame({"image_index": [0, 1, 2], "seed": [5, 6, 7], "credit": [1.0, 2.0, 3.0]})
    with pytest.raises(MarsdiffError, match="image 1 was drawn from seed 6 by the arm and 9 by its paired base"):
        curves.paired_improvement(arm, arm.assign(seed=[5, 9, 7]), 1.0, 0.0)
    with pytest.raises(MarsdiffError, match="scored different images"):
        curves.paired_improvement(arm, arm.iloc[:2], 1.0, 0.0)


def write_round(folder, round_index, set_reward_value, credit, extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"round": round_index, "set_reward": set_reward_value,
                                                     "experiment": "arm", "algorithm": "trpo", "mode": "lora_unet",
                                                     **(extra or {})}))
    pd.DataFrame({"image_index": range(len(credit)), "seed": range(len(credit)), "credit": credit}).to_csv(
        folder / "rewards.csv", index=False)
    (folder / "reward_summary.json").write_text(json.dumps({"set_reward": set_reward_value}))


def test_metrics_csv_carries_the_paired_improvement_per_round(tmp_path):
    arm, base = tmp_path / "arm", tmp_path / "base"
    extras = [{"kl": 3e-9, "max_kl": 1e-5, "kl_post_update": 2e-9, "kl_to_base": 0.0, "plan/eta": 0.9},
              {"kl": 8e-6, "max_kl": 1e-5, "kl_post_update": 7e-6, "kl_to_base": 4e-6, "plan/eta": 0.7}]
    for r in range(2):
        write_round(arm / f"round_{r:03d}", r, -5.0 + r, [0.5, 1.0, 1.5, 2.0], extras[r])
        write_round(base / f"round_{r:03d}", r, -6.0, [0.5, 0.5, 0.5, 0.5])
    table = plot_experiment.write_experiment_curves(
        [arm / f"round_{r:03d}" / "metrics.json" for r in range(2)], tmp_path / "metrics.csv", tmp_path / "curve.png",
        paired_base="base", arm_rewards=[arm / f"round_{r:03d}" / "rewards.csv" for r in range(2)],
        base_rewards=[base / f"round_{r:03d}" / "rewards.csv" for r in range(2)],
        base_summaries=[base / f"round_{r:03d}" / "reward_summary.json" for r in range(2)])
    written = pd.read_csv(tmp_path / "metrics.csv")
    assert set(curves.PAIRED_COLUMNS) <= set(written.columns)
    assert written["paired_improvement"].tolist() == pytest.approx([1.0, 2.0])
    assert written["paired_base"].tolist() == ["base", "base"]
    assert (written["paired_low"] < written["paired_improvement"]).all()
    assert written["paired_se"].tolist() == pytest.approx([curves.jackknife_se(np.array([0.0, 0.5, 1.0, 1.5]))] * 2)
    assert (tmp_path / "curve.png").stat().st_size > 5000
    assert table["plan/eta"].tolist() == [0.9, 0.7]


def test_without_a_paired_base_the_columns_are_empty_and_the_figure_says_raw(tmp_path):
    arm = tmp_path / "arm"
    write_round(arm / "round_000", 0, -5.0, [1.0, 2.0, 3.0])
    metrics = plot_experiment.read_round_metrics([arm / "round_000" / "metrics.json"])
    table = plot_experiment.add_paired_improvement(metrics, None)
    assert table["paired_improvement"].isna().all() and table["paired_base"].tolist() == [""]
    fig = curves.curve_figure(table, note=curves.curve_note("arm", "none"))
    texts = [t.get_text() for t in fig.texts]  # under the panels
    assert any(t.startswith("raw set reward: arm has no paired base") for t in texts)
    assert "raw set reward" in fig.axes[0].get_ylabel()
    assert curves.curve_note("aa_s0", "zero_lr").startswith("raw set reward: A/A control")


def test_kl_panels_are_log_scaled_and_show_a_kl_of_1e_9_and_trpos_delta():
    table = pd.DataFrame({"round": [0, 1, 2], "set_reward": [-5.0, -4.0, -3.0], "kl": [1e-9, 0.0, 8e-6],
                          "max_kl": [1e-5] * 3, "approx_kl": [3e-10, 5e-10, 9e-10], "kl_post_update": [2e-9, 1e-8, 1e-6],
                          "clip_fraction": [0.0, 0.1, 0.2], "plan/eta": [1.0, 0.8, 0.6], "plan/noise_scale": [1.0, 1.05, 1.1]})
    fig = curves.curve_figure(table)
    panels = {ax.get_gid(): ax for ax in fig.axes}
    assert set(panels) == {"reward", "kl", "clip", "plan"}
    kl = panels["kl"]
    assert kl.get_yscale() == "log"
    low, high = kl.get_ylim()
    assert low < 3e-10 and high > 1e-5  # the smallest KL and the radius are both inside the axis
    labels = [line.get_label() for line in kl.get_lines()]
    assert "TRPO radius δ (max_kl)" in labels
    assert "TRPO step KL (≤ 0 in round 1)" in labels  # a rejected step is named, not silently dropped
    step = next(line for line in kl.get_lines() if line.get_label().startswith("TRPO step KL"))
    ydata = np.asarray(step.get_ydata(), dtype=float)
    assert ydata[0] == 1e-9 and np.isnan(ydata[1]) and ydata[2] == 8e-6  # a gap, not a line across the zero
    assert sorted(line.get_label() for line in panels["plan"].get_lines()) == ["eta", "noise_scale"]
    import matplotlib.pyplot as plt
    plt.close(fig)
