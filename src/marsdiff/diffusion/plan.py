"""What the sampler asks of a policy before the chain starts: one generation plan per image.

A plan fixes, for each image, the conditioning action (class index of the pixel model, prompt
index of Stable Diffusion), the generation knobs (:data:`KNOB_NAMES`) and the log-probabilities
of the actions that chose them, one entry per action type (:data:`PLAN_ACTION_TYPES`, in nats).
The denoising actions that follow are scored by the scheduler
(:mod:`marsdiff.diffusion.scheduler_logprob`).

:class:`FixedGeneration` is the plan of the base model and of the LoRA mode: conditions drawn
from ``sampling.class_distribution``, knobs fixed by the config. The learnable plans of the
scheduler and diversity modes live in :mod:`marsdiff.rl.generation_policies`; they implement
the same :class:`GenerationPolicy` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch

from marsdiff.errors import MarsdiffError

# Per-image generation knobs. eta: DDIM noise level; guidance_scale: classifier-free guidance
# (Stable Diffusion only); timestep_power: the timestep-spacing knob of
# scheduler_logprob.power_timesteps (None: the scheduler's configured grid); noise_scale: the
# temperature of the initial noise x_T ~ N(0, noise_scale^2 I).
KNOB_NAMES = ("eta", "guidance_scale", "timestep_power", "noise_scale")
# Log-prob entries of a plan (nats per image); the denoising steps add "denoise".
PLAN_ACTION_TYPES = ("condition", "knobs")


@dataclass
class GenerationPlan:
    """Per-image decisions for one batch (all tensors on the CPU, first dimension B)."""

    condition: torch.Tensor  # (B,) int64
    knobs: dict[str, torch.Tensor]  # knob name -> (B,) float32; a missing knob takes the default
    actions: torch.Tensor  # (B, K) float32 raw continuous actions as drawn (K may be 0)
    action_names: tuple[str, ...] = ()
    log_prob: dict[str, torch.Tensor] = field(default_factory=dict)  # PLAN_ACTION_TYPES -> (B,) nats

    def __len__(self) -> int:
        return int(self.condition.shape[0])


class GenerationPolicy(Protocol):
    """Anything that can plan a batch of images from their per-image generators."""

    mode: str
    action_names: tuple[str, ...]

    def plan(self, generators: Sequence[torch.Generator]) -> GenerationPlan: ...

    def describe(self) -> dict[str, Any]: ...


def condition_probabilities(spec: Any, names: Sequence[str]) -> torch.Tensor:
    """The conditioning distribution: 'uniform', a list of weights, or a {name: weight} mapping."""
    k = len(names)
    if k == 0:
        raise MarsdiffError("the model offers no conditions (no class names / prompts)")
    if spec in (None, "uniform"):
        weights = np.ones(k)
    elif isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise MarsdiffError(f"sampling.class_distribution: unknown classes {unknown} (model has {list(names)})")
        weights = np.array([float(spec.get(name, 0.0)) for name in names])
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) != k:
            raise MarsdiffError(f"sampling.class_distribution: {len(spec)} weights for {k} conditions")
        weights = np.asarray(spec, dtype=np.float64)
    else:
        raise MarsdiffError(f"sampling.class_distribution: expected 'uniform', a list or a mapping, got {spec!r}")
    if np.any(weights < 0) or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise MarsdiffError("sampling.class_distribution: weights must be finite, >= 0 and not all zero")
    return torch.as_tensor(weights / weights.sum(), dtype=torch.float64)


def draw_conditions(probabilities: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One categorical draw per image from its own generator (so batching never changes it)."""
    return torch.stack([torch.multinomial(probabilities, 1, generator=g)[0] for g in generators])


class FixedGeneration:
    """The base model's plan: conditions from a fixed distribution, constant knobs."""

    mode = "base"
    action_names: tuple[str, ...] = ()

    def __init__(self, condition_names: Sequence[str], class_distribution: Any,
                 knobs: Mapping[str, float | None] | None = None):
        self.condition_names = list(condition_names)
        self.probabilities = condition_probabilities(class_distribution, self.condition_names)
        self.knobs = {k: float(v) for k, v in (knobs or {}).items() if v is not None}
        unknown = sorted(set(self.knobs) - set(KNOB_NAMES))
        if unknown:
            raise MarsdiffError(f"unknown generation knobs {unknown} (known: {', '.join(KNOB_NAMES)})")

    def plan(self, generators: Sequence[torch.Generator]) -> GenerationPlan:
        condition = draw_conditions(self.probabilities, generators)
        batch = len(generators)
        return GenerationPlan(
            condition=condition,
            knobs={name: torch.full((batch,), value) for name, value in self.knobs.items()},
            actions=torch.zeros(batch, 0),
            log_prob={"condition": torch.log(self.probabilities[condition]).float(), "knobs": torch.zeros(batch)},
        )

    def describe(self) -> dict[str, Any]:
        return {"kind": "fixed", "probabilities": self.probabilities.tolist(), "knobs": dict(self.knobs)}
