"""An experiment's metrics across rounds: the metrics.csv table and the reward-curve figure.

Each round's update writes ``metrics.json`` (:func:`marsdiff.rl.rounds.round_metrics_row`);
this module stacks them in round order and draws the set reward per round with the per-image
credit spread, beside the update diagnostics (approximate KL, clip fraction).
"""

from __future__ import annotations

import os
from typing import Sequence

import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import atomic_path
from marsdiff.io.reading import read_json


def read_round_metrics(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    # metrics.json of update_round: a JSON object with at least the round and its set reward.
    rows = [read_json(path, "round metrics", "update_round", keys=("round", "set_reward")) for path in paths]
    if not rows:
        raise MarsdiffError("no round metrics to collect")
    table = pd.DataFrame(rows).sort_values("round").reset_index(drop=True)
    if table["round"].duplicated().any():
        raise MarsdiffError("round metrics: the same round appears twice")
    return table


def plot_reward_curve(table: pd.DataFrame, path: str | os.PathLike, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    diagnostics = [c for c in ("approx_kl", "clip_fraction", "kl") if c in table and table[c].notna().any()]
    fig, axes = plt.subplots(1, 2 if diagnostics else 1, figsize=(10 if diagnostics else 6, 3.8), squeeze=False)
    ax = axes[0, 0]
    ax.plot(table["round"], table["set_reward"], "o-", color="C0", label="set reward")
    if "credit_mean" in table:
        ax2 = ax.twinx()
        ax2.errorbar(table["round"], table["credit_mean"], yerr=table.get("credit_std"), fmt="s--", color="C1",
                     alpha=0.6, label="per-image credit (mean ± std)")
        ax2.set_ylabel("per-image credit")
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="best", fontsize=8)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("set reward (z-scored, higher is better)")
    ax.set_title(title or "reward per round")
    if diagnostics:
        axd = axes[0, 1]
        for j, column in enumerate(diagnostics):
            axd.plot(table["round"], table[column], "o-", color=f"C{j + 2}", label=column)
        axd.set_xlabel("round")
        axd.xaxis.set_major_locator(MaxNLocator(integer=True))
        axd.set_ylabel("update diagnostic")
        axd.set_yscale("symlog", linthresh=1e-6)
        axd.legend(fontsize=8)
        axd.set_title("update: KL and clipping")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_experiment_curves(metrics_paths: Sequence[str | os.PathLike], table_csv: str | os.PathLike,
                            curve_png: str | os.PathLike) -> pd.DataFrame:
    table = read_round_metrics(metrics_paths)
    with atomic_path(table_csv) as tmp:
        table.to_csv(tmp, index=False)
    name = str(table["experiment"].iloc[0]) if "experiment" in table else None
    algorithm = f" ({table['algorithm'].iloc[0]}, {table['mode'].iloc[0]})" if "algorithm" in table else ""
    plot_reward_curve(table, curve_png, title=f"{name}{algorithm}" if name else None)
    return table
