"""The common interface of the diffusion backends the sampler and the RL trainer drive.

A backend owns a denoising network and everything around it that is not the sampling chain:
the conditions it can be asked for (class names of the pixel model, prompts of Stable
Diffusion), one network evaluation (with classifier-free guidance inside the SD backend), the
decoder from latents to uint8 images, and the training noise schedule. The chain itself (DDIM
steps, log-probabilities) lives in :mod:`marsdiff.diffusion.scheduler_logprob` and
:mod:`marsdiff.diffusion.sampler`, identical for every backend.

The backends themselves: :mod:`marsdiff.diffusion.pixel_backend` (the embedded pixel model) and
:mod:`marsdiff.diffusion.stable_diffusion`; :mod:`marsdiff.diffusion.loading` picks one from the
config.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from marsdiff.diffusion.scheduler_logprob import DDIMLogProbScheduler


def module_digest(*modules: torch.nn.Module) -> str:
    """SHA-256 (16 hex) of the modules' parameters and buffers: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            data = tensor.detach().cpu().contiguous()
            if data.dtype == torch.bfloat16:  # numpy has no bfloat16; hash the raw bits
                data = data.view(torch.int16)
            digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:16]


def latents_to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (N, C, H, W) -> uint8 (N, H, W) for grey, (N, H, W, 3) for RGB (the images.py layout)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    pixels = pixels.permute(0, 2, 3, 1).numpy()
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


class DiffusionBackend(ABC):
    """What the sampler and trainer need from a model; latents are float32 on ``device``.

    Subclasses set ``unet`` (the network RL updates), ``_scheduler_config`` (the training noise
    schedule, a diffusers scheduler config) and ``_latent_shape`` ((C, H, W) of one x_t).
    """

    kind: str = "base"
    unet: torch.nn.Module
    _scheduler_config: dict[str, Any]
    _latent_shape: tuple[int, int, int]

    def __init__(self, device: torch.device, model_dtype: torch.dtype):
        self.device = device
        self.model_dtype = model_dtype
        self._model_hash: str | None = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one latent x_t."""
        return self._latent_shape

    @property
    def scheduler_config(self) -> dict[str, Any]:
        """The training noise schedule (a copy: callers may modify it)."""
        return dict(self._scheduler_config)

    @property
    def policy(self) -> torch.nn.Module:
        """The network RL updates (the UNet); the trainer optimises its parameters."""
        return self.unet

    @abstractmethod
    def conditions(self) -> list[str]:
        """Names of the conditions (class names or prompts); a condition is an index into this."""

    @abstractmethod
    def predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        condition: torch.Tensor,
        guidance_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The network output (in the scheduler's prediction_type), float32, for one batch.

        ``timestep`` and ``condition`` are int64 tensors of shape (N,); ``guidance_scale`` (N,)
        overrides the backend's classifier-free guidance per row (ignored without guidance).
        """

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Final latents x_0 -> uint8 images (N, H, W) grey or (N, H, W, 3) RGB."""

    def _hashed_modules(self) -> list[torch.nn.Module]:
        return [self.policy]

    def model_hash(self) -> str:
        """Digest of the weights that produce the samples (cached: weights are fixed while sampling)."""
        if self._model_hash is None:
            self._model_hash = module_digest(*self._hashed_modules())
        return self._model_hash

    def describe(self) -> dict[str, Any]:
        """Backend facts stored next to trajectories (JSON-serialisable)."""
        return {"backend": self.kind, "latent_shape": list(self.latent_shape), "model_dtype": str(self.model_dtype)}

    def make_scheduler(self, *, eta: float, min_std: float) -> DDIMLogProbScheduler:
        return DDIMLogProbScheduler.from_config(self.scheduler_config, eta=eta, min_std=min_std)
