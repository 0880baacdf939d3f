"""Writing one sampled round to disk: trajectories.h5, images/*.png and samples.csv.

All three appear atomically (temporary names renamed when complete). The trajectory layout is
:mod:`marsdiff.io.trajectories` (docs/trajectories.md); ``samples.csv`` has one row per image
with its condition, knobs and plan log-probabilities, joined to rewards by ``image_id``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from marsdiff.diffusion.sampler import RecordingSampler
from marsdiff.diffusion.scheduler_logprob import LOG_PROB_CONVENTION
from marsdiff.errors import MarsdiffError

log = logging.getLogger(__name__)


def config_hash(cfg: Mapping[str, Any]) -> str:
    """SHA-256 (16 hex) of a config mapping as sorted-key JSON (the stage's params text)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_name(round_index: int, index: int) -> str:
    return f"r{round_index:03d}_{index:05d}.png"


def write_round(
    sampler: RecordingSampler,
    num_images: int,
    trajectories_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    samples_csv: str | os.PathLike,
    round_index: int = 0,
    stage_config: Mapping[str, Any] | None = None,
    policy_hash: str = "",
    mode: str | None = None,
    *,
    compression: str,
    compression_level: int,
) -> dict[str, Any]:
    """Sample ``num_images`` with ``sampler`` and write the round's three outputs.

    ``mode`` names what RL trains in this run (default: the generation policy's own mode);
    ``compression`` and ``compression_level`` are ``sampling.store``'s."""
    from tqdm import tqdm

    from marsdiff.data.images import save_png
    from marsdiff.io.atomic import atomic_dir, atomic_path
    from marsdiff.io.trajectories import TrajectoryHeader, write_trajectories

    if num_images < 1:
        raise MarsdiffError("images_per_round must be >= 1")
    backend, settings, policy = sampler.backend, sampler.settings, sampler.policy
    names = backend.conditions()
    header = TrajectoryHeader(
        num_images=num_images,
        num_steps=settings.steps,
        latent_shape=tuple(backend.latent_shape),
        condition_names=names,
        config_hash=config_hash(stage_config or {}),
        model_hash=backend.model_hash(),
        backend=backend.kind,
        scheduler_config={**backend.scheduler_config, "marsdiff": sampler.scheduler.config},
        action_names=tuple(policy.action_names),
        mode=mode or policy.mode,
        policy_hash=policy_hash,
        round_index=round_index,
        latent_dtype=settings.store_dtype,
        compression=compression,
        compression_level=compression_level,
        extra={"sampling": asdict(settings), "backend": backend.describe(), "policy": policy.describe()},
    )
    rows = []
    progress = tqdm(total=num_images, desc=f"round {round_index:03d} sampling", unit="img", leave=False)
    with write_trajectories(trajectories_path, header) as writer, atomic_dir(images_dir) as tmp_images:
        for batch in sampler.sample(num_images, round_index=round_index):
            fields = {k: v for k, v in vars(batch).items() if k != "images"}
            writer.write(**fields)
            plan_log_prob = {k: batch.plan_log_prob.get(k, np.zeros(len(batch.seed))) for k in ("condition", "knobs")}
            for j, index in enumerate(batch.image_index.tolist()):
                name = image_name(round_index, index)
                save_png(Path(tmp_images) / name, batch.images[j])
                row = {
                    "image_id": name[:-4],
                    "file": name,
                    "image_index": index,
                    "condition": int(batch.condition[j]),
                    "condition_name": names[int(batch.condition[j])],
                    "seed": int(batch.seed[j]),
                    "eta": f"{float(batch.eta[j]):.6g}",
                    "guidance_scale": f"{float(batch.guidance_scale[j]):.6g}",
                    "noise_scale": f"{float(batch.noise_scale[j]):.6g}",
                    "first_timestep": int(batch.timesteps[j, 0]),
                    "condition_log_prob": f"{float(plan_log_prob['condition'][j]):.6f}",
                    "knobs_log_prob": f"{float(plan_log_prob['knobs'][j]):.6f}",
                    "chain_log_prob": f"{float(batch.log_prob[j].sum()):.6f}",
                }
                rows.append(row)
            progress.update(len(batch.image_index))
            log.info("round %03d: %d/%d images", round_index, len(rows), num_images)
    progress.close()
    with atomic_path(samples_csv) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer_csv = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer_csv.writeheader()
            writer_csv.writerows(rows)
    return {"images": num_images, "steps": settings.steps, "log_prob_convention": LOG_PROB_CONVENTION}


__all__ = ["write_round", "config_hash", "image_name"]
