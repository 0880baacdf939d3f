"""How far an update moved the policy: statistics after the update, and the plan's knob values.

"Did the policy move" must be readable from every round's metrics.json, for PPO and TRPO alike.
Statistics taken while the update runs cannot say it: PPO scores each minibatch before its own
optimiser step (a single-step update logs ratio 1 and KL 0 whatever the step did). So:

1. :class:`UpdateMovement` is made before the update: the pre-update distribution of every
   trainable action of the round (no gradient): the Gaussian means of the denoising steps, the
   knob distributions (and condition log-probs) of the plan actions.
2. The update runs.
3. :meth:`UpdateMovement.stats` re-scores the same actions under the updated policy and logs

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

No pass repeats one the update made (docs/rl.md, "Did the policy move"). The denoising actions
keep the update's own evaluations (:meth:`marsdiff.rl.actions.DenoiseActions.keep_evaluations`,
by rows and parameter state), and step 1 is taken after the update from the first source that
has each action: the update's scoring at the pre-update parameters (all of TRPO's gradient pass,
PPO's first minibatch), the base model's means when the pre-update adapter is zero (round 000,
the zero_lr control: they are computed anyway for ``kl_to_base``), else a no-gradient pass at
the pre-update parameters copied back in. Step 3 reuses TRPO's accepted line-search pass when it
scored the same batches (a single process regroups them by noise level: then it is a pass). The
statistics are the same, bit for bit, as from separate passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from marsdiff.rl.actions import parameters_state
from marsdiff.rl.distributed import SINGLE, RankGroup
from marsdiff.rl.surrogate import ratio_stats

PLAN_PREFIX = "plan/"
# Quantile nodes of the knob distribution for the expected knob value (midpoint rule in probability).
_QUADRATURE_NODES = 257


class UpdateMovement:
    """How far one update moves the policy (module docstring): made before the update, which it
    does not touch, and read after it (:meth:`stats`). With several processes each rank takes
    its share of each minibatch; the statistics are over all of them."""

    #: Take what the update already scored instead of separate passes (False: a pass before the
    #: update and one after it, the reference the reuse is tested against).
    reuse_update_passes = True

    def __init__(self, actions, parameters: Sequence[torch.nn.Parameter], group: RankGroup = SINGLE):
        from marsdiff.rl.kl_families import kl_family

        self.actions, self.group, self.family = actions, group, kl_family(actions)
        self.parameters = list(parameters)
        self.batches = [batch for batch in (group.shard(b) for b in actions.minibatches(0)) if len(batch)]
        # Denoising actions keep the update's own evaluations: the pre-update distributions come
        # from them after the update (step 1 is lazy), so no pass repeats one the update made.
        self.reuse = self.reuse_update_passes and hasattr(actions, "keep_evaluations")
        self.olds: list[Any] | None = None
        if self.reuse:
            self.start_values = [p.detach().clone() for p in self.parameters]
            self.start_is_base = actions.adapter_adds_nothing()
            self.start_state = actions.keep_evaluations()
        else:  # plan actions: their distributions, from a small head, before the update
            with torch.no_grad():
                self.olds = [self.family.snapshot(actions, batch, actions.evaluate(batch)) for batch in self.batches]

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Re-score the round's actions under the current (updated) parameters (module docstring)."""
        actions, family, group = self.actions, self.family, self.group
        now = parameters_state(self.parameters) if self.reuse else None
        # The updated policy's scoring: TRPO's accepted line-search try (or, when the step was not
        # applied, its gradient pass) already scored every action at these parameters.
        after = [self._kept(batch, now) or actions.evaluate(batch) for batch in self.batches]
        olds = self.olds if self.olds is not None else self._pre_update()
        total = int(group.sum(float(sum(len(batch) for batch in self.batches))))
        kl = kl_base = 0.0
        has_base = False
        new_parts, old_parts = [], []
        for batch, old, scored in zip(self.batches, olds, after):
            kl += float(family.kl(actions, batch, old, scored).double().sum()) / total
            base = actions.kl_to_base(batch, scored)
            if base is not None:
                has_base = True
                kl_base += float(base.double().sum()) / total
            new_parts.append(scored.new_log_prob.detach().cpu())
            old_parts.append(scored.old_log_prob.detach().cpu())
        if self.reuse:
            actions.stop_keeping()
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

    def _kept(self, batch, state):
        return self.actions.kept_evaluation(batch, state) if self.reuse else None

    def _pre_update(self) -> list[Any]:
        """The pre-update distribution of every batch, each from the first source that has it:
        the update's own scoring at the pre-update parameters (TRPO's gradient pass: every
        batch; PPO's: its first minibatch); the base model's step when the pre-update adapter
        added nothing (its means are kept for the KL to the base, computed anyway); else a pass
        at the pre-update parameters, copied back in for it and the updated ones after it (bit
        for bit: copies, no arithmetic)."""
        actions, family = self.actions, self.family
        olds: list[Any] = [None] * len(self.batches)
        missing = []
        for k, batch in enumerate(self.batches):
            kept = self._kept(batch, self.start_state)
            if kept is not None:
                olds[k] = family.snapshot(actions, batch, kept)
            elif self.start_is_base:
                olds[k] = family.snapshot(actions, batch, _Step(*actions.base_step(batch)))
            else:
                missing.append(k)
        if missing:
            updated = [p.detach().clone() for p in self.parameters]
            _copy_into(self.parameters, self.start_values)
            try:
                for k in missing:
                    olds[k] = family.snapshot(actions, self.batches[k], actions.evaluate(self.batches[k]))
            finally:
                _copy_into(self.parameters, updated)
        return olds


@dataclass
class _Step:
    """A step Gaussian without log-probs, in the form DenoiseKL.snapshot reads."""

    mean: torch.Tensor
    std: torch.Tensor


def _copy_into(parameters: Sequence[torch.nn.Parameter], values: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, value in zip(parameters, values):
            p.copy_(value)


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
