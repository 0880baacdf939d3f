"""The Stable Diffusion backend: a diffusers SD pipeline driven by marsdiff's recording sampler.

Owns loading (``model.stable_diffusion.pretrained``: a hub id from the local Hugging Face cache
or a local directory; never a download unless ``allow_download`` is set), the prompt set (one
prompt per line of ``prompt_file``, each line one category the sampler can draw), prompt
encoding (computed once), classifier-free guidance inside :meth:`predict`, precision (fp16/bf16
on a GPU, float32 on a CPU), the memory options for smaller cards (``gradient_checkpointing`` of
the UNet, ``autocast`` of every UNet call) and VAE decoding. The denoising chain itself is the shared DDIM
sampler of :mod:`marsdiff.diffusion.sampler`; the pipeline's own ``__call__`` is never used.
Guidance may be set per image (the scheduler policy's ``guidance_scale`` knob).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from marsdiff.devices import resolve_device
from marsdiff.diffusion.backends import DiffusionBackend, latents_to_uint8, module_digest
from marsdiff.errors import MarsdiffError

log = logging.getLogger(__name__)

PACKAGED_PROMPTS = "prompts_craters.txt"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_AUTOCAST = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def read_prompts(prompt_file: str | os.PathLike | None) -> list[str]:
    """Prompts of ``prompt_file`` (None: the packaged crater prompts); '#' lines are comments."""
    if prompt_file is None:
        text = importlib.resources.files("marsdiff").joinpath("assets", PACKAGED_PROMPTS).read_text()
        source = f"marsdiff/assets/{PACKAGED_PROMPTS}"
    else:
        path = Path(prompt_file)
        if not path.is_file():
            raise MarsdiffError(f"model.stable_diffusion.prompt_file: {path} not found")
        text, source = path.read_text(), str(path)
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise MarsdiffError(f"{source}: no prompts (one prompt per line, '#' starts a comment)")
    if len(set(prompts)) != len(prompts):
        raise MarsdiffError(f"{source}: duplicate prompts (each line is a category and must be unique)")
    return prompts


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': float16 on CUDA, float32 on CPU. Half precision is never used on a CPU (slow, and
    the log-prob reproduction the RL stages rely on is only guaranteed in float32 there)."""
    if device.type != "cuda":
        if name not in ("auto", "float32"):
            log.warning("model.stable_diffusion.dtype %s ignored on %s: using float32", name, device)
        return torch.float32
    if name == "auto":
        return torch.float16
    if name not in _DTYPES:
        raise MarsdiffError(f"model.stable_diffusion.dtype: {name!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def resolve_autocast(name: str | None) -> torch.dtype | None:
    """``model.stable_diffusion.autocast``: None (off) or the half precision of torch.autocast."""
    if name is None:
        return None
    if name not in _AUTOCAST:
        raise MarsdiffError(f"model.stable_diffusion.autocast: {name!r} is not one of null, {', '.join(_AUTOCAST)}")
    return _AUTOCAST[name]


def _forward_ad_level() -> int:
    """The innermost torch.autograd.forward_ad dual level, -1 outside any (torch keeps it in a
    module global; there is no public accessor)."""
    import torch.autograd.forward_ad as forward_ad

    return int(getattr(forward_ad, "_current_level", -1))


def _is_local_reference(pretrained: str) -> bool:
    # A hub id is "org/name"; anything that exists on disk or looks like a path is local.
    return os.path.exists(pretrained) or pretrained.startswith(("/", ".", "~")) or pretrained.count("/") != 1


def load_pipeline_components(pretrained: str, dtype: torch.dtype, *, allow_download: bool):
    """Load the SD pipeline (without safety checker) from a local directory or the HF cache."""
    from diffusers import StableDiffusionPipeline

    pretrained = os.path.expanduser(str(pretrained))
    local = _is_local_reference(pretrained)
    if local and not (Path(pretrained) / "model_index.json").is_file():
        raise MarsdiffError(
            f"model.stable_diffusion.pretrained: {pretrained} is not a diffusers pipeline directory (no model_index.json)"
        )
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            pretrained,
            dtype=dtype,
            local_files_only=local or not allow_download,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError, EnvironmentError) as err:
        if local:
            raise MarsdiffError(f"model.stable_diffusion.pretrained: cannot load {pretrained} ({type(err).__name__}: {err})") from None
        raise MarsdiffError(
            f"model.stable_diffusion.pretrained: '{pretrained}' is not in the local Hugging Face cache and marsdiff "
            f"downloads nothing; fetch it once (`huggingface-cli download {pretrained}`), point pretrained at a local "
            f"directory, or set model.stable_diffusion.allow_download: true"
        ) from None
    return pipe


