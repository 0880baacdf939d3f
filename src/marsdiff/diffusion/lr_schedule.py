"""The base model's learning-rate schedule: linear warm-up, then cosine decay to 5 % of the peak.

Hand-written rather than a ``torch.optim.lr_scheduler`` chain: the training loop sets each step's
rate itself and logs it, and the shipped model's weights depend on these exact floats
(docs/architecture.md, "Libraries").
"""

from __future__ import annotations

import math


def learning_rate_at(step: int, peak: float, warmup_steps: int, train_steps: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to 5 % of it at
    ``train_steps`` (step counts from 0)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, train_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return peak * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))
