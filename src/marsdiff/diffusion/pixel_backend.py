"""The pixel backend: the embedded class-conditional pixel-space UNet as a diffusion backend.

The model is the small ``UNet2DModel`` trained by the ``pretrain_base`` stage
(``results/models/base/``, layout in :mod:`marsdiff.diffusion.pixel`); a round's LoRA adapter,
when there is one, is attached by :mod:`marsdiff.rl.lora`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from marsdiff.devices import resolve_device
from marsdiff.diffusion.backends import DiffusionBackend, latents_to_uint8
from marsdiff.errors import MarsdiffError

log = logging.getLogger(__name__)

BASE_MODEL_DIR = Path("results/models/base")
BASE_MODEL_META = "marsdiff_model.json"
# The command that creates the base model, quoted in "missing model" errors.
BUILD_BASE_MODEL_HINT = "build it with `snakemake --cores 2 pretrain_base`"


class PixelBackend(DiffusionBackend):
    """The embedded class-conditional pixel-space UNet (a diffusers UNet2DModel with class embeddings)."""

    kind = "pixel"

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler_config: Mapping[str, Any],
        meta: Mapping[str, Any],
        device: str | torch.device | None,
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

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor,
                guidance_scale: torch.Tensor | None = None) -> torch.Tensor:
        # The pixel model is trained without a null class: there is no guidance to scale.
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


# The package __init__ files of diffusers' ``models.unets`` and ``models.transformers`` import every
# model diffusers ships (about 150 modules): through them peft, transformers' modelling code,
# torchvision and scipy.stats come in, none of which the pixel UNet (UNet2DModel and the two
# transformer blocks its block factory imports) needs. Measured on the 2-core machine: importing
# UNet2DModel costs 8.4-9.2 CPU seconds with them, 4.7-4.9 without. diffusers' ModelMixin.to()
# still imports diffusers.hooks and through it peft (and diffusers' scheduler loading imports every
# "compatible" scheduler, scipy.stats among them), so a whole sample_round start-up gains less:
# 7.0-7.8 CPU s against 7.6-9.2 (issue 22).
DEFERRED_DIFFUSERS_PACKAGES = ("diffusers.models.unets", "diffusers.models.transformers")


def defer_diffusers_model_packages() -> None:
    """Make :data:`DEFERRED_DIFFUSERS_PACKAGES` lazy packages, before anything imports them.

    Each is registered as its real package (same spec, path and loader) whose ``__init__`` has not
    run yet: its submodules import on demand as usual, and the first lookup of a name the
    ``__init__`` defines (``from diffusers.models.unets import UNet2DConditionModel``) runs the
    ``__init__`` in place, so every later user sees the complete package. A package already
    imported is left alone.
    """
    import importlib.util
    import sys

    for name in DEFERRED_DIFFUSERS_PACKAGES:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except ImportError:  # no diffusers: the loader below reports it
            return
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            continue
        package = importlib.util.module_from_spec(spec)

        def complete(attribute: str, _package=package, _spec=spec):
            # remove the hook first: names the __init__ has not defined yet raise AttributeError as usual
            _package.__dict__.pop("__getattr__", None)
            _spec.loader.exec_module(_package)
            return getattr(_package, attribute)

        package.__getattr__ = complete
        sys.modules[name] = package


def load_pixel_backend(model_dir: str | Path = BASE_MODEL_DIR, *, device: str | None) -> PixelBackend:
    """Load the base (or a tuned) pixel model directory; a missing model says how to build it."""
    model_dir = Path(model_dir)
    if not (model_dir / BASE_MODEL_META).is_file():
        raise MarsdiffError(f"no pixel diffusion model at {model_dir} (missing {BASE_MODEL_META}): {BUILD_BASE_MODEL_HINT}")
    defer_diffusers_model_packages()
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
