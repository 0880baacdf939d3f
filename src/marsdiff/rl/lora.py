"""LORA_UNET: a peft LoRA adapter on the backend's UNet, the policy of the LoRA mode.

The adapter is injected in place (``peft.inject_adapter_in_model``), so the backend keeps
predicting through the same module and the recording sampler and re-scoring need no change.
Adapter weights are float32 even when the base UNet runs in half precision: tiny LoRA updates
vanish in fp16 (peft casts the layer input to the adapter's dtype).

On disk (one round's ``policy/lora/``), a plain peft adapter that standard tools load as it is:

* ``adapter_config.json``: the peft ``LoraConfig`` (``peft_type: "LORA"``, ``r``, ``lora_alpha``,
  ``target_modules``...), exactly what ``PeftModel.save_pretrained`` writes, so
  ``PeftModel.from_pretrained(unet, dir)`` reads it;
* ``adapter_model.safetensors``: the weights with peft's keys
  (``base_model.model.<module>.lora_A.weight``), what ``PeftModel.from_pretrained`` loads;
* ``pytorch_lora_weights.safetensors``: the same weights with diffusers' keys
  (``unet.<module>.lora_A.weight``) and the LoraConfig as safetensors metadata, what
  ``pipe.load_lora_weights(dir)`` loads (diffusers prefers this name when both files are there).
  One file cannot serve both loaders: each expects its own key prefix;
* ``marsdiff_adapter.json``: marsdiff's own settings (``init_seed`` included) and the sha256 of
  the three files above, checked by :func:`load_lora` before anything is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import write_json
from marsdiff.io.digests import file_digest
from marsdiff.io.reading import load_safetensors, read_json, rerun_hint, verify_sha256
from marsdiff.io.weights import save_safetensors

#: The rule that writes a round's policy (adapter included): what to --forcerun when it is bad.
WRITER_RULE = "update_round"
#: diffusers' safetensors metadata key for the adapter config (diffusers.loaders.lora_base).
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
#: diffusers' LoRA weights file (``unet.``-prefixed keys), what ``pipe.load_lora_weights`` reads.
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
#: peft's adapter files, what ``PeftModel.from_pretrained`` reads.
CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
#: marsdiff's settings and the sha256 of the files above.
MARSDIFF_NAME = "marsdiff_adapter.json"
#: The key prefix of peft's saved weights (PeftModel wraps the UNet as base_model.model).
PEFT_PREFIX = "base_model.model."


@dataclass
class LoraSettings:
    """The ``lora:`` section of an experiment, its target modules resolved for one backend
    (keys, defaults and ranges: the schema)."""

    rank: int
    alpha: float
    dropout: float
    target_modules: list[str]
    init_seed: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], backend_kind: str) -> "LoraSettings":
        """From the schema-filled section (:func:`marsdiff.rl.experiments.experiment_settings`);
        ``target_modules`` is one list, or a list per backend kind."""
        targets = cfg["target_modules"]
        if isinstance(targets, Mapping):  # the schema requires a list for every backend kind
            targets = targets[backend_kind]
        return cls(rank=int(cfg["rank"]), alpha=float(cfg["alpha"]), dropout=float(cfg["dropout"]),
                   target_modules=list(targets), init_seed=int(cfg["init_seed"]))

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


def peft_adapter_config(settings: LoraSettings) -> dict[str, Any]:
    """The LoraConfig as ``PeftModel.save_pretrained`` writes it (sets as sorted lists, inference mode)."""
    config = settings.peft_config().to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    # peft's own writer stores the config of an adapter for use, not for further training.
    config["inference_mode"] = True
    return json.loads(json.dumps(config))  # enums (peft_type) to plain strings


def save_lora(unet: torch.nn.Module, settings: LoraSettings, out_dir: str | os.PathLike) -> None:
    """Write the adapter as peft's and diffusers' writers would (layout in the module docstring),
    but byte-stable (sorted metadata: :func:`marsdiff.io.weights.save_safetensors`); the files'
    sha256 go into ``marsdiff_adapter.json``, checked by :func:`load_lora`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = peft_adapter_config(settings)
    # The metadata diffusers' save_lora_weights stores: format, and the adapter config with its
    # keys prefixed by the component ("unet.r", ...) as sorted JSON; it restores rank and alpha.
    packed = {f"unet.{key}": value for key, value in config.items()}
    metadata = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}
    diffusers_state = lora_state_dict(unet)
    peft_state = {PEFT_PREFIX + key.removeprefix("unet."): value for key, value in diffusers_state.items()}
    hashes = {
        WEIGHTS_NAME: save_safetensors(diffusers_state, out_dir / WEIGHTS_NAME, metadata),
        PEFT_WEIGHTS_NAME: save_safetensors(peft_state, out_dir / PEFT_WEIGHTS_NAME, {"format": "pt"}),
    }
    write_json(out_dir / CONFIG_NAME, config)
    hashes[CONFIG_NAME] = file_digest(out_dir / CONFIG_NAME)
    write_json(out_dir / MARSDIFF_NAME, {
        "settings": {"rank": settings.rank, "alpha": settings.alpha, "dropout": settings.dropout,
                     "target_modules": settings.target_modules, "init_seed": settings.init_seed},
        "files_sha256": hashes,
    })