class StableDiffusionBackend(DiffusionBackend):
    """A latent-diffusion backend: prompts are the conditions, CFG happens in :meth:`predict`."""

    kind = "stable_diffusion"

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        scheduler_config: Mapping[str, Any],
        prompts: list[str],
        *,
        guidance_scale: float,
        resolution: int,
        device: torch.device | str,
        dtype: torch.dtype,
        negative_prompt: str,
        source: str,
        gradient_checkpointing: bool,
        autocast: torch.dtype | None,
    ):
        device = resolve_device(device, "model.stable_diffusion.device")
        super().__init__(device, dtype)
        self.unet = unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
        # Gradient checkpointing keeps only each UNet block's inputs for the backward pass and
        # recomputes the rest there: the update's memory per minibatch transition drops, its time
        # grows by about one forward. diffusers only checkpoints while gradients are recorded, so
        # sampling (no_grad) is unchanged. Its default function is torch's non-reentrant
        # checkpoint, which also supports TRPO's double backward and forward-mode products.
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if self.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        # Autocast runs every UNet call in half precision (weights stay in ``dtype``). The
        # recorded log-probs then come from half-precision means; the update recomputes them
        # through the same predict(), so the ratio at the old policy stays 1.
        self.autocast = autocast
        self.vae = vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._scheduler_config = dict(scheduler_config)
        self.prompts = list(prompts)
        self.guidance_scale = float(guidance_scale)
        self.source = source
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if resolution % self.vae_scale_factor:
            raise MarsdiffError(
                f"model.stable_diffusion.resolution: {resolution} is not a multiple of the VAE factor {self.vae_scale_factor}"
            )
        self.resolution = int(resolution)
        side = self.resolution // self.vae_scale_factor
        self._latent_shape = (int(self.unet.config.in_channels), side, side)
        self.prompt_embeds = self._encode(self.prompts)
        self.negative_embeds = self._encode([negative_prompt])

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.model_dtype)

    def conditions(self) -> list[str]:
        return list(self.prompts)

    def _precision(self):
        # torch.autocast has no forward-mode AD rules (a float32 tangent meets a half-precision
        # primal in the first matmul): TRPO's gauss_newton J v, the one forward-mode pass, runs in
        # the weights' precision. It only shapes the step direction through the Fisher model; the
        # ratio, the surrogate and the line search's KL are all evaluated under autocast.
        if self.autocast is None or _forward_ad_level() >= 0:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        condition: torch.Tensor,
        guidance_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # The one place the UNet runs, for the sampler and for the update's log-prob recompute
        # (marsdiff.diffusion.rescoring) alike: both see the same precision.
        cond = self.prompt_embeds[condition.to(self.device)]
        x = latents.to(self.model_dtype)
        t = timestep.to(self.device)
        if guidance_scale is None:
            if self.guidance_scale == 1.0:
                with self._precision():
                    return self.unet(x, t, encoder_hidden_states=cond).sample.float()
            scale = torch.full((x.shape[0],), self.guidance_scale, device=self.device)
        else:
            scale = guidance_scale.to(device=self.device, dtype=torch.float32)
        uncond = self.negative_embeds.expand(cond.shape[0], -1, -1)
        # One UNet call on [uncond; cond], as the diffusers pipelines do.
        with self._precision():
            out = self.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
        out_uncond, out_cond = out.float().chunk(2)
        return out_uncond + scale.view(-1, 1, 1, 1) * (out_cond - out_uncond)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        scaled = latents.to(self.model_dtype) / self.vae.config.scaling_factor
        return latents_to_uint8(self.vae.decode(scaled).sample)

    def model_hash(self) -> str:
        if self._model_hash is None:
            # The UNet is the policy; VAE and text encoder are frozen parts of the same checkpoint.
            self._model_hash = module_digest(self.unet, self.vae, self.text_encoder)
        return self._model_hash

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "pretrained": self.source,
            "guidance_scale": self.guidance_scale,
            "resolution": self.resolution,
            "prompts": self.prompts,
            # the precision of the recorded log-probs (gradient checkpointing changes none)
            "autocast": None if self.autocast is None else str(self.autocast),
        }


def load_stable_diffusion(cfg: Mapping[str, Any]) -> StableDiffusionBackend:
    """Build the backend from the ``model.stable_diffusion`` config section.

    Keys the section leaves out take the schema's defaults. The section is filled but not
    validated here: the workflow validated it when the Snakefile was parsed, and the tiny test
    pipelines this loader also builds run below the schema's 64 px minimum resolution.
    """
    from marsdiff.config import fill_defaults, section_schema

    cfg = dict(cfg)
    fill_defaults(cfg, section_schema("model.stable_diffusion"))
    device = resolve_device(cfg["device"], "model.stable_diffusion.device")
    dtype = resolve_dtype(str(cfg["dtype"]), device)
    autocast = resolve_autocast(cfg["autocast"])
    pretrained = str(cfg["pretrained"])
    pipe = load_pipeline_components(pretrained, dtype, allow_download=bool(cfg["allow_download"]))
    prompts = read_prompts(cfg["prompt_file"])
    log.info("stable diffusion %s on %s (%s%s%s), %d prompts", pretrained, device, dtype,
             f", autocast {autocast}" if autocast is not None else "",
             ", gradient checkpointing" if cfg["gradient_checkpointing"] else "", len(prompts))
    return StableDiffusionBackend(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler_config=dict(pipe.scheduler.config),
        prompts=prompts,
        guidance_scale=float(cfg["guidance_scale"]),
        resolution=int(cfg["resolution"]),
        device=device,
        dtype=dtype,
        negative_prompt=str(cfg["negative_prompt"]),
        source=pretrained,
        gradient_checkpointing=bool(cfg["gradient_checkpointing"]),
        autocast=autocast,
    )
