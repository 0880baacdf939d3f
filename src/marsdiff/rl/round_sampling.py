"""Stage sample_round: one round of an experiment sampled with the policy of round r-1.

Writes the round's trajectories.h5 (chains, plan actions, every log-prob and the sampling
policy's hash), images/ and samples.csv. Nothing here imports the update's code
(:mod:`marsdiff.rl.round_update`, PPO, TRPO): sample_round's code digest follows this module,
so an edit to the update re-runs no sampling (tests/test_rerun_policy.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from marsdiff.diffusion.round_files import write_round
from marsdiff.diffusion.sampler import RecordingSampler, SamplingSettings
from marsdiff.rl.distributed import SINGLE, RankGroup, ShardedSampler
from marsdiff.rl.policy import RoundPolicy
from marsdiff.rl.rounds import build_policy


def round_sampling_settings(sampling: Mapping[str, Any], experiment: Mapping[str, Any]) -> SamplingSettings:
    """The experiment's chain (steps, eta, seed, class distribution) on the shared sampling setup."""
    merged = {**dict(sampling), "steps": experiment["steps"], "eta": experiment["eta"], "seed": experiment["seed"],
              "class_distribution": experiment["class_distribution"]}
    return SamplingSettings.from_config(merged)


def sample_policy_round(policy: RoundPolicy, settings: SamplingSettings, experiment: Mapping[str, Any], round_index: int,
                        out_dir: str | os.PathLike, stage_config: Mapping[str, Any] | None = None, *,
                        store: Mapping[str, Any], group: RankGroup = SINGLE) -> dict[str, Any]:
    """Sample one round with ``policy``: out_dir/trajectories.h5, images/, samples.csv, compressed as
    ``store`` (the filled ``sampling.store`` section) says.

    With several processes (``group``) the batches are shared out over the ranks
    (:class:`~marsdiff.rl.distributed.ShardedSampler`) and rank 0 alone writes the files."""
    out_dir = Path(out_dir)
    sampler = RecordingSampler(policy.backend, settings, policy.generation)
    if group.world > 1:
        sampler = ShardedSampler(sampler, group)
        if not group.is_writer:
            for _ in sampler.sample(int(experiment["images_per_round"]), round_index=round_index):
                pass
            return {}
    return write_round(
        sampler, int(experiment["images_per_round"]), out_dir / "trajectories.h5", out_dir / "images",
        out_dir / "samples.csv", round_index=round_index, stage_config=stage_config, policy_hash=policy.policy_hash(),
        mode=policy.mode, compression=str(store["compression"]), compression_level=int(store["compression_level"]),
    )


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
