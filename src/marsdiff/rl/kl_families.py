"""The two action families TRPO constrains, each with its old-policy snapshot and its
KL(pi_old || pi_theta) per action, in the family's stored log-prob unit:

* :class:`DenoiseKL`: denoising steps N(mu_theta, sigma^2 I), sigma fixed by the noise schedule;
  KL = mean_d (mu_theta - mu_old)^2 / (2 sigma^2), in mean_per_dim_nats;
* :class:`PlanKL`: plan actions, knobs ~ Gaussian/Laplace(location[condition], scale) and the
  condition ~ a learnt categorical; KL in nats per image (knobs summed, plus the categorical).

``kl`` is the exact KL (the line search's constraint, the post-update statistics); ``fisher_kl``
a form with the same value, gradient and Hessian at theta_old that autograd can differentiate
twice (the Fisher-vector products). They differ only for Laplace knobs (:func:`smooth_laplace_kl`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from marsdiff.errors import MarsdiffError
from marsdiff.rl.actions import gaussian_mean_kl


def split_batch(batch: Any, size: int) -> list[Any]:
    """Consecutive chunks of a minibatch (a TransitionBatch or an array of plan-action rows)."""
    n = len(batch)
    take = (lambda s: batch[s]) if isinstance(batch, np.ndarray) else batch.take
    return [take(slice(lo, min(n, lo + size))) for lo in range(0, n, size)]


class DenoiseKL:
    """Denoising steps: N(mu_theta, sigma^2 I), sigma fixed by the schedule; KL in mean_per_dim_nats."""

    supports_gauss_newton = True

    @staticmethod
    def snapshot(actions, batch, scored) -> tuple[torch.Tensor, torch.Tensor]:
        if scored.mean is None or scored.std is None:
            raise MarsdiffError("TRPO: the denoising actions did not return the step Gaussian (mean, std)")
        return scored.mean.detach(), scored.std.detach()

    @staticmethod
    def kl(actions, batch, old, scored) -> torch.Tensor:
        old_mean, std = old
        # Equal sigmas: KL(old || new) = mean_d (mu_new - mu_old)^2 / (2 sigma^2) (symmetric).
        return gaussian_mean_kl(scored.mean, old_mean, std)

    fisher_kl = kl  # smooth everywhere: its autograd Hessian is the Fisher information


def _detached(dist: torch.distributions.Distribution) -> torch.distributions.Distribution:
    return type(dist)(dist.loc.detach(), dist.scale.detach())


def smooth_laplace_kl(old: torch.distributions.Laplace, new: torch.distributions.Laplace) -> torch.Tensor:
    """KL(Laplace(m1, b1) || Laplace(m2, b2)) = log(b2/b1) + |d|/b2 + (b1/b2) exp(-|d|/b1) - 1 with
    its |d| terms replaced by their second-order expansion d^2 / (2 b1 b2): equal value, gradient
    and Hessian at d = 0 (where the FVP differentiates), but twice differentiable by autograd
    (whose second derivative of |d| at 0 is 0: the location block of the Fisher would vanish)."""
    b1, b2 = old.scale, new.scale
    d = new.loc - old.loc
    return torch.log(b2 / b1) + b1 / b2 - 1 + d.pow(2) / (2 * b1 * b2)


class PlanKL:
    """Plan actions: knobs ~ Gaussian/Laplace(location[condition], scale), the condition ~ a
    categorical when it is learnt; KL in nats per image (knobs summed, plus the categorical)."""

    supports_gauss_newton = False

    @staticmethod
    def snapshot(actions, rows, scored):
        knobs, condition = actions.distributions(rows)
        return _detached(knobs), None if condition is None else condition.detach()

    @staticmethod
    def _kl(actions, rows, old, knob_kl: Callable) -> torch.Tensor:
        old_knobs, old_condition = old
        knobs, condition = actions.distributions(rows)
        kl = knob_kl(old_knobs, knobs).sum(dim=1)
        if old_condition is not None:
            # The condition is drawn once per image from the same categorical: its KL adds to every row.
            kl = kl + (old_condition.exp() * (old_condition - condition)).sum()
        return kl

    @classmethod
    def kl(cls, actions, rows, old, scored) -> torch.Tensor:
        return cls._kl(actions, rows, old, torch.distributions.kl_divergence)

    @classmethod
    def fisher_kl(cls, actions, rows, old, scored) -> torch.Tensor:
        def knob_kl(p, q):
            if isinstance(p, torch.distributions.Laplace):
                return smooth_laplace_kl(p, q)
            return torch.distributions.kl_divergence(p, q)

        return cls._kl(actions, rows, old, knob_kl)


def kl_family(actions) -> type[DenoiseKL] | type[PlanKL]:
    """The family of a round's actions: plan actions expose their distributions, denoising steps do not."""
    return PlanKL if hasattr(actions, "distributions") else DenoiseKL


def policy_module(actions) -> torch.nn.Module | None:
    """The network the denoising actions run through (None for plan actions)."""
    backend = getattr(getattr(actions, "policy", None), "backend", None)
    return getattr(backend, "unet", None)
