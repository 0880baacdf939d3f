"""TRPO's backtracking line search: theta_old + shrink^k * full_step for k = 0, 1, ..., keeping
the first step whose mean KL(pi_old || pi_theta) over every action of the round is <= max_kl
and whose surrogate improves; the old parameters, bit for bit, when none does.

Each try re-scores the round's actions (forward passes without gradient). The KL is a mean of
per-action KLs, each >= 0, so the running sum over the actions scored so far, divided by the
round's count, is a lower bound of the round's mean KL: once it exceeds max_kl the try is
rejected whatever the remaining actions hold, and the rest of the pass is skipped (exact: the
same tries are accepted and rejected as with the whole pass). Only the rejection can be decided
on part of the round: acceptance needs the whole round's KL and surrogate.

The lower bound passes the bound soonest when the actions with the most KL are scored first.
Two orderings serve that, neither changing which tries are accepted:

* the denoising steps are regrouped once, before the first try, into minibatches by decreasing
  1 / sigma^2 (:func:`regroup_by_sigma`): a step's KL is mean_d (mu_new - mu_old)^2 / (2 sigma^2),
  and on the benchmark round the last steps (smallest sigma) carry up to 100 times the KL of the
  first, the 32 actions of largest KL more than half of the round's (docs/rl.md, "TRPO");
* every try after the first scores the minibatches in decreasing order of their KL per unit
  squared step, KL / fraction^2, as last measured (:func:`next_order`).

The round's KL and surrogate of a complete pass are summed in the minibatches' own order, so
:func:`next_order` changes nothing but where a rejected pass stops; the regrouping puts other rows
together in a minibatch, which changes the sums by rounding only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from marsdiff.faults import kill_point
from marsdiff.rl.distributed import SINGLE, RankGroup
from marsdiff.rl.surrogate import surrogate_objective


def base_penalty(actions, batch, scored, base_mean, coef: float) -> torch.Tensor | float:
    """c * sum over the batch of KL(pi_theta || pi_base) per action (0 when c is 0)."""
    if coef <= 0 or base_mean is None:
        return 0.0
    return coef * actions.kl_to_base(batch, scored, base_mean=base_mean).sum()


@dataclass
class RoundEvaluation:
    """The round's actions scored at the current parameters."""

    surrogate: float  # mean (penalised) surrogate; nan when the pass stopped early
    kl: float  # mean KL(old || current); a lower bound above the bound when the pass stopped early
    complete: bool
    new_log_prob: torch.Tensor | None = None  # every action's, when complete
    old_log_prob: torch.Tensor | None = None
    batch_kl: list[float | None] | None = None  # per minibatch (this rank's): its KL sum / total; None if not scored


@torch.no_grad()
def evaluate_surrogate_and_kl(actions, family, batches: Sequence[Any], olds: Sequence[Any], total: int,
                              bar=None, bases: Sequence[Any] | None = None, coef: float = 0.0,
                              group: RankGroup = SINGLE, kl_bound: float = math.inf,
                              order: Sequence[int] | None = None) -> RoundEvaluation:
    """Mean (penalised) surrogate and mean KL(old || current) over all ``batches``, plus all
    log-probs (``batches``: this rank's shares; means and log-probs over every rank's).

    One process: stops as soon as the running KL sum / ``total`` exceeds ``kl_bound`` (module
    docstring), scoring the batches in ``order`` (default: as given). Several: the ranks hold
    different batches and would have to agree on the stop after every batch, so they always run
    the whole pass. The totals of a complete pass are summed in the batches' own order whatever
    ``order`` is, so they do not depend on it."""
    n = len(batches)
    order = list(range(n)) if order is None else list(order)
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of the {n} batches, got {order}")
    kl_parts: list[float | None] = [None] * n
    surrogate_parts: list[tuple[float, float]] = [(0.0, 0.0)] * n
    new_parts: list[torch.Tensor] = [torch.zeros(0)] * n
    old_parts: list[torch.Tensor] = [torch.zeros(0)] * n
    early_stop = group.world == 1
    running = 0.0
    for k in order:
        batch = batches[k]
        scored = actions.evaluate(batch)
        kl_parts[k] = float(family.kl(actions, batch, olds[k], scored).double().sum()) / total
        running += kl_parts[k]
        if bar is not None:
            bar.update(len(batch))
        if early_stop and running > kl_bound:
            return RoundEvaluation(float("nan"), running, False, batch_kl=kl_parts)
        surrogate_parts[k] = (
            float(surrogate_objective(scored.new_log_prob, scored.old_log_prob, scored.advantages)) * len(batch) / total,
            float(base_penalty(actions, batch, scored, bases[k] if bases else None, coef)) / total,
        )
        new_parts[k] = scored.new_log_prob.detach().cpu()
        old_parts[k] = scored.old_log_prob.detach().cpu()
    # In the batches' own order: the same sums, operation for operation, as a pass in that order.
    surrogate = kl = 0.0
    for k in range(n):
        kl += kl_parts[k]
        surrogate += surrogate_parts[k][0]
        surrogate -= surrogate_parts[k][1]
    new = torch.cat(new_parts) if n else torch.zeros(0)
    old = torch.cat(old_parts) if n else torch.zeros(0)
    return RoundEvaluation(group.sum(surrogate), group.sum(kl), True, group.cat(new), group.cat(old), kl_parts)


