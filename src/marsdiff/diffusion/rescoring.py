"""Re-scoring stored transitions under the current weights (what the RL updates differentiate).

:func:`transition_log_prob` is the single function that scores a stored transition
x_t -> x_{t-1}; the sampler takes its steps with the same scheduler maths, so re-evaluating with
unchanged weights reproduces the stored log-probs (the PPO ratio is exactly 1 before the first
update). :func:`scheduler_for_trajectories` rebuilds the exact step distribution of a round file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from marsdiff.diffusion.backends import DiffusionBackend
from marsdiff.diffusion.scheduler_logprob import DDIMLogProbScheduler, DDIMLogProbStepOutput
from marsdiff.errors import MarsdiffError


def transition_log_prob(
    backend: DiffusionBackend,
    scheduler: DDIMLogProbScheduler,
    latents_t: torch.Tensor,
    latents_prev: torch.Tensor,
    timestep: torch.Tensor,
    condition: torch.Tensor,
    prev_timestep: torch.Tensor | None = None,
    eta: torch.Tensor | None = None,
    guidance_scale: torch.Tensor | None = None,
) -> DDIMLogProbStepOutput:
    """Score stored transitions x_t -> x_{t-1} under the backend's current weights.

    ``timestep``, ``condition`` and the optional per-image ``prev_timestep``, ``eta`` and
    ``guidance_scale`` have one entry per row (without them the scheduler's grid and eta and
    the backend's guidance apply). Gradients flow to the backend's policy when called outside
    ``torch.no_grad``. Returns mean, std and ``log_prob`` (LOG_PROB_CONVENTION units).
    """
    device = backend.device
    latents_t = latents_t.to(device=device, dtype=torch.float32)
    latents_prev = latents_prev.to(device=device, dtype=torch.float32)
    timestep = timestep.to(device=device, dtype=torch.long)
    if guidance_scale is not None:
        guidance_scale = guidance_scale.to(device=device, dtype=torch.float32)
    model_output = backend.predict(latents_t, timestep, condition.to(device=device, dtype=torch.long), guidance_scale=guidance_scale)
    if prev_timestep is not None:
        prev_timestep = prev_timestep.to(device=device, dtype=torch.long)
    if eta is not None:
        eta = eta.to(device=device, dtype=torch.float32)
    return scheduler.step(model_output, timestep, latents_t, prev_sample=latents_prev, prev_timestep=prev_timestep, eta=eta)


def scheduler_for_trajectories(trajectories: Any) -> DDIMLogProbScheduler:
    """The exact step distribution a round file was sampled with (for the trainer's re-evaluation).

    ``trajectories`` is an open :class:`marsdiff.io.trajectories.TrajectoryFile`. The scheduler
    is rebuilt from the stored training config, eta and min_std, its grid set to the stored
    number of steps, and the stored per-image sigmas are checked against the rebuilt ones.
    """
    stored = dict(trajectories.scheduler_config)
    ours = stored.pop("marsdiff", None)
    if not ours:
        raise MarsdiffError(f"{trajectories.path}: no marsdiff scheduler settings stored")
    scheduler = DDIMLogProbScheduler.from_config(stored, eta=float(ours["eta"]), min_std=float(ours["min_std"]))
    scheduler.set_timesteps(trajectories.num_steps)
    if scheduler.config["alphas_cumprod_sha"] != ours["alphas_cumprod_sha"]:
        raise MarsdiffError(f"{trajectories.path}: stored noise schedule cannot be rebuilt (different diffusers version?)")
    timesteps = torch.as_tensor(trajectories.array("timesteps"))
    prev = torch.as_tensor(trajectories.array("prev_timesteps"))
    eta = torch.as_tensor(trajectories.array("knobs/eta")).float()
    n, steps = timesteps.shape
    rebuilt = scheduler.std(timesteps.reshape(-1), prev_timestep=prev.reshape(-1), eta=eta.repeat_interleave(steps))
    if not np.allclose(rebuilt.reshape(n, steps).numpy(), trajectories.array("std"), rtol=1e-6, atol=0):
        raise MarsdiffError(f"{trajectories.path}: stored step sigmas differ from the rebuilt scheduler")
    return scheduler


__all__ = ["transition_log_prob", "scheduler_for_trajectories"]
