"""Flat float64 parameter-space vectors: the gradient, the Fisher-vector products, the conjugate
gradient's iterates and the TRPO step live as one vector over all trainable parameters; these
two functions convert between that vector and the per-parameter tensors autograd works with."""

from __future__ import annotations

from typing import Sequence

import torch


def flat_vector(tensors: Sequence[torch.Tensor | None], parameters: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """Concatenate per-parameter tensors (None = zero, an unused parameter) into one float64 vector."""
    return torch.cat([
        (t if t is not None else torch.zeros_like(p)).detach().reshape(-1).double() for t, p in zip(tensors, parameters)
    ])


def unflat_vector(vector: torch.Tensor, parameters: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Split a flat vector into tensors shaped, typed and placed like ``parameters``."""
    parts, lo = [], 0
    for p in parameters:
        parts.append(vector[lo : lo + p.numel()].view_as(p).to(dtype=p.dtype, device=p.device))
        lo += p.numel()
    return parts
