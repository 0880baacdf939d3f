"""The recording sampler: one DDIM (eta > 0) chain per image, every action and log-prob kept.

The actions of one image, in order:
  1. the generation plan (:mod:`marsdiff.diffusion.plan`): conditioning action and knobs drawn
     by the round's generation policy, with their log-probabilities;
  2. x_T ~ N(0, noise_scale^2 I), then T Gaussian denoising actions x_t -> x_{t-1}
     (:class:`~marsdiff.diffusion.scheduler_logprob.DDIMLogProbScheduler`) on the image's own
     timestep grid and noise level.
Every random draw of an image comes from its own generators (:mod:`marsdiff.diffusion.seeds`):
one for the plan, one for x_T and the steps. An image does not depend on the batch it was drawn
in, and at a given seed every policy starts from the same x_T with the same step noise. Re-scoring stored transitions is
:mod:`marsdiff.diffusion.rescoring`; writing a round to disk is :mod:`marsdiff.diffusion.round_files`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from marsdiff.config import filled_section
from marsdiff.diffusion.backends import DiffusionBackend
from marsdiff.diffusion.plan import FixedGeneration, GenerationPlan, GenerationPolicy
from marsdiff.diffusion.scheduler_logprob import power_timesteps
from marsdiff.diffusion.seeds import image_generators, image_seeds, plan_seeds
from marsdiff.errors import MarsdiffError

STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class SamplingSettings:
    """What shapes the chain, of the ``sampling:`` section filled from the schema (see its
    descriptions for meanings and defaults); ``store_dtype`` is ``store.dtype``. The round's size,
    processes and file compression are read by the stages that use them."""

    steps: int
    eta: float
    min_std: float
    batch_size: int
    seed: int
    class_distribution: Any
    store_dtype: str
    device: str

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SamplingSettings":
        """Build from (part of) a ``sampling:`` section; keys left out take the schema's defaults."""
        cfg = filled_section("sampling", cfg)
        return cls(
            steps=int(cfg["steps"]),
            eta=float(cfg["eta"]),
            min_std=float(cfg["min_std"]),
            batch_size=int(cfg["batch_size"]),
            seed=int(cfg["seed"]),
            class_distribution=cfg["class_distribution"],
            store_dtype=str(cfg["store"]["dtype"]),
            device=str(cfg["device"]),
        )


@dataclass
class TrajectoryBatch:
    """A batch of recorded chains (numpy, CPU); T = steps, K = plan actions."""

    image_index: np.ndarray  # (B,)
    seed: np.ndarray  # (B,)
    condition: np.ndarray  # (B,) the conditioning action
    latents: np.ndarray  # (B, T+1, C, H, W) x_T .. x_0, store dtype
    timesteps: np.ndarray  # (B, T) int64, each image's grid
    prev_timesteps: np.ndarray  # (B, T) int64, -1 = the clean image
    std: np.ndarray  # (B, T) sigma of each step
    eta: np.ndarray  # (B,)
    guidance_scale: np.ndarray  # (B,) (1.0 where the backend has no guidance)
    noise_scale: np.ndarray  # (B,)
    actions: np.ndarray  # (B, K) raw plan actions
    log_prob: np.ndarray  # (B, T) denoising log-probs, LOG_PROB_CONVENTION units
    plan_log_prob: dict[str, np.ndarray] = field(default_factory=dict)  # action type -> (B,) nats
    images: np.ndarray | None = None  # (B, H, W) or (B, H, W, 3) uint8


