"""The sampling of one RL round with the policy of round r-1 (stage sample_round:
:mod:`marsdiff.stages.sample_round`).

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
