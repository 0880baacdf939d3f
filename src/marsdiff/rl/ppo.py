"""PPO on the denoising chain or on the generation plan: clipped surrogate, several epochs.

One update = ``epochs`` passes over shuffled minibatches of the round's actions
(:mod:`marsdiff.rl.actions`). Per minibatch the loss is

    - mean(min(r A, clip(r, 1 - e, 1 + e) A))  - entropy_coef * H  + kl_to_base * KL(pi || pi_base)

with r the per-action ratio in the action family's stored unit (denoising steps:
mean_per_dim_nats, so the DDPO clip of 1e-4 applies; plan actions: nats, clip 0.2), H the
entropy where the policy's spread is learnable, and the KL penalty to the base model in closed
form for the equal-sigma Gaussian steps (DPOK; the coefficient is the experiment's ``kl_to_base``,
shared with TRPO, see :mod:`marsdiff.rl.experiments`). Gradients are clipped to ``max_grad_norm``.
Every minibatch logs clip fraction, approximate KL, entropy, gradient norm, ratio mean and max
and the learning rate, each taken before that minibatch's step; :func:`summarise_updates`
averages them for the round's metrics. How far the whole update moved the policy is measured
after it (:mod:`marsdiff.rl.movement`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from marsdiff.errors import MarsdiffError
from marsdiff.faults import kill_point
from marsdiff.rl.distributed import SINGLE, RankGroup
from marsdiff.rl.settings import settings_from_mapping
from marsdiff.rl.skips import require_finite
from marsdiff.rl.surrogate import clipped_surrogate_objective, ratio_stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PPOSettings:
    """The ``ppo:`` section of an experiment (keys, defaults and ranges: the schema)."""

    clip_denoise: float
    clip_plan: float
    epochs: int
    minibatch_size: int
    max_grad_norm: float
    entropy_coef: float
    timestep_fraction: float

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "PPOSettings":
        """From the schema-filled section (:func:`marsdiff.rl.experiments.experiment_settings`)."""
        return settings_from_mapping(cls, cfg, "ppo")


def _clip_for(actions, settings: PPOSettings) -> float:
    return settings.clip_plan if actions.unit == "nats" else settings.clip_denoise


def ppo_update(actions, parameters: Sequence[torch.nn.Parameter], optimiser: torch.optim.Optimizer,
               settings: PPOSettings, progress: bool = True, *, kl_to_base: float,
               group: RankGroup = SINGLE) -> list[dict[str, float]]:
    """Run the PPO epochs over ``actions``; returns one log row per minibatch.

    ``kl_to_base``: the experiment's weight of the closed-form KL to the base model (actions
    without a base distribution, the plan actions, ignore it). With several processes (``group``)
    every rank walks the same minibatches and scores its contiguous share of each; each share's
    loss terms are means weighted by share / minibatch, so the gradients summed over ranks are
    the gradient of the whole minibatch's loss, and every rank takes the same optimiser step."""
    from tqdm import tqdm

    parameters = list(parameters)
    if not parameters:
        raise MarsdiffError("PPO: the policy has no trainable parameters")
    clip = _clip_for(actions, settings)
    rows: list[dict[str, float]] = []
    bar = tqdm(total=settings.epochs * actions.num_actions, desc="PPO update", unit="action", leave=False,
               disable=not progress or not group.is_writer)
    for epoch in range(settings.epochs):
        for batch in actions.minibatches(epoch):
            started = time.perf_counter()
            where = f"epoch {epoch}, minibatch {len(rows)}"
            loss = clipped_surrogate_loss(actions, group.shard(batch), len(batch), clip, settings.entropy_coef,
                                          kl_to_base)
            grad_norm = clipped_gradient_step(loss, parameters, optimiser, settings.max_grad_norm, group, where)
            rows.append(minibatch_log(loss, epoch, len(batch), clip, grad_norm, optimiser, group, started))
            bar.update(len(batch))
    bar.close()
    return rows


@dataclass
class MinibatchLoss:
    """This rank's share of a minibatch, scored before the step: the loss and the terms the log
    reports, each a mean over the share times share / minibatch (1.0 in one process, an exact
    product), so that their sums over ranks are the whole minibatch's means."""

    loss: torch.Tensor | None  # None: this rank's share is empty
    objective: torch.Tensor | None  # mean(min(r A, clip(r, 1 - e, 1 + e) A)), weighted
    entropy: torch.Tensor | None  # mean H, weighted; None where the policy's spread is fixed
    new_log_prob: torch.Tensor  # detached
    old_log_prob: torch.Tensor

    def value(self) -> float:
        return float(self.loss.detach()) if self.loss is not None else 0.0