def regroup_by_sigma(batches: Sequence[Any], olds: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     bases: Sequence[torch.Tensor] | None, size: int):
    """The denoising steps of ``batches`` (TransitionBatch, or arrays of row indices) regrouped into minibatches of ``size``
    by decreasing 1 / sigma^2 (the old snapshot's sigma; ties keep the round's order), with their
    old (mean, sigma) snapshots and base means (``bases``, or None) regrouped alike."""
    if not batches:
        return list(batches), list(olds), bases
    if isinstance(batches[0], np.ndarray):  # row indices (test families)
        everything = np.concatenate(list(batches))
        take = everything.__getitem__
    else:
        everything = type(batches[0]).concatenate(list(batches))
        take = everything.take
    mean = torch.cat([o[0] for o in olds])
    std = torch.cat([o[1] for o in olds])
    # Stable: equal sigmas (the same step of every image) keep the round's shuffled order.
    rows = torch.sort(std.reshape(len(std), -1)[:, 0].double(), stable=True).indices
    base = torch.cat(list(bases)) if bases else None
    out_batches, out_olds, out_bases = [], [], [] if bases else None
    for lo in range(0, len(rows), max(1, int(size))):
        part = rows[lo:lo + size]
        out_batches.append(take(part.numpy()))
        out_olds.append((mean[part], std[part]))
        if base is not None:
            out_bases.append(base[part])
    return out_batches, out_olds, out_bases


def next_order(previous: Sequence[int] | None, batch_kl: Sequence[float | None] | None, fraction: float,
               known: list[float | None]) -> list[int] | None:
    """The scoring order of the next try: minibatches by decreasing KL / fraction^2, the KL per
    unit squared step (``known``, updated in place with the batches ``batch_kl`` scored at
    ``fraction``). A batch never scored yet is placed as if it held the mean of the known ones."""
    if batch_kl is None:
        return previous
    for k, part in enumerate(batch_kl):
        if part is not None:
            known[k] = part / fraction ** 2
    seen = [v for v in known if v is not None]
    if not seen:
        return previous
    fill = sum(seen) / len(seen)
    keys = [fill if v is None else v for v in known]
    # Ties (equal keys) keep the batches' own order: sorted() is stable.
    return sorted(range(len(keys)), key=lambda k: -keys[k])


@dataclass
class LineSearchResult:
    accepted: bool
    tries: int
    fraction: float  # of the full step kept (0 when rejected)
    kl: float  # the accepted step's mean KL (0 when rejected)
    gain: float  # its surrogate gain (0 when rejected)
    kl_last: float  # the last try's KL (a lower bound above max_kl if that pass stopped early)
    gain_last: float  # the last try's surrogate gain (nan if that pass stopped early)
    evaluation: RoundEvaluation | None  # the accepted step's scoring


def backtracking_line_search(parameters: Sequence[torch.nn.Parameter], full_step: Sequence[torch.Tensor],
                             evaluate: Callable[..., RoundEvaluation], surrogate_old: float, max_kl: float,
                             shrink: float, max_tries: int, batches: int | None = None) -> LineSearchResult:
    """Try theta_old + shrink^k * ``full_step`` (per-parameter tensors) for k = 0 .. max_tries - 1;
    ``evaluate(kl_bound)`` scores the round at the parameters in place. The parameters are left at
    the accepted step, or restored bit for bit (the saved tensors copied back, no arithmetic).

    ``batches``: how many minibatches ``evaluate`` scores; given, it is called as
    ``evaluate(kl_bound, order)`` with the order :func:`next_order` derives from the earlier tries
    (the first try in the batches' own order)."""
    saved = [p.detach().clone() for p in parameters]
    tries, fraction, kl_last, gain_last = 0, 0.0, float("nan"), float("nan")
    order: list[int] | None = None
    known: list[float | None] = [None] * (batches or 0)
    for k in range(max_tries):
        tries = k + 1
        fraction = shrink ** k
        with torch.no_grad():
            for p, p0, d in zip(parameters, saved, full_step):
                p.copy_(p0 + fraction * d)
        kill_point("update.trpo.line_search")
        evaluation = evaluate(max_kl) if batches is None else evaluate(max_kl, order)
        kl_last = evaluation.kl
        gain_last = evaluation.surrogate - surrogate_old if evaluation.complete else float("nan")
        if evaluation.complete and kl_last <= max_kl and gain_last > 0:
            return LineSearchResult(True, tries, fraction, kl_last, gain_last, kl_last, gain_last, evaluation)
        if batches is not None:
            order = next_order(order, evaluation.batch_kl, fraction, known)
    restore(parameters, saved)
    return LineSearchResult(False, tries, 0.0, 0.0, 0.0, kl_last, gain_last, None)


def restore(parameters: Sequence[torch.nn.Parameter], saved: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, p0 in zip(parameters, saved):
            p.copy_(p0)  # exact: the saved tensors themselves, no arithmetic
