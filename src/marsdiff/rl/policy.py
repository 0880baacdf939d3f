"""The policy of one round: what the sampler of round r+1 loads and what update_round writes.

One object whatever the mode (:data:`MODES`):

* ``lora_unet``: a LoRA adapter on the UNet (:mod:`marsdiff.rl.lora`); generation plan fixed
  by the config (:class:`~marsdiff.diffusion.plan.FixedGeneration`);
* ``scheduler_policy``: per-image eta / timestep spacing / guidance
  (:class:`~marsdiff.rl.generation_policies.KnobPolicy`, conditions fixed);
* ``diversity_policy``: a learnable class/prompt choice plus eta and initial-noise temperature.

Directory layout (``results/runs/{exp}/round_{r}/policy/``): ``policy.json`` (mode, the base
model's hash, the generation-plan settings, round), ``generation.safetensors`` (the plan's
parameters, knob modes), ``lora/`` (the adapter, LoRA mode), ``value.safetensors`` (the value
table, when the value head is on). ``policy.json`` records the sha256 of each weights file beside
it (``files_sha256``), checked on load. Never pickle.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from marsdiff.diffusion.backends import DiffusionBackend
from marsdiff.diffusion.plan import FixedGeneration
from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import write_json
from marsdiff.io.reading import load_safetensors, read_json, rerun_hint
from marsdiff.io.weights import save_safetensors
from marsdiff.rl import lora as lora_io
from marsdiff.rl.generation_policies import (
    DIVERSITY_KNOBS,
    DIVERSITY_POLICY,
    SCHEDULER_POLICY,
    KnobPolicy,
    scheduler_knobs,
)

LORA_UNET = "lora_unet"
MODES = (LORA_UNET, SCHEDULER_POLICY, DIVERSITY_POLICY)
POLICY_JSON = "policy.json"
GENERATION_WEIGHTS = "generation.safetensors"
VALUE_WEIGHTS = "value.safetensors"
LORA_DIR = "lora"


class RoundPolicy:
    """A backend adapted by one mode's policy, with save/load and the trainable parameters."""

    def __init__(self, mode: str, backend: DiffusionBackend, generation, base_model_hash: str,
                 lora_settings: lora_io.LoraSettings | None = None, value_table: np.ndarray | None = None):
        if mode not in MODES:
            raise MarsdiffError(f"mode: unknown mode {mode!r} (use one of {', '.join(MODES)})")
        self.mode = mode
        self.backend = backend
        self.generation = generation
        self.base_model_hash = base_model_hash
        self.lora_settings = lora_settings
        self.value_table = value_table

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def initial(cls, mode: str, backend: DiffusionBackend, experiment: Mapping[str, Any]) -> "RoundPolicy":
        """The policy that samples round 000: the base model plus the mode's initial plan/adapter.

        ``experiment``: resolved by :func:`marsdiff.rl.experiments.experiment_settings` (every key
        filled; the eta knob's init is the experiment's eta unless it sets its own)."""
        base_hash = backend.model_hash()
        names = backend.conditions()
        class_distribution = experiment["class_distribution"]
        if mode == LORA_UNET:
            settings = lora_io.LoraSettings.from_config(experiment["lora"], backend.kind)
            lora_io.attach_lora(backend.unet, settings)
            knobs = {"eta": float(experiment["eta"])}
            return cls(mode, backend, FixedGeneration(names, class_distribution, knobs), base_hash, lora_settings=settings)
        if mode not in MODES:
            raise MarsdiffError(f"mode: unknown mode {mode!r} (use one of {', '.join(MODES)})")
        knob_names = scheduler_knobs(backend.kind) if mode == SCHEDULER_POLICY else list(DIVERSITY_KNOBS)
        policy_cfg = experiment["policy"]
        generation = KnobPolicy(
            mode, names, knob_names, class_distribution=class_distribution,
            distribution=str(policy_cfg["distribution"]), init_std=float(policy_cfg["init_std"]),
            knob_ranges=policy_cfg["knobs"], learn_conditions=mode == DIVERSITY_POLICY,
        )
        return cls(mode, backend, generation, base_hash)

    @classmethod
    def load(cls, policy_dir: str | os.PathLike, backend: DiffusionBackend) -> "RoundPolicy":
        """Load a saved round policy onto ``backend`` (which must be the base model it was trained on)."""
        policy_dir = Path(policy_dir)
        meta_path = policy_dir / POLICY_JSON
        if not meta_path.is_file():
            raise MarsdiffError(f"{policy_dir}: not a marsdiff policy (missing {POLICY_JSON}); "
                                f"{rerun_hint(lora_io.WRITER_RULE)}")
        meta = read_json(meta_path, "policy description", lora_io.WRITER_RULE, keys=("mode", "generation"))
        hashes = meta.get("files_sha256")
        if not isinstance(hashes, dict):
            hashes = {}

        def tensors(name: str, what: str) -> dict[str, torch.Tensor]:
            return load_safetensors(policy_dir / name, what, lora_io.WRITER_RULE, hashes.get(name), meta_path)
        base_hash = backend.model_hash()
        if meta.get("base_model_hash") != base_hash:
            raise MarsdiffError(
                f"{meta_path}: policy trained on base model {meta.get('base_model_hash')}, this base model is {base_hash}"
            )
        mode = meta.get("mode")
        value = None
        # Listed in policy.json but gone, or present but unlisted: both refused, never skipped.
        if VALUE_WEIGHTS in hashes or (policy_dir / VALUE_WEIGHTS).is_file():
            stored = tensors(VALUE_WEIGHTS, "value table")
            if "table" not in stored:
                raise MarsdiffError(f"{policy_dir / VALUE_WEIGHTS}: no 'table' tensor; {rerun_hint(lora_io.WRITER_RULE)}")
            value = stored["table"].double().numpy()
        if mode == LORA_UNET:
            settings = lora_io.load_lora(backend.unet, policy_dir / LORA_DIR)
            g = meta["generation"] if isinstance(meta["generation"], dict) else {}
            generation = FixedGeneration(backend.conditions(), g.get("class_distribution", "uniform"), g.get("knobs"))
            return cls(mode, backend, generation, base_hash, lora_settings=settings, value_table=value)
        if mode not in MODES:
            raise MarsdiffError(f"{meta_path}: unknown mode {mode!r}")
        if not isinstance(meta["generation"], dict):
            raise MarsdiffError(f"{meta_path}: 'generation' is not a JSON object; {rerun_hint(lora_io.WRITER_RULE)}")
        settings = dict(meta["generation"])
        if settings.get("condition_names") != backend.conditions():
            raise MarsdiffError(f"{meta_path}: policy conditions differ from the model's {backend.conditions()}")
        try:
            generation = KnobPolicy(**settings)
        except (TypeError, ValueError, KeyError) as err:  # keys or values no KnobPolicy takes
            raise MarsdiffError(f"{meta_path}: 'generation' does not describe a policy ({err}); "
                                f"{rerun_hint(lora_io.WRITER_RULE)}") from None
        weights = policy_dir / GENERATION_WEIGHTS
        if not weights.is_file():
            raise MarsdiffError(f"{weights}: policy weights missing (safetensors); {rerun_hint(lora_io.WRITER_RULE)}")
        try:
            generation.load_state_dict(tensors(GENERATION_WEIGHTS, "generation policy weights"))
        except RuntimeError as err:  # torch's missing/unexpected keys or shape mismatch
            raise MarsdiffError(f"{weights}: weights do not fit the policy in {POLICY_JSON} "
                                f"({' '.join(str(err).split())[:160]}); {rerun_hint(lora_io.WRITER_RULE)}") from None
        return cls(mode, backend, generation, base_hash, value_table=value)

    # --- what the trainer needs -----------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        if self.mode == LORA_UNET:
            return lora_io.lora_parameters(self.backend.unet)
        return [p for p in self.generation.parameters() if p.requires_grad]

    def generation_settings(self) -> dict[str, Any]:
        if isinstance(self.generation, KnobPolicy):
            return dict(self.generation.settings)
        return {"class_distribution": self.generation.probabilities.tolist(), "knobs": dict(self.generation.knobs)}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every trained tensor (hashing and equality checks)."""
        if self.mode == LORA_UNET:
            return lora_io.lora_state_dict(self.backend.unet)
        return {k: v.detach().cpu() for k, v in self.generation.state_dict().items()}

    def policy_hash(self) -> str:
        digest = hashlib.sha256(self.mode.encode())
        for name, tensor in sorted(self.state_tensors().items()):
            digest.update(name.encode())
            digest.update(tensor.float().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def save(self, policy_dir: str | os.PathLike, round_index: int, extra: Mapping[str, Any] | None = None) -> None:
        """Write the policy files into ``policy_dir`` (the caller makes the directory atomic)."""
        policy_dir = Path(policy_dir)
        policy_dir.mkdir(parents=True, exist_ok=True)
        # Content hashes of the weights files beside policy.json (the adapter's is in its own config).
        hashes: dict[str, str] = {}
        if self.mode == LORA_UNET:
            lora_io.save_lora(self.backend.unet, self.lora_settings, policy_dir / LORA_DIR)
        else:
            hashes[GENERATION_WEIGHTS] = save_safetensors(self.state_tensors(), policy_dir / GENERATION_WEIGHTS)
        if self.value_table is not None:
            hashes[VALUE_WEIGHTS] = save_safetensors({"table": torch.as_tensor(self.value_table, dtype=torch.float64)},
                                                     policy_dir / VALUE_WEIGHTS)
        write_json(policy_dir / POLICY_JSON, {
            "files_sha256": hashes,
            "mode": self.mode,
            "base_model_hash": self.base_model_hash,
            "round": int(round_index),
            "policy_hash": self.policy_hash(),
            "generation": self.generation_settings(),
            **dict(extra or {}),
        })
