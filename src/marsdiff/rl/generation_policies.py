"""The learnable generation plans: SCHEDULER_POLICY and DIVERSITY_POLICY.

Both draw, per image, continuous knob actions u from a Gaussian or a Laplacian whose location is
a free parameter per condition (class or prompt) and whose scale is a learnable parameter per
knob; the knob value the sampler uses is a fixed squashing of u into the knob's range
(:class:`KnobRange`). The diversity policy also learns the categorical choice of condition.

Actions are drawn without reparameterisation (no gradient), stored raw, and re-scored under the
current parameters by :meth:`log_prob`. Scoring a reparameterised sample mean + std * eps would
make (u - mean) / std equal eps, a constant: the mean would get exactly zero gradient.

Units: :meth:`log_prob` returns nats per image for each action type ("condition": the
categorical choice, "knobs": the sum over the knob dimensions).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from marsdiff.diffusion.plan import GenerationPlan, condition_probabilities, draw_conditions
from marsdiff.errors import MarsdiffError

DISTRIBUTIONS = ("gaussian", "laplace")  # the schema's policy.distribution choices (tested equal)
SCHEDULER_POLICY = "scheduler_policy"
DIVERSITY_POLICY = "diversity_policy"


@dataclass(frozen=True)
class KnobRange:
    """A knob's range and starting value. ``log`` squashes in log space (multiplicative knobs)."""

    low: float
    high: float
    init: float
    log: bool

    def __post_init__(self):
        # Relations between keys, which the schema cannot express (config_checks.check_knobs makes
        # the same check when the workflow is parsed).
        if not self.low < self.init < self.high:
            raise MarsdiffError(f"knob range: need low < init < high, got {self.low} < {self.init} < {self.high}")
        if self.log and self.low <= 0:
            raise MarsdiffError(f"knob range: a log-scaled knob needs low > 0, got {self.low}")

    def _bounds(self) -> tuple[float, float, float]:
        if self.log:
            return math.log(self.low), math.log(self.high), math.log(self.init)
        return self.low, self.high, self.init

    def value(self, action: torch.Tensor) -> torch.Tensor:
        """Knob value of raw actions u: low + (high - low) * sigmoid(u) (in log space if ``log``)."""
        lo, hi, _ = self._bounds()
        squashed = lo + (hi - lo) * torch.sigmoid(action)
        return squashed.exp() if self.log else squashed

    def initial_action(self) -> float:
        """The raw action whose value is ``init``."""
        lo, hi, init = self._bounds()
        p = (init - lo) / (hi - lo)
        return math.log(p / (1 - p))


def parse_knob_ranges(names: Sequence[str], ranges: Mapping[str, Mapping[str, Any]]) -> dict[str, KnobRange]:
    """The :class:`KnobRange` of each knob in ``names`` from ``ranges`` (the schema-filled
    ``policy.knobs``: every knob's low, high, init and log)."""
    missing = [name for name in names if name not in ranges]
    if missing:
        raise MarsdiffError(f"policy.knobs: no range for {missing} (known: {', '.join(ranges)})")
    return {name: KnobRange(**dict(ranges[name])) for name in names}


