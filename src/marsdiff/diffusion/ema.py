"""The exponential moving average of the base model's weights (the weights that are saved and sampled).

Hand-written rather than diffusers' ``EMAModel``: that one's warm-up runs one update behind this
one (its first update copies the weights), so it would change the shipped model's weights
(docs/architecture.md, "Libraries").
"""

from __future__ import annotations

import copy

import torch


class EMA:
    """Exponential moving average of a model's weights with a warm-up.

    The effective decay min(decay, (1 + n) / (10 + n)) keeps the average from being dominated
    by the random initial weights when training runs only a few thousand steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for shadow, live in zip(self.model.parameters(), model.parameters()):
            shadow.lerp_(live.detach(), 1.0 - decay)
        for shadow, live in zip(self.model.buffers(), model.buffers()):
            shadow.copy_(live)