def clipped_surrogate_loss(actions, local, minibatch_actions: int, clip: float, entropy_coef: float,
                           kl_to_base: float) -> MinibatchLoss:
    """- mean(min(r A, clip(r, 1 - e, 1 + e) A)) - entropy_coef * H + kl_to_base * KL(pi_theta || pi_base)
    over ``local``, this rank's share of a minibatch of ``minibatch_actions`` (the KL term where
    the actions have a base model)."""
    if not len(local):
        return MinibatchLoss(None, None, None, torch.zeros(0), torch.zeros(0))
    share = len(local) / minibatch_actions
    scored = actions.evaluate(local)
    objective = clipped_surrogate_objective(scored.new_log_prob, scored.old_log_prob, scored.advantages, clip) * share
    loss = -objective
    entropy = actions.entropy(local)
    if entropy is not None:
        entropy = entropy.mean() * share
        loss = loss - entropy_coef * entropy
    if kl_to_base > 0:
        kl_per_row = actions.kl_to_base(local, scored)
        if kl_per_row is not None:
            loss = loss + kl_to_base * (kl_per_row.mean() * share)
    return MinibatchLoss(loss, objective, entropy, scored.new_log_prob.detach(), scored.old_log_prob)


def clipped_gradient_step(loss: MinibatchLoss, parameters: Sequence[torch.nn.Parameter],
                          optimiser: torch.optim.Optimizer, max_grad_norm: float, group: RankGroup,
                          where: str) -> torch.Tensor:
    """One optimiser step along the minibatch's gradient (summed over ranks), clipped to norm
    ``max_grad_norm``; returns the norm before the clip. A NaN/inf loss or gradient would turn
    every weight NaN at the step: it raises before the step instead (the round loop skips the
    update; the loss is summed over ranks first, so every rank raises, or none does)."""
    optimiser.zero_grad(set_to_none=True)
    require_finite(f"the PPO loss ({where})", group.sum(loss.value()))
    if loss.loss is not None:
        loss.loss.backward()
    group.sum_gradients(parameters)
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    require_finite(f"the PPO gradient ({where})", grad_norm.detach())
    optimiser.step()
    kill_point("update.ppo.step")
    return grad_norm


def minibatch_log(loss: MinibatchLoss, epoch: int, minibatch_actions: int, clip: float, grad_norm: torch.Tensor,
                  optimiser: torch.optim.Optimizer, group: RankGroup, started: float) -> dict[str, float]:
    """One minibatch's row, over every rank's share: the ratio statistics, the objective and the
    entropy (nan where the policy's spread is fixed) as scored before the step, the gradient
    norm before the clip, the learning rate and the seconds since ``started``."""
    stats = ratio_stats(group.cat(loss.new_log_prob), group.cat(loss.old_log_prob), clip)
    has_entropy = group.max(float(loss.entropy is not None)) > 0
    return {
        "epoch": epoch,
        "actions": int(minibatch_actions),
        "objective": group.sum(float(loss.objective.detach()) if loss.objective is not None else 0.0),
        **stats.as_dict(),
        "entropy": group.sum(float(loss.entropy.detach()) if loss.entropy is not None else 0.0) if has_entropy else float("nan"),
        "grad_norm": float(grad_norm),
        "learning_rate": float(optimiser.param_groups[0]["lr"]),
        "seconds": time.perf_counter() - started,
    }


def summarise_updates(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Action-weighted means of the per-minibatch logs (max for ratio_max, sum for seconds)."""
    if not rows:
        return {}
    weights = np.array([r["actions"] for r in rows], dtype=float)
    out: dict[str, float] = {"minibatches": float(len(rows)), "actions": float(weights.sum())}
    for key in rows[0]:
        if key in ("epoch", "actions"):
            continue
        values = np.array([r[key] for r in rows], dtype=float)
        if key == "ratio_max":
            out[key] = float(np.nanmax(values))
        elif key == "seconds":
            out[key] = float(values.sum())
        elif np.all(np.isnan(values)):
            out[key] = float("nan")
        else:
            ok = ~np.isnan(values)
            out[key] = float(np.average(values[ok], weights=weights[ok]))
    return out
