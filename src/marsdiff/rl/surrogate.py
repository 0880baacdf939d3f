"""The policy-gradient surrogate PPO and TRPO share: likelihood ratios and their statistics.

For an action a with stored log-prob log pi_old(a) and advantage A, the ratio is
r = exp(log pi_theta(a) - log pi_old(a)) in the action type's stored unit (denoising steps:
mean_per_dim_nats, so r is the true ratio to the power 1/dims; plan actions: nats). TRPO
maximises mean(r A) under a KL constraint; PPO maximises mean(min(r A, clip(r, 1-e, 1+e) A)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RatioStats:
    ratio_mean: float
    ratio_max: float
    clip_fraction: float
    approx_kl: float

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))


def likelihood_ratio(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    return torch.exp(new_log_prob - old_log_prob)


def surrogate_objective(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """mean(r A): the unclipped importance-sampled objective (TRPO's)."""
    return (likelihood_ratio(new_log_prob, old_log_prob) * advantages).mean()


def clipped_surrogate_objective(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                                clip: float) -> torch.Tensor:
    """mean(min(r A, clip(r, 1 - clip, 1 + clip) A)): PPO's pessimistic objective."""
    ratio = likelihood_ratio(new_log_prob, old_log_prob)
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return torch.minimum(ratio * advantages, clipped * advantages).mean()


@torch.no_grad()
def ratio_stats(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, clip: float | None = None) -> RatioStats:
    """Ratio mean/max, the fraction outside the clip range, and the k3 KL estimate
    E[(r - 1) - log r] (unbiased for KL(old || new), always >= 0)."""
    log_ratio = (new_log_prob - old_log_prob).double()
    ratio = log_ratio.exp()
    clipped = float(((ratio - 1.0).abs() > clip).double().mean()) if clip is not None else 0.0
    return RatioStats(
        ratio_mean=float(ratio.mean()),
        ratio_max=float(ratio.max()),
        clip_fraction=clipped,
        approx_kl=float(((ratio - 1.0) - log_ratio).mean()),
    )
