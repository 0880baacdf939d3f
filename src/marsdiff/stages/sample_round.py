"""Stage sample_round: one round of an experiment sampled with the policy of round r-1.

Reads the config sections and round r-1's policy folder and hands them to the sampling of
:mod:`marsdiff.rl.round_sampling`, which writes the round's trajectories.h5, images/ and
samples.csv. Nothing here imports the update's code (:mod:`marsdiff.rl.round_update`, PPO,
TRPO): sample_round's code digest follows this module, so an edit to the update re-runs no
sampling (tests/test_rerun_policy.py).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from marsdiff.rl.distributed import SINGLE, RankGroup
from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round
from marsdiff.rl.rounds import build_policy


def sample_round_stage(cfg: Mapping[str, Any], experiment_name: str, round_index: int, model_dir: str | None,
                       previous_policy: str | None, out_dir: str | os.PathLike,
                       group: RankGroup = SINGLE) -> dict[str, Any]:
    """Stage sample_round. ``cfg`` holds the model, sampling and experiments sections; ``group``:
    this process's rank when :func:`marsdiff.rl.distributed.launch` runs it in several."""
    from marsdiff.config import filled_section
    from marsdiff.rl.experiments import experiment_settings

    experiment = experiment_settings(cfg["experiments"], experiment_name, cfg.get("sampling"))
    sampling = filled_section("sampling", cfg.get("sampling"))
    policy = build_policy(cfg["model"], experiment, model_dir, previous_policy, device=sampling["device"])
    return sample_policy_round(
        policy, round_sampling_settings(sampling, experiment), experiment, round_index, out_dir, stage_config=cfg,
        store=sampling["store"], group=group,
    )