class KnobHead(nn.Module):
    """Per-condition location and per-knob log-scale of the knob distribution."""

    def __init__(self, num_conditions: int, ranges: Mapping[str, KnobRange], distribution: str, init_std: float):
        super().__init__()
        self.names = tuple(ranges)
        self.ranges = dict(ranges)
        self.distribution = distribution
        init = torch.tensor([ranges[n].initial_action() for n in self.names], dtype=torch.float32)
        self.location = nn.Parameter(init.repeat(num_conditions, 1))
        self.log_scale = nn.Parameter(torch.full((len(self.names),), math.log(init_std)))

    def dist(self, condition: torch.Tensor) -> torch.distributions.Distribution:
        loc = self.location[condition.long()]
        scale = self.log_scale.exp().expand_as(loc)
        if self.distribution == "gaussian":
            return torch.distributions.Normal(loc, scale)
        return torch.distributions.Laplace(loc, scale)

    @torch.no_grad()
    def draw(self, condition: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One raw action vector per image from its own generator, without gradient."""
        k = len(self.names)
        loc = self.location[condition.long()].detach()
        scale = self.log_scale.exp().detach()
        if self.distribution == "gaussian":
            unit = torch.stack([torch.randn(k, generator=g) for g in generators])
        else:
            uniform = torch.stack([torch.rand(k, generator=g) for g in generators]) - 0.5
            # Inverse CDF of the standard Laplacian; clamp keeps log finite at the edges.
            unit = -torch.sign(uniform) * torch.log1p(-2 * uniform.abs().clamp(max=0.5 - 1e-7))
        return loc + scale * unit

    def values(self, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: self.ranges[name].value(actions[:, j]) for j, name in enumerate(self.names)}

    def log_prob(self, condition: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.dist(condition).log_prob(actions).sum(dim=1)

    def entropy(self, condition: torch.Tensor) -> torch.Tensor:
        return self.dist(condition).entropy().sum(dim=1)


class KnobPolicy(nn.Module):
    """A generation plan with learnable knobs and a fixed or learnable condition choice.

    ``learn_conditions`` False: the scheduler policy (conditions from the fixed class
    distribution); True: the diversity policy (a learnable categorical, initialised at it).
    """

    def __init__(self, mode: str, condition_names: Sequence[str], knobs: Sequence[str], class_distribution: Any,
                 distribution: str, init_std: float, knob_ranges: Mapping[str, Mapping[str, Any]],
                 learn_conditions: bool = False):
        super().__init__()
        if mode not in (SCHEDULER_POLICY, DIVERSITY_POLICY):
            raise MarsdiffError(f"unknown generation policy mode {mode!r}")
        self.mode = mode
        self.condition_names = list(condition_names)
        self.learn_conditions = bool(learn_conditions)
        probabilities = condition_probabilities(class_distribution, self.condition_names).float()
        if self.learn_conditions:
            # A zero-probability class would start at -inf logits and never recover.
            self.logits = nn.Parameter(torch.log(probabilities.clamp(min=1e-3)))
        else:
            self.register_buffer("fixed_log_probs", torch.log(probabilities))
        ranges = parse_knob_ranges(knobs, knob_ranges)
        self.head = KnobHead(len(self.condition_names), ranges, distribution, init_std)
        self.settings = {
            "mode": mode, "condition_names": self.condition_names, "knobs": list(knobs),
            "class_distribution": class_distribution, "distribution": distribution, "init_std": init_std,
            "knob_ranges": {name: asdict(knob) for name, knob in ranges.items()}, "learn_conditions": self.learn_conditions,
        }

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.head.names

    def condition_log_probs(self) -> torch.Tensor:
        return torch.log_softmax(self.logits, dim=0) if self.learn_conditions else self.fixed_log_probs

    @torch.no_grad()
    def plan(self, generators: Sequence[torch.Generator]) -> GenerationPlan:
        log_probs = self.condition_log_probs().detach()
        condition = draw_conditions(log_probs.double().exp(), generators)
        actions = self.head.draw(condition, generators)
        scored = self.log_prob(condition, actions)
        return GenerationPlan(
            condition=condition,
            knobs={name: value.float() for name, value in self.head.values(actions).items()},
            actions=actions.float(),
            action_names=self.action_names,
            log_prob={name: value.detach().float() for name, value in scored.items()},
        )

    def log_prob(self, condition: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Nats per image of each action type under the current parameters (differentiable)."""
        condition = condition.long()
        return {"condition": self.condition_log_probs()[condition], "knobs": self.head.log_prob(condition, actions)}

    def trainable_log_prob(self, condition: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Sum of the log-probs of the action types this policy learns (nats per image)."""
        parts = self.log_prob(condition, actions)
        return parts["knobs"] + (parts["condition"] if self.learn_conditions else 0.0)

    def entropy(self, condition: torch.Tensor) -> torch.Tensor:
        """Entropy (nats) of the learnable action distributions, per image."""
        value = self.head.entropy(condition.long())
        if self.learn_conditions:
            log_p = self.condition_log_probs()
            value = value - (log_p.exp() * log_p).sum()
        return value

    def describe(self) -> dict[str, Any]:
        with torch.no_grad():
            probs = self.condition_log_probs().exp().tolist()
            means = {c: self.head.values(self.head.location[i : i + 1]) for i, c in enumerate(self.condition_names)}
        return {
            "kind": self.mode,
            "condition_probabilities": dict(zip(self.condition_names, probs)),
            "knob_at_location": {c: {k: float(v[0]) for k, v in m.items()} for c, m in means.items()},
            "scale": dict(zip(self.head.names, self.head.log_scale.exp().tolist())),
        }


def scheduler_knobs(backend_kind: str) -> list[str]:
    """The scheduler policy acts on eta, the timestep spacing and (SD only) the guidance scale."""
    return ["eta", "timestep_power"] + (["guidance_scale"] if backend_kind == "stable_diffusion" else [])


DIVERSITY_KNOBS = ["eta", "noise_scale"]
