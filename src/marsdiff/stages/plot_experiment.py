"""Stage plot_experiment: an experiment's round metrics stacked into metrics.csv, with the paired
improvement over its base per round, and the reward-curve figure.

Reads each round's ``metrics.json`` (:func:`marsdiff.stages.update_round.round_metrics_row`)
and, with a paired base, both experiments' ``rewards.csv`` and the base's
``reward_summary.json`` per round; the paired improvement, its jackknife interval and the
figure are :mod:`marsdiff.rl.curves`'.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import atomic_path
from marsdiff.io.reading import read_csv, read_json
from marsdiff.rl.curves import PAIRED_COLUMNS, curve_figure, curve_note, paired_improvement

def read_round_metrics(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    # metrics.json of update_round: a JSON object with at least the round and its set reward.
    rows = [read_json(path, "round metrics", "update_round", keys=("round", "set_reward")) for path in paths]
    if not rows:
        raise MarsdiffError("no round metrics to collect")
    table = pd.DataFrame(rows).sort_values("round").reset_index(drop=True)
    if table["round"].duplicated().any():
        raise MarsdiffError("round metrics: the same round appears twice")
    return table

def add_paired_improvement(table: pd.DataFrame, base_name: str | None, arm_rewards: Sequence[str | os.PathLike] = (),
                           base_rewards: Sequence[str | os.PathLike] = (),
                           base_summaries: Sequence[str | os.PathLike] = ()) -> pd.DataFrame:
    """``table`` (one row per round, in order) with :data:`marsdiff.rl.curves.PAIRED_COLUMNS`;
    the file lists hold one path per round in the same order (empty without a paired base)."""
    table = table.copy()
    for column in PAIRED_COLUMNS:
        table[column] = "" if column == "paired_base" else np.nan
    if not base_name:
        return table
    if not (len(arm_rewards) == len(base_rewards) == len(base_summaries) == len(table)):
        raise MarsdiffError(f"paired curve: {len(table)} rounds but {len(arm_rewards)} / {len(base_rewards)} / "
                            f"{len(base_summaries)} rewards, base rewards and base summaries")
    table["paired_base"] = base_name
    columns = ("image_index", "credit")
    for row, (arm_csv, base_csv, base_json) in enumerate(zip(arm_rewards, base_rewards, base_summaries)):
        arm = read_csv(arm_csv, "round rewards", "score_round", columns=columns)
        base = read_csv(base_csv, "round rewards", "score_round", columns=columns)
        summary = read_json(base_json, "reward summary", "score_round", keys=("set_reward",))
        where = f"round {int(table.loc[row, 'round']):03d} ({arm_csv} against {base_csv})"
        values = paired_improvement(arm, base, table.loc[row, "set_reward"], summary["set_reward"], where=where)
        for key, value in values.items():
            table.loc[row, key] = value
    return table

def write_experiment_curves(metrics_paths: Sequence[str | os.PathLike], table_csv: str | os.PathLike,
                            curve_png: str | os.PathLike, paired_base: str | None = None,
                            arm_rewards: Sequence[str | os.PathLike] = (), base_rewards: Sequence[str | os.PathLike] = (),
                            base_summaries: Sequence[str | os.PathLike] = (), control: str | None = None) -> pd.DataFrame:
    """Stage plot_experiment: metrics.csv (a row per round, with the paired improvement when
    ``paired_base`` names the experiment's A/A base) and the reward-curve figure."""
    table = add_paired_improvement(read_round_metrics(metrics_paths), paired_base, arm_rewards, base_rewards,
                                   base_summaries)
    with atomic_path(table_csv) as tmp:
        table.to_csv(tmp, index=False)
    name = str(table["experiment"].iloc[0]) if "experiment" in table else None
    algorithm = f" ({table['algorithm'].iloc[0]}, {table['mode'].iloc[0]})" if "algorithm" in table else ""
    from marsdiff.io.figures import save_png

    fig = curve_figure(table, title=f"{name}{algorithm}" if name else None, note=curve_note(name, control))
    save_png(fig, curve_png, dpi=120)
    return table
