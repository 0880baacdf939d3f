"""The common interface of the diffusion backends the sampler and the RL trainer drive.

A backend owns a denoising network and everything around it that is not the sampling chain:
the conditions it can be asked for (class names of the pixel model, prompts of Stable
Diffusion), one network evaluation (with classifier-free guidance inside the SD backend), the
decoder from latents to uint8 images, and the training noise schedule. The chain itself (DDIM
steps, log-probabilities) lives in :mod:`marsdiff.diffusion.scheduler_logprob` and
:mod:`marsdiff.diffusion.sampler`, identical for every backend.

This module also holds the pixel backend: the small class-conditional pixel-space UNet trained
by the ``pretrain_base`` stage (``results/models/base/``, loaded by
:func:`marsdiff.diffusion.pixel.load_pixel_model`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from marsdiff.diffusion.scheduler_logprob import DEFAULT_MIN_STD, DDIMLogProbScheduler
from marsdiff.devices import resolve_device
from marsdiff.errors import MarsdiffError

log = logging.getLogger(__name__)

BASE_MODEL_DIR = Path("results/models/base")
BASE_MODEL_META = "marsdiff_model.json"
# The command that creates the base model, quoted in "missing model" errors.
BUILD_BASE_MODEL_HINT = "build it with `snakemake --cores 2 pretrain_base`"


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
    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The network output (in the scheduler's prediction_type), float32, for one batch.

        ``timestep`` and ``condition`` are int64 tensors of shape (N,).
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

    def make_scheduler(self, eta: float = 1.0, min_std: float = DEFAULT_MIN_STD) -> DDIMLogProbScheduler:
        return DDIMLogProbScheduler.from_config(self.scheduler_config, eta=eta, min_std=min_std)


class PixelBackend(DiffusionBackend):
    """The embedded class-conditional pixel-space UNet (a diffusers UNet2DModel with class embeddings)."""

    kind = "pixel"

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler_config: Mapping[str, Any],
        meta: Mapping[str, Any],
        device: str | torch.device | None = "auto",
    ):
        device = resolve_device(device, "sampling.device")
        super().__init__(device, torch.float32)
        # The pixel model is small: float32 everywhere keeps log-probs reproducible.
        unet = unet.to(device)
        if next(unet.parameters()).dtype != torch.float32:
            unet = unet.float()
        self.unet = unet.eval()
        self.unet.requires_grad_(False)
        self._scheduler_config = dict(scheduler_config)
        self.meta = dict(meta)
        class_names = list(self.meta.get("class_names") or [])
        num_class_embeds = getattr(getattr(unet, "config", None), "num_class_embeds", None)
        if not class_names:
            class_names = [f"class_{i}" for i in range(int(num_class_embeds or 1))]
        if num_class_embeds is not None and len(class_names) > int(num_class_embeds):
            raise MarsdiffError(
                f"pixel model: {len(class_names)} class names but the UNet has only {num_class_embeds} class embeddings"
            )
        self._class_names = class_names
        self._conditional = num_class_embeds is not None
        size = int(self.meta.get("image_size") or unet.config.sample_size)
        channels = int(self.meta.get("channels") or unet.config.in_channels)
        self._latent_shape = (channels, size, size)

    def conditions(self) -> list[str]:
        return list(self._class_names)

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        labels = condition.to(self.device) if self._conditional else None
        out = self.unet(latents.to(self.model_dtype), timestep.to(self.device), class_labels=labels).sample
        return out.float()

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        return latents_to_uint8(latents)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "class_names": self.conditions()}


def _load_pixel_dir(model_dir: Path):
    """The documented base-model layout (unet/, scheduler/, marsdiff_model.json), for when
    :mod:`marsdiff.diffusion.pixel` is not importable."""
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(model_dir / "unet", local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(model_dir / "scheduler", local_files_only=True)
    meta = json.loads((model_dir / BASE_MODEL_META).read_text())
    return unet, scheduler, meta


def load_pixel_backend(model_dir: str | Path = BASE_MODEL_DIR, device: str | None = "auto") -> PixelBackend:
    """Load the base (or a tuned) pixel model directory; a missing model says how to build it."""
    model_dir = Path(model_dir)
    if not (model_dir / BASE_MODEL_META).is_file():
        raise MarsdiffError(f"no pixel diffusion model at {model_dir} (missing {BASE_MODEL_META}): {BUILD_BASE_MODEL_HINT}")
    try:
        from marsdiff.diffusion.pixel import load_pixel_model
    except ImportError:
        load_pixel_model = _load_pixel_dir
    try:
        unet, scheduler, meta = load_pixel_model(model_dir)
    except MarsdiffError:
        raise
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise MarsdiffError(f"{model_dir}: unreadable pixel model ({type(err).__name__}: {err})") from None
    meta = dict(meta)
    if meta.get("backend", "pixel") != "pixel":
        raise MarsdiffError(f"{model_dir / BASE_MODEL_META}: backend is {meta.get('backend')!r}, expected 'pixel'")
    scheduler_config = dict(scheduler.config) if hasattr(scheduler, "config") else dict(scheduler)
    return PixelBackend(unet, scheduler_config, meta, device=device)


def load_backend(
    model_cfg: Mapping[str, Any], model_dir: str | Path = BASE_MODEL_DIR, device: str | None = "auto"
) -> DiffusionBackend:
    """The backend named by ``model.backend``: the pixel model in ``model_dir`` or Stable Diffusion."""
    backend = model_cfg.get("backend", "pixel")
    if backend == "pixel":
        return load_pixel_backend(model_dir, device=device)
    if backend == "stable_diffusion":
        from marsdiff.diffusion.stable_diffusion import load_stable_diffusion

        return load_stable_diffusion(model_cfg.get("stable_diffusion") or {})
    raise MarsdiffError(f"model.backend: unknown backend {backend!r} (use 'pixel' or 'stable_diffusion')")
