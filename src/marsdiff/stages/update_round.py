"""Stage update_round: the RL update of one scored round into policy r, and its metrics row.

Reads what the round's earlier stages wrote (the trajectory file's size, score_round's
rewards.csv and reward_summary.json, round r-1's metrics.json for the skips in a row), runs
:func:`marsdiff.rl.round_update.update_policy_round` (which writes policy r and its trainer
state) and writes the round's metrics.json, a row of the experiment's metrics.csv
(:mod:`marsdiff.stages.plot_experiment`). The algorithms (PPO, TRPO) are imported inside the
update only: update_round's code digest follows only the experiment's algorithm's entry module
(marsdiff.workflow.code.ALGORITHM_ENTRIES).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import write_json
from marsdiff.io.reading import read_csv, read_json, rerun_hint
from marsdiff.rl.distributed import SINGLE, RankGroup
from marsdiff.rl.round_update import update_policy_round
from marsdiff.rl.rounds import build_policy
from marsdiff.rl.skips import SKIPPED, previous_streak

log = logging.getLogger(__name__)


def read_credit(rewards_csv: str | os.PathLike, num_images: int) -> tuple[np.ndarray, dict[str, float]]:
    """Per-image credit in image_index order (rewards.csv of score_round) and its statistics."""
    table = read_csv(rewards_csv, "per-image rewards", "score_round", columns=("image_index", "credit"))
    credit = np.full(num_images, np.nan)
    try:
        index = table["image_index"].to_numpy(dtype=np.int64)
    except (ValueError, TypeError):  # garbled or missing entries: text or NaN where an index belongs
        raise MarsdiffError(f"{rewards_csv}: image_index holds non-integer values; {rerun_hint('score_round')}") from None
    if len(index) == 0:
        raise MarsdiffError(f"{rewards_csv}: no rows; {rerun_hint('score_round')}")
    if index.min() < 0 or index.max() >= num_images or len(np.unique(index)) != num_images:
        raise MarsdiffError(f"{rewards_csv}: image_index does not cover the round's {num_images} images exactly once; "
                            f"{rerun_hint('score_round')}")
    try:
        credit[index] = table["credit"].to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise MarsdiffError(f"{rewards_csv}: credit holds non-numeric values; {rerun_hint('score_round')}") from None
    return credit, {"credit_mean": float(np.mean(credit)), "credit_std": float(np.std(credit))}


def round_metrics_row(experiment_name: str, experiment: Mapping[str, Any], round_index: int,
                      reward_summary: Mapping[str, Any], credit_stats: Mapping[str, float],
                      update: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics.json of one round (a row of the experiment's metrics.csv)."""
    return {
        "experiment": experiment_name,
        "algorithm": experiment["algorithm"],
        "mode": experiment["mode"],
        "round": round_index,
        "control": str(experiment["control"]),
        "set_reward": _json_number(reward_summary.get("set_reward", float("nan"))),
        **{k: _json_number(v) for k, v in credit_stats.items()},
        **{k: _json_number(v) for k, v in update.items()},
    }


def _json_number(value: Any) -> Any:
    """Floats for JSON; NaN (a diagnostic the mode does not have) and inf (a fault a skipped
    update recorded) become null: strict JSON has neither."""
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        value = float(value)
        return value if np.isfinite(value) else None
    return value


def update_round_stage(cfg: Mapping[str, Any], experiment_name: str, round_index: int, model_dir: str | None,
                       previous_policy: str | None, trajectories: str, rewards_csv: str, reward_summary: str,
                       out_policy: str, metrics_json: str, previous_metrics: str | None = None,
                       group: RankGroup = SINGLE) -> dict[str, Any]:
    """Stage update_round: the RL update of one round, its policy, trainer state and metrics.json.

    ``previous_metrics`` (round r-1's metrics.json) carries the count of updates skipped in a row.
    ``group``: this process's rank when :func:`marsdiff.rl.distributed.launch` runs it in several
    (each rank reads the same inputs; rank 0 writes policy r and metrics.json)."""
    from marsdiff.io.trajectories import open_trajectories
    from marsdiff.config import filled_section
    from marsdiff.rl.experiments import experiment_settings

    experiment = experiment_settings(cfg["experiments"], experiment_name, cfg.get("sampling"))
    sampling = filled_section("sampling", cfg.get("sampling"))
    policy = build_policy(cfg["model"], experiment, model_dir, previous_policy, device=sampling["device"])
    with open_trajectories(trajectories) as f:
        num_images = f.num_images
    credit, credit_stats = read_credit(rewards_csv, num_images)
    summary = read_json(reward_summary, "reward summary", "score_round")
    update = update_policy_round(policy, experiment, round_index, trajectories, credit, previous_policy, out_policy,
                                 skipped_before=previous_streak(previous_metrics),
                                 reward_fault=_reward_fault(summary, credit, reward_summary, rewards_csv), group=group)
    row = round_metrics_row(experiment_name, experiment, round_index, summary, credit_stats, update)
    if not group.is_writer:
        return row
    write_json(metrics_json, row)
    if row.get(SKIPPED):
        return row
    log.info("%s round %03d: set reward %s, %s", experiment_name, round_index, row["set_reward"],
             ", ".join(f"{k} {row[k]:.4g}" for k in ("clip_fraction", "approx_kl", "grad_norm") if row.get(k) is not None))
    return row


def _reward_fault(summary: Mapping[str, Any], credit: np.ndarray, reward_summary: str, rewards_csv: str) -> str | None:
    """Why the round's reward cannot be learnt from (a NaN/inf set reward or credit), naming the file; None if it can."""
    value = summary.get("set_reward") if isinstance(summary, Mapping) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not np.isfinite(value):
        return f"set_reward {value} in {reward_summary}"
    bad = ~np.isfinite(credit)
    if bad.any():
        kind = "NaN" if np.isnan(credit[bad]).any() else "inf"
        return f"{kind} credit for {int(bad.sum())} of {len(credit)} images in {rewards_csv}"
    return None