def load_lora(unet: torch.nn.Module, lora_dir: str | os.PathLike) -> LoraSettings:
    """Attach the saved adapter to ``unet`` (safetensors only); returns its settings.

    Every file of the folder is checked against its sha256 first, the peft copy too although
    marsdiff reads the diffusers one: a user loading the folder with peft must get these weights.
    """
    from peft import set_peft_model_state_dict

    lora_dir = Path(lora_dir)
    meta_path = lora_dir / MARSDIFF_NAME
    for path in (lora_dir / WEIGHTS_NAME, lora_dir / PEFT_WEIGHTS_NAME, lora_dir / CONFIG_NAME, meta_path):
        if not path.is_file():
            raise MarsdiffError(f"{path}: LoRA adapter file missing (adapters are saved as a peft adapter plus "
                                f"{MARSDIFF_NAME}); {rerun_hint(WRITER_RULE)}")
    meta = read_json(meta_path, "marsdiff adapter settings", WRITER_RULE, keys=("settings",))
    hashes = meta.get("files_sha256") if isinstance(meta.get("files_sha256"), dict) else {}
    try:
        settings = LoraSettings(**meta["settings"])
    except TypeError as err:
        raise MarsdiffError(f"{meta_path}: 'settings' does not describe a LoRA adapter ({err}); "
                            f"{rerun_hint(WRITER_RULE)}") from None
    # marsdiff reads its settings from its own file; peft's config is only checked unchanged
    # (it was written from the same settings), so what peft users load is what was trained.
    verify_sha256(lora_dir / CONFIG_NAME, hashes.get(CONFIG_NAME), meta_path, WRITER_RULE)
    peft_tensors = load_safetensors(lora_dir / PEFT_WEIGHTS_NAME, "LoRA adapter weights (peft)", WRITER_RULE,
                                    hashes.get(PEFT_WEIGHTS_NAME), meta_path)
    weights = lora_dir / WEIGHTS_NAME
    tensors = load_safetensors(weights, "LoRA adapter weights", WRITER_RULE, hashes.get(WEIGHTS_NAME), meta_path)
    state = {key.removeprefix("unet."): value for key, value in tensors.items()}
    # Both copies hash-check; they must also hold the same tensors (a hand-edited folder re-hashed).
    if {key.removeprefix(PEFT_PREFIX) for key in peft_tensors} != set(state) or any(
            not torch.equal(peft_tensors[PEFT_PREFIX + key], value) for key, value in state.items()):
        raise MarsdiffError(f"{lora_dir / PEFT_WEIGHTS_NAME}: peft and diffusers copies of the adapter differ; "
                            f"{rerun_hint(WRITER_RULE)}")
    attach_lora(unet, settings)
    try:
        result = set_peft_model_state_dict(unet, state)
    except RuntimeError as err:  # a tensor of another shape than the settings give
        raise MarsdiffError(f"{weights}: adapter weights do not fit the rank in {MARSDIFF_NAME} "
                            f"({' '.join(str(err).split())[:160]}); {rerun_hint(WRITER_RULE)}") from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise MarsdiffError(f"{weights}: {len(unexpected)} adapter weights do not fit this UNet (e.g. {unexpected[0]}); "
                            f"{rerun_hint(WRITER_RULE)}")
    for p in lora_parameters(unet):
        p.data = p.data.float()
    return settings


def merge_lora(unet: torch.nn.Module) -> torch.nn.Module:
    """Fold the attached adapter into the base weights and remove the LoRA layers (in place).

    peft's ``merge_and_unload`` needs a ``PeftModel``; the adapter here was injected, so each
    tuner layer is merged (``safe_merge``: refuses NaN/inf) and replaced by its base layer.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, module) for name, module in unet.named_modules() if isinstance(module, BaseTunerLayer)]
    if not layers:
        raise MarsdiffError("the UNet has no LoRA adapter to merge")
    for name, module in layers:
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent_name) if parent_name else unet, child, module.get_base_layer())
    return unet
