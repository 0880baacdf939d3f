"""Conjugate gradient for A x = b, A symmetric positive-definite and known only through v -> A v
(TRPO's damped Fisher matrix, :mod:`marsdiff.rl.fisher_vector_product`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)


@dataclass
class ConjugateGradientResult:
    x: torch.Tensor
    residual_norm: float  # ||b - A x|| by the recursion
    products: int  # A v products used
    x_a_x: float  # x^T A x, from the recursion (no extra product)


def conjugate_gradient(a_times: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iterations: int,
                       tolerance: float, a_times_b: torch.Tensor | None = None) -> ConjugateGradientResult:
    """Solve A x = b from x_0 = 0 with at most ``iterations`` products, stopping once the recursive
    squared residual ||b - A x||^2 is below ``tolerance``.

    ``a_times_b``: A b when the caller already has it. CG's first direction is b itself (x_0 = 0),
    so its first product is A b: passing it saves that product and changes nothing else.

    ``x_a_x`` is x^T A x = x^T (b - r) with r the recursive residual: in exact arithmetic A x =
    b - r at every iteration (r starts at b and loses alpha A d whenever x gains alpha d), so the
    quadratic form of the solution needs no extra product. In floating point r drifts from the
    true residual by rounding (the test compares both with an explicit matrix)."""
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    r_dot_r = float(residual @ residual)
    used = 0
    while used < iterations and r_dot_r >= tolerance:
        a_direction = a_times_b if used == 0 and a_times_b is not None else a_times(direction)
        used += 1
        curvature = float(direction @ a_direction)
        if not curvature > 0:
            # Only without damping and along a null direction of A: nothing left to solve for.
            log.warning("conjugate gradient: non-positive curvature %.3g after %d products; stopping", curvature, used)
            break
        alpha = r_dot_r / curvature
        x += alpha * direction
        residual -= alpha * a_direction
        new_r_dot_r = float(residual @ residual)
        direction = residual + (new_r_dot_r / r_dot_r) * direction
        r_dot_r = new_r_dot_r
    return ConjugateGradientResult(x, math.sqrt(max(r_dot_r, 0.0)), used, float(x @ (b - residual)))
