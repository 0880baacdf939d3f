"""An experiment's metrics across rounds: the paired improvement and the reward-curve figure.

Stage plot_experiment (:mod:`marsdiff.stages.plot_experiment`) stacks each round's
``metrics.json`` in round order into metrics.csv and, when the experiment has a paired base
(:func:`marsdiff.study.pairing.paired_base`: the A/A control on the same seeds), adds each
round's **paired improvement** over the base model with a jackknife interval, computed here.

Paired improvement of round r: D = R(S_arm) - R(S_base), the two set rewards of the round's
images, image i of both drawn from the same seed. The per-image credit is exactly leave-one-out,
credit_i = R(S) - R(S without i), so the jackknife's leave-one-out values are free:
D_(i) = D - d_i with d_i = credit_i(arm) - credit_i(base), and the jackknife standard error is

    se = sqrt((n - 1) / n * sum_i (d_i - mean d)^2).

The interval is D +- t_{n-1, 0.975} se (the t quantile with the jackknife's n - 1 degrees of
freedom). Without a paired base the curve shows the raw set reward, and the figure says so.

The figure: the reward panel, then the update's KL on a log axis (approximate KL, TRPO's step KL
against its radius delta = ``max_kl``, the post-update KL and the KL to the base model when the
update logs them: a KL of 1e-9 is as visible as one of 1e-3), the clip fraction, and the plan
values (``plan/<knob>`` keys) when present.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from marsdiff.errors import MarsdiffError

#: two-sided coverage of the paired-improvement interval
PAIRED_CONFIDENCE = 0.95
#: the columns metrics.csv gains per round (NaN / empty without a paired base)
PAIRED_COLUMNS = ("paired_base", "base_set_reward", "paired_improvement", "paired_se", "paired_low",
                  "paired_high", "paired_images")
#: KL-like diagnostics, drawn on the log axis when present
KL_COLUMNS = ("approx_kl", "kl", "kl_post_update", "kl_to_base")
KL_LABELS = {"approx_kl": "approx. KL (k3, during update)", "kl": "TRPO step KL", "kl_post_update": "post-update KL",
             "kl_to_base": "KL to base model"}
PLAN_PREFIX = "plan/"


def jackknife_se(differences: np.ndarray) -> float:
    """Jackknife standard error of a paired set-reward difference from its per-image credit
    differences d_i (the leave-one-out values are D - d_i; see the module docstring)."""
    d = np.asarray(differences, dtype=float)
    n = d.size
    if n < 2:
        raise MarsdiffError(f"a jackknife interval needs at least 2 paired images, got {n}")
    return float(math.sqrt((n - 1) / n * float(np.sum((d - d.mean()) ** 2))))


def paired_improvement(arm: pd.DataFrame, base: pd.DataFrame, arm_reward: float, base_reward: float,
                       where: str = "round", confidence: float = PAIRED_CONFIDENCE) -> dict[str, float]:
    """One round's paired improvement of the arm over its base, with the jackknife interval.

    ``arm`` and ``base``: the round's rewards.csv tables (``image_index``, ``credit``, and
    ``seed`` when present: the images must be drawn from the same seeds, else they are not
    paired and this refuses). ``where`` names the round in messages."""
    from scipy import stats

    a = arm.set_index("image_index")
    b = base.set_index("image_index")
    if sorted(a.index) != sorted(b.index):
        raise MarsdiffError(f"{where}: the arm and its paired base scored different images "
                            f"({len(a)} vs {len(b)} image indices); they are not paired")
    b = b.loc[a.index]
    if "seed" in a and "seed" in b:
        unequal = a.index[a["seed"].to_numpy() != b["seed"].to_numpy()]
        if len(unequal):
            raise MarsdiffError(f"{where}: image {int(unequal[0])} was drawn from seed {a.loc[unequal[0], 'seed']} by the "
                                f"arm and {b.loc[unequal[0], 'seed']} by its paired base; they are not paired")
    d = a["credit"].to_numpy(dtype=float) - b["credit"].to_numpy(dtype=float)
    se = jackknife_se(d)
    difference = float(arm_reward) - float(base_reward)
    half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * se
    return {"base_set_reward": float(base_reward), "paired_improvement": difference, "paired_se": se,
            "paired_low": difference - half, "paired_high": difference + half, "paired_images": float(d.size)}


def _has(table: pd.DataFrame, column: str) -> bool:
    return bool(column in table and pd.to_numeric(table[column], errors="coerce").notna().any())


def curve_figure(table: pd.DataFrame, title: str | None = None, note: str | None = None):
    """The reward-curve figure of one experiment (a matplotlib Figure; the caller closes it).

    Panels, left to right: the paired improvement with its interval (raw set reward and
    ``note`` on the panel when the table has none), the KL diagnostics on a log axis, the clip
    fraction, the plan values."""
    from matplotlib.ticker import MaxNLocator

    from marsdiff.io.figures import subplots

    kl_columns = [c for c in KL_COLUMNS if _has(table, c)]
    plan_columns = sorted(c for c in table.columns if str(c).startswith(PLAN_PREFIX) and _has(table, c))
    panels = ["reward"] + ["kl"] * bool(kl_columns or _has(table, "max_kl")) + ["clip"] * _has(table, "clip_fraction")
    panels += ["plan"] * bool(plan_columns)
    fig, axes = subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    rounds = table["round"].to_numpy()
    for ax, panel in zip(axes[0], panels):
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_gid(panel)
        if panel == "reward":
            _reward_panel(ax, table, note)
            ax.set_title(title or "reward per round", fontsize=10)
        elif panel == "kl":
            _kl_panel(ax, table, kl_columns)
        elif panel == "clip":
            ax.plot(rounds, table["clip_fraction"], "o-", color="C4")
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("clip fraction")
            ax.set_title("PPO: fraction of clipped ratios", fontsize=10)
        else:
            for j, column in enumerate(plan_columns):
                ax.plot(rounds, pd.to_numeric(table[column], errors="coerce"), "o-", color=f"C{j}",
                        label=column[len(PLAN_PREFIX):])
            ax.set_ylabel("plan value (metrics.json plan/<knob>)")
            ax.set_title("plan policy", fontsize=10)
            ax.legend(fontsize=7)
    if _has(table, "paired_improvement"):
        fig.tight_layout()
    else:
        # below the panels, not inside one: a long note inside an axis pushed the panels apart
        fig.text(0.01, 0.015, note or "raw set reward: no paired base on the same seeds", fontsize=8, color="C3",
                 va="bottom", ha="left")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _reward_panel(ax, table: pd.DataFrame, note: str | None) -> None:
    rounds = table["round"].to_numpy()
    if _has(table, "paired_improvement"):
        improvement = table["paired_improvement"].to_numpy(dtype=float)
        low, high = table["paired_low"].to_numpy(dtype=float), table["paired_high"].to_numpy(dtype=float)
        ax.fill_between(rounds, low, high, color="C0", alpha=0.2,
                        label=f"{PAIRED_CONFIDENCE:.0%} jackknife interval over images")
        ax.plot(rounds, improvement, "o-", color="C0", label="set reward minus the base's")
        ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
        ax.set_ylabel(f"paired improvement over {table['paired_base'].iloc[0]}\n(same seeds; higher is better)")
        ax.legend(fontsize=7, loc="best")
        return
    ax.plot(rounds, table["set_reward"], "o-", color="C0", label="set reward")
    if _has(table, "credit_mean"):
        ax.errorbar(rounds, table["credit_mean"], yerr=table.get("credit_std"), fmt="s--", color="C1", alpha=0.6,
                    label="per-image credit (mean ± std)")
    ax.set_ylabel("raw set reward (z-scored, higher is better)")
    ax.legend(fontsize=7, loc="best")


def _kl_panel(ax, table: pd.DataFrame, columns: Sequence[str]) -> None:
    rounds = table["round"].to_numpy()
    for j, column in enumerate(columns):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        shown = values > 0
        label = KL_LABELS.get(column, column)
        hidden = rounds[~shown & np.isfinite(values)]
        if len(hidden):
            # a log axis cannot show 0 (a rejected TRPO step, an unmoved policy): say so in the legend
            label += f" (≤ 0 in round {', '.join(str(int(r)) for r in hidden)})"
        # NaN breaks the line: a round without a positive KL is a gap, not an interpolated point
        ax.plot(rounds, np.where(shown, values, np.nan), "o-", color=f"C{j}", label=label)
    if _has(table, "max_kl"):
        delta = pd.to_numeric(table["max_kl"], errors="coerce").to_numpy(dtype=float)
        ax.plot(rounds, delta, "--", color="k", lw=1.0, label="TRPO radius δ (max_kl)")
    ax.set_yscale("log")
    ax.set_ylabel("KL (the action family's unit)")
    ax.set_title("policy movement per update", fontsize=10)
    ax.legend(fontsize=7, loc="best")


def curve_note(experiment: str | None, control: str | None) -> str:
    """What the raw reward panel says when an experiment has no paired base."""
    if control == "zero_lr":
        return "raw set reward: A/A control (lr 0), the paired base of the arms on its seeds"
    return (f"raw set reward: {experiment or 'this experiment'} has no paired base (no zero_lr experiment with "
            "its seed, images_per_round, steps and class_distribution)")