class RecordingSampler:
    """Samples and records chains of one backend under one generation policy."""

    def __init__(self, backend: DiffusionBackend, settings: SamplingSettings, policy: GenerationPolicy | None = None):
        self.backend = backend
        self.settings = settings
        self.scheduler = backend.make_scheduler(eta=self.settings.eta, min_std=self.settings.min_std)
        self.timesteps = self.scheduler.set_timesteps(self.settings.steps)
        self.policy = policy or FixedGeneration(backend.conditions(), self.settings.class_distribution)

    def sample(self, num_images: int, round_index: int = 0, start_index: int = 0) -> Iterator[TrajectoryBatch]:
        """Yield recorded batches for images ``start_index .. start_index + num_images - 1``."""
        bs = max(1, self.settings.batch_size)
        for lo in range(0, num_images, bs):
            hi = min(num_images, lo + bs)
            yield self._sample_batch(np.arange(start_index + lo, start_index + hi), round_index)

    def _grids(self, plan: GenerationPlan) -> tuple[torch.Tensor, torch.Tensor]:
        batch = len(plan)
        if "timestep_power" in plan.knobs:
            return power_timesteps(self.scheduler.num_train_timesteps, self.settings.steps, plan.knobs["timestep_power"])
        grid = self.timesteps.unsqueeze(0).expand(batch, -1)
        return grid.clone(), self.scheduler.prev_timesteps.unsqueeze(0).expand(batch, -1).clone()

    # inference_mode, not just no_grad: no autograd bookkeeping at all (version counters, views).
    # Nothing sampled here is differentiated: the update re-scores the stored transitions.
    @torch.inference_mode()
    def _sample_batch(self, indices: np.ndarray, round_index: int) -> TrajectoryBatch:
        device, shape = self.backend.device, self.backend.latent_shape
        store = STORE_DTYPES[self.settings.store_dtype]
        seeds = image_seeds(self.settings.seed, round_index, indices)
        generators = image_generators(seeds)
        plan = self.policy.plan(image_generators(plan_seeds(seeds)))
        condition = plan.condition.long()
        if int(condition.max()) >= len(self.backend.conditions()) or int(condition.min()) < 0:
            raise MarsdiffError(f"condition index out of range 0..{len(self.backend.conditions()) - 1}")
        batch = len(indices)
        eta = plan.knobs.get("eta", torch.full((batch,), self.settings.eta)).float()
        noise_scale = plan.knobs.get("noise_scale", torch.ones(batch)).float()
        guidance = plan.knobs.get("guidance_scale")
        grid, prev_grid = self._grids(plan)

        def noise() -> torch.Tensor:
            return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)

        scale = noise_scale.view(-1, 1, 1, 1).to(device)
        x = (noise() * scale).to(store).float()
        cond_dev = condition.to(device)
        eta_dev = eta.to(device)
        chain, log_probs, stds = [x.to(store)], [], []
        for k in range(self.settings.steps):
            t, prev = grid[:, k].to(device), prev_grid[:, k].to(device)
            model_output = self.backend.predict(x, t, cond_dev, guidance_scale=guidance)
            out = self.scheduler.step(model_output, t, x, noise=noise(), sample_dtype=store, prev_timestep=prev, eta=eta_dev)
            x = out.prev_sample
            chain.append(x.to(store))
            log_probs.append(out.log_prob)
            stds.append(out.std)
        images = self.backend.decode(x)
        default_guidance = float(getattr(self.backend, "guidance_scale", 1.0))
        return TrajectoryBatch(
            image_index=indices,
            seed=seeds,
            condition=condition.numpy().astype(np.int64),
            latents=torch.stack(chain, dim=1).cpu().numpy(),
            timesteps=grid.numpy().astype(np.int64),
            prev_timesteps=prev_grid.numpy().astype(np.int64),
            std=torch.stack(stds, dim=1).float().cpu().numpy(),
            eta=eta.numpy().astype(np.float32),
            guidance_scale=(guidance.float().numpy() if guidance is not None else np.full(batch, default_guidance)).astype(np.float32),
            noise_scale=noise_scale.numpy().astype(np.float32),
            actions=plan.actions.float().numpy().reshape(batch, -1),
            log_prob=torch.stack(log_probs, dim=1).float().cpu().numpy(),
            plan_log_prob={name: value.detach().float().numpy() for name, value in plan.log_prob.items()},
            images=images,
        )


__all__ = ["SamplingSettings", "RecordingSampler", "TrajectoryBatch", "STORE_DTYPES"]
