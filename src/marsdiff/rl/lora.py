"""LORA_UNET: a peft LoRA adapter on the backend's UNet, the policy of the LoRA mode.

The adapter is injected in place (``peft.inject_adapter_in_model``), so the backend keeps
predicting through the same module and the recording sampler and re-scoring need no change.
Adapter weights are float32 even when the base UNet runs in half precision: tiny LoRA updates
vanish in fp16 (peft casts the layer input to the adapter's dtype).

On disk (one round's ``policy/lora/``): ``pytorch_lora_weights.safetensors`` with keys
``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (the layout of diffusers' LoRA loaders, so a
Stable Diffusion adapter loads with ``pipe.load_lora_weights(dir)``) and
``adapter_config.json`` (the peft LoraConfig: target modules, rank, alpha, dropout; and the
weights' sha256, checked on load).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import write_json
from marsdiff.io.reading import load_safetensors, read_json, rerun_hint
from marsdiff.io.weights import save_safetensors

#: The rule that writes a round's policy (adapter included): what to --forcerun when it is bad.
WRITER_RULE = "update_round"
#: diffusers' safetensors metadata key for the adapter config (diffusers.loaders.lora_base).
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
CONFIG_NAME = "adapter_config.json"
# Defaults per backend: the pixel UNet's resnet convolutions and time projections (the small
# preset has no attention); Stable Diffusion's attention projections, as DDPO and diffusers do.
DEFAULT_TARGETS = {
    "pixel": ["conv1", "conv2", "time_emb_proj"],
    "stable_diffusion": ["to_q", "to_k", "to_v", "to_out.0"],
}


@dataclass
class LoraSettings:
    """The ``lora:`` section of an experiment."""

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)
    init_seed: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, backend_kind: str) -> "LoraSettings":
        cfg = dict(cfg or {})
        settings = cls(
            rank=int(cfg.get("rank", cls.rank)),
            alpha=float(cfg.get("alpha", cls.alpha)),
            dropout=float(cfg.get("dropout", cls.dropout)),
            target_modules=list(cfg.get("target_modules") or DEFAULT_TARGETS.get(backend_kind, [])),
            init_seed=int(cfg.get("init_seed", cls.init_seed)),
        )
        if settings.rank < 1:
            raise MarsdiffError(f"lora.rank must be >= 1, got {settings.rank}")
        if not 0.0 <= settings.dropout < 1.0:
            raise MarsdiffError(f"lora.dropout must be in [0, 1), got {settings.dropout}")
        if not settings.target_modules:
            raise MarsdiffError("lora.target_modules: no target modules for this backend")
        return settings

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=list(self.target_modules),
            init_lora_weights=True,
        )


def lora_parameters(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for name, p in unet.named_parameters() if "lora_" in name]


def attach_lora(unet: torch.nn.Module, settings: LoraSettings) -> list[torch.nn.Parameter]:
    """Inject a fresh adapter (B = 0: the adapted UNet starts equal to the base); returns its parameters.

    peft initialises A randomly from torch's global generator: seeded here so a round is reproducible.
    """
    from peft import inject_adapter_in_model

    if lora_parameters(unet):
        raise MarsdiffError("the UNet already carries a LoRA adapter")
    matched = [name for name, _ in unet.named_modules() if any(name == t or name.endswith("." + t) for t in settings.target_modules)]
    if not matched:
        raise MarsdiffError(f"lora.target_modules {settings.target_modules}: no module of this UNet matches")
    state = torch.random.get_rng_state()
    torch.manual_seed(settings.init_seed)
    try:
        inject_adapter_in_model(settings.peft_config(), unet)
    finally:
        torch.random.set_rng_state(state)
    params = lora_parameters(unet)
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def set_adapter_enabled(unet: torch.nn.Module, enabled: bool) -> None:
    """Switch every LoRA layer on or off (off: the base model, for the KL penalty)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(enabled)


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights with diffusers' ``unet.`` prefix (peft's adapter name removed)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    if not state:
        raise MarsdiffError("the UNet has no LoRA adapter to save")
    return {f"unet.{key}": value.detach().float().contiguous().cpu() for key, value in state.items()}


def save_lora(unet: torch.nn.Module, settings: LoraSettings, out_dir: str | os.PathLike) -> None:
    """Write the adapter as diffusers' LoRA writer would (weights + the LoraConfig as safetensors
    metadata, so ``pipe.load_lora_weights(out_dir)`` restores rank and alpha exactly), but
    byte-stable (sorted metadata: :func:`marsdiff.io.weights.save_safetensors`); the weights'
    sha256 goes into ``adapter_config.json``, checked by :func:`load_lora`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = settings.peft_config().to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    # The metadata diffusers' save_lora_weights stores: format, and the adapter config with its
    # keys prefixed by the component ("unet.r", ...) as sorted JSON.
    packed = {f"unet.{key}": value for key, value in config.items()}
    metadata = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}
    digest = save_safetensors(lora_state_dict(unet), out_dir / WEIGHTS_NAME, metadata)
    write_json(out_dir / CONFIG_NAME, {"marsdiff": {"rank": settings.rank, "alpha": settings.alpha,
                                                   "dropout": settings.dropout, "target_modules": settings.target_modules,
                                                   "init_seed": settings.init_seed}, "peft": config,
                                       "weights_sha256": digest})


def load_lora(unet: torch.nn.Module, lora_dir: str | os.PathLike) -> LoraSettings:
    """Attach the saved adapter to ``unet`` (safetensors only); returns its settings."""
    from peft import set_peft_model_state_dict

    lora_dir = Path(lora_dir)
    weights, config_path = lora_dir / WEIGHTS_NAME, lora_dir / CONFIG_NAME
    for path in (weights, config_path):
        if not path.is_file():
            raise MarsdiffError(f"{path}: LoRA adapter file missing (policies are saved as safetensors + JSON); "
                                f"{rerun_hint(WRITER_RULE)}")
    config = read_json(config_path, "LoRA adapter config", WRITER_RULE, keys=("marsdiff",))
    try:
        settings = LoraSettings(**config["marsdiff"])
    except TypeError as err:
        raise MarsdiffError(f"{config_path}: 'marsdiff' entry does not describe a LoRA adapter ({err}); "
                            f"{rerun_hint(WRITER_RULE)}") from None
    tensors = load_safetensors(weights, "LoRA adapter weights", WRITER_RULE, config.get("weights_sha256"), config_path)
    attach_lora(unet, settings)
    state = {key.removeprefix("unet."): value for key, value in tensors.items()}
    try:
        result = set_peft_model_state_dict(unet, state)
    except RuntimeError as err:  # a tensor of another shape than the settings give
        raise MarsdiffError(f"{weights}: adapter weights do not fit the rank in {CONFIG_NAME} "
                            f"({' '.join(str(err).split())[:160]}); {rerun_hint(WRITER_RULE)}") from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise MarsdiffError(f"{weights}: {len(unexpected)} adapter weights do not fit this UNet (e.g. {unexpected[0]}); "
                            f"{rerun_hint(WRITER_RULE)}")
    for p in lora_parameters(unet):
        p.data = p.data.float()
    return settings
