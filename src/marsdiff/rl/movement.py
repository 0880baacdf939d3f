"""How far an update moved the policy: statistics after the update, and the plan's knob values.

"Did the policy move" must be readable from every round's metrics.json, for PPO and TRPO alike.
Statistics taken while the update runs cannot say it: PPO scores each minibatch before its own
optimiser step (a single-step update logs ratio 1 and KL 0 whatever the step did). So:

1. :func:`snapshot` scores every trainable action of the round under the pre-update policy
   (no gradient) and keeps each action's distribution: the Gaussian means of the denoising
   steps, the knob distributions (and condition log-probs) of the plan actions.
2. The update runs.
3. :func:`post_update_stats` re-scores the same actions under the updated policy and logs

   * ``kl_post_update``: the mean exact KL(pi_before || pi_after) over the actions, in the
     family's stored unit (denoising steps: mean_per_dim_nats; plan actions: nats per image);
   * ``ratio_mean_post`` / ``ratio_max_post`` / ``approx_kl_post``: the likelihood ratio
     pi_after(a) / pi_old(a) against the stored log-probs (the sampling policy, equal to the
     pre-update one: the ratio before the first step is exactly 1);
   * ``kl_to_base`` (LoRA mode): the mean per-step KL between the updated adapter's Gaussian
     step and the base model's (adapter disabled), ||mu_theta - mu_base||^2 / (2 sigma^2) per
     dimension, on the round's actions.

:func:`plan_values` gives the plan policies' knob values as flat ``plan/<knob>`` floats (the
contract with the curves): the mean knob value the policy draws (its expectation over the knob
distribution and the class probabilities, by quantile quadrature, so no random numbers are
used), and ``plan/class_prob/<condition>`` for every condition.
"""

from __future__ import annotations

from typing import Any

import torch

from marsdiff.rl.distributed import SINGLE, RankGroup
from marsdiff.rl.surrogate import ratio_stats

PLAN_PREFIX = "plan/"
# Quantile nodes of the knob distribution for the expected knob value (midpoint rule in probability).
_QUADRATURE_NODES = 257


@torch.no_grad()
def snapshot(actions, group: RankGroup = SINGLE) -> list[tuple[Any, Any]]:
    """(batch, the pre-update distribution of its actions) for every trainable action of the
    round (with several processes: this rank's share of each minibatch)."""
    from marsdiff.rl.kl_families import kl_family

    family = kl_family(actions)
    out = []
    for batch in actions.minibatches(0):
        batch = group.shard(batch)
        if not len(batch):
            continue
        scored = actions.evaluate(batch)
        out.append((batch, family.snapshot(actions, batch, scored)))
    return out


@torch.no_grad()
def post_update_stats(actions, before: list[tuple[Any, Any]], group: RankGroup = SINGLE) -> dict[str, float]:
    """Re-score the snapshot's actions under the current (updated) parameters (module docstring);
    with several processes each rank its own share, the statistics over all of them."""
    from marsdiff.rl.kl_families import kl_family

    family = kl_family(actions)
    total = int(group.sum(float(sum(len(batch) for batch, _ in before))))
    kl = kl_base = 0.0
    has_base = False
    new_parts, old_parts = [], []
    for batch, old in before:
        scored = actions.evaluate(batch)
        kl += float(family.kl(actions, batch, old, scored).double().sum()) / total
        base = actions.kl_to_base(batch, scored)
        if base is not None:
            has_base = True
            kl_base += float(base.double().sum()) / total
        new_parts.append(scored.new_log_prob.detach().cpu())
        old_parts.append(scored.old_log_prob.detach().cpu())
    kl, kl_base = group.sum(kl), group.sum(kl_base)
    has_base = group.max(float(has_base)) > 0
    new = group.cat(torch.cat(new_parts) if new_parts else torch.zeros(0))
    old = group.cat(torch.cat(old_parts) if old_parts else torch.zeros(0))
    stats = ratio_stats(new, old)
    return {
        "kl_post_update": max(kl, 0.0),  # exact KL >= 0; float rounding of a zero step gives -0.0 at most
        "ratio_mean_post": stats.ratio_mean,
        "ratio_max_post": stats.ratio_max,
        "approx_kl_post": stats.approx_kl,
        "kl_to_base": kl_base if has_base else float("nan"),
    }


@torch.no_grad()
def plan_values(generation) -> dict[str, float]:
    """``plan/<knob>`` (expected knob value) and ``plan/class_prob/<condition>`` of a KnobPolicy."""
    head = generation.head
    probs = generation.condition_log_probs().detach().double().exp()
    conditions = torch.arange(len(generation.condition_names))
    dist = head.dist(conditions)  # (conditions, knobs)
    levels = (torch.arange(_QUADRATURE_NODES, dtype=torch.float64) + 0.5) / _QUADRATURE_NODES
    # icdf per node: (nodes, conditions, knobs); Normal and Laplace both have a closed-form one.
    loc, scale = dist.loc.double(), dist.scale.double()
    quantiles = type(dist)(loc, scale).icdf(levels.view(-1, 1, 1))
    out: dict[str, float] = {}
    for j, name in enumerate(head.names):
        values = head.ranges[name].value(quantiles[..., j]).double()  # (nodes, conditions)
        out[PLAN_PREFIX + name] = float((values.mean(dim=0) * probs).sum())
    for name, p in zip(generation.condition_names, probs.tolist()):
        out[f"{PLAN_PREFIX}class_prob/{name}"] = float(p)
    return out
