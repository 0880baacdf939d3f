"""A fine-tuned policy as standard model files (``marsdiff export-model POLICY_DIR OUT``).

The export owns the folder ``OUT``, written atomically (it appears only when complete):

* the pixel model: ``unet/`` (a diffusers ``UNet2DModel``, the LoRA merged into its weights:
  ``UNet2DModel.from_pretrained(OUT / "unet")``) and ``scheduler/`` (the DDIM scheduler marsdiff
  samples with, built from the base model's training schedule);
* Stable Diffusion: a whole diffusers pipeline folder (``DiffusionPipeline.from_pretrained(OUT)``)
  with the merged UNet and the DDIM scheduler;
* ``knobs.json`` (:data:`KNOBS_JSON`, every mode): how the policy draws, as values any sampler can
  apply: per condition (class or prompt) the DDIM eta, the initial-noise temperature, the
  timestep grid (and its power knob) and, for Stable Diffusion, the guidance scale; the class
  probabilities. For the plan policies (scheduler_policy, diversity_policy) these are the learnt
  knob values at the policy's mean action (the median of each knob's distribution: the squashing
  is monotone), and ``learnt`` adds the full distribution (location, scale, ranges) for a sampler
  that wants the policy's spread too. The plan policies leave the UNet as it is: their ``unet/``
  (or pipeline) is the base model's.

The policy is loaded by :meth:`marsdiff.rl.policy.RoundPolicy.load` first, so every hash check
runs (files against their sidecars, the policy against this base model) before anything is
written; a folder that is not a policy, or a policy of another base model, is one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from marsdiff.errors import MarsdiffError

KNOBS_JSON = "knobs.json"
KNOBS_FORMAT = "marsdiff-knobs/1"
#: What each knob means, written into knobs.json so the file explains itself.
KNOB_DEFINITIONS = {
    "eta": "DDIM eta: the per-step noise is max(eta * sigma_DDIM(t, t_prev), min_std)",
    "noise_scale": "temperature of the initial noise: x_T = noise_scale * N(0, I)",
    "timestep_power": "the timestep grid t_k = floor(T * ((n - k) / n) ** power) - 1, k = 0..n-1 (made strictly "
                      "decreasing); null: the scheduler's own grid. 'timesteps' lists the grid to use",
    "timesteps": "the denoising timesteps, first to last; each step goes from t to the next entry "
                 "(after the last: to the clean image, alpha_cumprod = final_alpha_cumprod)",
    "guidance_scale": "classifier-free guidance scale (Stable Diffusion only)",
}


def _check_out(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MarsdiffError(f"{out_dir}: exists and is not an empty folder (choose a new output folder)")


def knob_description(policy, config: Mapping[str, Any], steps: int) -> dict[str, Any]:
    """The ``knobs.json`` content of a loaded policy (layout in the module docstring)."""
    import torch

    from marsdiff.diffusion.scheduler_logprob import power_timesteps
    from marsdiff.rl.generation_policies import KnobPolicy

    backend = policy.backend
    sampling = config["sampling"]
    scheduler = backend.make_scheduler(eta=float(sampling["eta"]), min_std=float(sampling["min_std"]))
    default_grid = [int(t) for t in scheduler.set_timesteps(steps).tolist()]
    names = backend.conditions()
    # The knobs a policy leaves as the sampler has them: the configured eta, untempered initial
    # noise, the scheduler's own timestep grid.
    defaults: dict[str, Any] = {"eta": float(sampling["eta"]), "noise_scale": 1.0, "timestep_power": None}
    if backend.kind == "stable_diffusion":
        defaults["guidance_scale"] = float(backend.guidance_scale)
    learnt = None
    if isinstance(policy.generation, KnobPolicy):
        described = policy.generation.describe()
        probabilities = described["condition_probabilities"]
        per_condition = {name: {**defaults, **described["knob_at_location"][name]} for name in names}
        head = policy.generation.head
        with torch.no_grad():
            location = head.location.detach().double().tolist()
        learnt = {
            "distribution": head.distribution,
            "action_to_value": "value = low + (high - low) * sigmoid(u), in log space where log is true",
            "location": {name: dict(zip(head.names, location[i])) for i, name in enumerate(names)},
            "scale": described["scale"],
            "ranges": {k: {"low": r.low, "high": r.high, "log": r.log} for k, r in head.ranges.items()},
        }
    else:
        probabilities = dict(zip(names, policy.generation.probabilities.tolist()))
        per_condition = {name: {**defaults, **policy.generation.knobs} for name in names}
    for values in per_condition.values():
        power = values.get("timestep_power")
        if power is None:
            values["timesteps"] = default_grid
        else:
            grid, _ = power_timesteps(scheduler.num_train_timesteps, steps, torch.tensor([float(power)]))
            values["timesteps"] = [int(t) for t in grid[0].tolist()]
    return {
        "format": KNOBS_FORMAT,
        "mode": policy.mode,
        "backend": backend.kind,
        "condition_kind": "prompt" if backend.kind == "stable_diffusion" else "class",
        "conditions": names,
        "class_probabilities": probabilities,
        "per_condition": per_condition,
        "steps": int(steps),
        "sample_shape": list(backend.latent_shape),
        "resolution": int(getattr(backend, "resolution", None) or backend.latent_shape[-1]),
        "final_alpha_cumprod": float(scheduler.final_alpha_cumprod),
        "min_std": float(scheduler.min_std),
        "learnt": learnt,
        "definitions": KNOB_DEFINITIONS,
    }


def export_model(config: Mapping[str, Any], policy_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 results: str | os.PathLike = "results") -> dict[str, Any]:
    """Write the merged model folder and ``knobs.json`` of the policy in ``policy_dir`` to ``out_dir``."""
    from diffusers import DDIMScheduler

    from marsdiff.diffusion.loading import load_backend
    from marsdiff.evalset.models import evaluation_steps
    from marsdiff.io.atomic import atomic_dir, write_json
    from marsdiff.io.reading import read_json
    from marsdiff.io.weights import follow_umask
    from marsdiff.rl import lora as lora_io
    from marsdiff.rl.policy import LORA_UNET, POLICY_JSON, RoundPolicy

    policy_dir, out_dir = Path(policy_dir), Path(out_dir)
    if not (policy_dir / POLICY_JSON).is_file():
        raise MarsdiffError(f"{policy_dir}: not a policy folder (no {POLICY_JSON}; a policy is "
                            f"results/runs/<experiment>/round_<r>/policy)")
    _check_out(out_dir)
    model_cfg = config["model"]
    backend_kind = model_cfg["backend"]
    model_dir = Path(results) / "models" / "base"
    if backend_kind == "pixel" and not (model_dir / "marsdiff_model.json").is_file():
        raise MarsdiffError(f"{model_dir}: no base model (run the workflow first, or `make run`)")
    # The pixel model is float32 whatever the device; Stable Diffusion loads as the config says,
    # since the base-model hash the policy recorded covers the weights' dtype.
    backend = load_backend(model_cfg, model_dir=model_dir, device="cpu")
    policy = RoundPolicy.load(policy_dir, backend)
    meta = read_json(policy_dir / POLICY_JSON, "policy description", lora_io.WRITER_RULE)
    knobs = knob_description(policy, config, evaluation_steps(config))
    knobs["provenance"] = {
        "policy_dir": str(policy_dir), "round": meta.get("round"), "policy_hash": meta.get("policy_hash"),
        "base_model_hash": policy.base_model_hash, "exported_by": "marsdiff export-model",
        "lora_merged": policy.mode == LORA_UNET,
    }
    unet = backend.unet
    if policy.mode == LORA_UNET:
        lora_io.merge_lora(unet)
    scheduler = DDIMScheduler.from_config(dict(backend.scheduler_config))
    with atomic_dir(out_dir) as tmp:
        if backend.kind == "stable_diffusion":
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline(
                vae=backend.vae, text_encoder=backend.text_encoder, tokenizer=backend.tokenizer, unet=unet,
                scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
            pipe.save_pretrained(tmp)
        else:
            unet.save_pretrained(tmp / "unet")
            scheduler.save_pretrained(tmp / "scheduler")
        write_json(tmp / KNOBS_JSON, knobs)
        follow_umask(tmp)
    return {"folder": str(out_dir), "mode": policy.mode, "backend": backend.kind,
            "lora_merged": policy.mode == LORA_UNET}
