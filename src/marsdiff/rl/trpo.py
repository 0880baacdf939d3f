"""TRPO on the denoising chain or on the generation plan: one natural-gradient step per round,
inside a KL trust region that the line search checks on every action of the round.

One update (the structure of sb3-contrib's TRPO, one policy step per rollout); each concept has
its module, and :func:`trpo_update` is these steps in order, one named function each:

1. Surrogate gradient (:func:`round_surrogate_gradient`, on the minibatches and FVP subsample of
   :func:`share_round`), over every action of the round (minibatches of ``minibatch_size``):
   g = grad_theta L(theta_old), L(theta) = mean(r A), r = exp(log pi_theta(a) - log pi_old(a))
   in the action family's stored unit: the same surrogate as PPO, without the clip
   (:func:`marsdiff.rl.surrogate.surrogate_objective`). The pass also keeps the old policy's
   distribution of each action (:mod:`marsdiff.rl.kl_families`) for the line search's KL.
2. Fisher-vector products F v (:mod:`marsdiff.rl.fisher_vector_product`) on the FVP subsample:
   the first ``fvp_subsample`` actions of the round's shuffled minibatch order, i.e. the
   gradient pass's first minibatch(es), a uniform draw from the round (the buffer shuffles
   every transition of a block, and one block holds the whole round unless it exceeds 256 MB).
   ``auto``: gauss_newton for denoising steps, kl_hessian for plan actions; gauss_newton's J v by
   ``jacobian_vector`` reverse (a backward through the kept J^T u graph, default) or forward
   (a dual forward pass per product). When the subsample is exactly the first minibatch (the
   default ``fvp_subsample`` = ``minibatch_size``) and the method is gauss_newton, the gradient
   pass scores that minibatch last and keeps its graph: the FVP's first-order graph (the step
   means at theta_old) is that forward pass, not a new one. With the reverse J v this needs a
   twice-differentiable graph, so it applies to networks without attention layers only (the
   gradient pass keeps the model's own attention kernels, whose log-probs match the sampler's).
3. Conjugate gradient (:mod:`marsdiff.rl.conjugate_gradient`, :func:`natural_gradient_direction`)
   solves (F + lambda I) s = g in at most ``cg_iterations`` products, stopping once the squared
   residual is below ``cg_tolerance``.
   The damping is relative to the Fisher's scale: lambda = ``cg_damping`` * (g^T F g) / (g^T g),
   the Rayleigh quotient of F along the gradient. An absolute lambda cannot be right in every
   unit: in mean_per_dim_nats the LoRA Fisher's Rayleigh quotient is about 1e-3, so an absolute
   0.1 made (F + 0.1 I) about 0.1 I and the "natural" step a rescaled gradient after one CG
   product. With lambda a fraction of F's scale along g, directions whose curvature is above
   lambda are solved for (F^-1 g), those below are damped (cut at about g / lambda).
   F g is also CG's first product ((F + lambda I) g, CG starting from s = 0 along g), so the
   damping costs no extra product.
4. Step length beta = sqrt(2 max_kl / s^T F s) (:func:`maximal_step_length`; undamped F: the
   step whose quadratic KL model is exactly max_kl; damping only regularises the solve).
   s^T (F + lambda I) s comes from CG's recursion (s^T (g - r), r its residual): no product
   after the solve.
   With ``kl_to_base`` c > 0 (LoRA mode) the surrogate is mean(r A) - c * KL(pi_theta || pi_base),
   the per-step KL to the base model (the adapter disabled, no gradient; the base means are
   computed once per round) in mean_per_dim_nats: its gradient enters g, and the line search
   asks the penalised surrogate to improve.
5. Backtracking line search (:mod:`marsdiff.rl.line_search`, :func:`trust_region_line_search`):
   theta_old + shrink^k beta s, k = 0 .. line_search_max_tries - 1; the first step whose mean
   KL(old || new) over the round's actions is <= max_kl and whose surrogate improves is kept.
   If none is, the old parameters are copied back bit for bit and the rejection is logged. A try
   stops as soon as the KL of the actions scored so far already exceeds max_kl; with one process
   the denoising steps are scored in minibatches regrouped by decreasing 1/sigma^2 and, after the
   first try, the minibatches with the most KL first, so that stop comes early (the same tries
   accepted: line_search.py).

The update's row of metrics (gradient, solve, step, times): :func:`update_log`.
Products per update: ``cg_iterations`` at most (it was 2 + ``cg_iterations``: a separate F g
for the damping and a separate F s for the step length).

KL units: the family's stored log-prob unit, so ``max_kl`` = 0.01 means 0.01
mean_per_dim_nats per denoising step (true nats: times C*H*W) and 0.01 nats per plan action.
Laplace knobs: autograd's Hessian of the exact Laplace KL at theta_old is 0 in the location (the
KL has |mu - mu_old| in it); the FVP uses a form with the same value, gradient and Hessian at
theta_old (:func:`marsdiff.rl.kl_families.smooth_laplace_kl`), the line search the exact KL.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from marsdiff.errors import MarsdiffError
from marsdiff.rl.conjugate_gradient import conjugate_gradient
from marsdiff.rl.distributed import SINGLE, RankGroup
from marsdiff.rl.fisher_vector_product import (
    FVP_METHODS,
    FisherVectorProduct,
    has_attention,
    twice_differentiable_attention,
)
from marsdiff.rl.kl_families import DenoiseKL, kl_family, policy_module, split_batch
from marsdiff.rl.line_search import (
    LineSearchResult,
    backtracking_line_search,
    base_penalty,
    evaluate_surrogate_and_kl,
    regroup_by_sigma,
)
from marsdiff.rl.parameter_vectors import flat_vector, unflat_vector
from marsdiff.rl.settings import settings_from_mapping
from marsdiff.rl.skips import require_finite
from marsdiff.rl.surrogate import ratio_stats, surrogate_objective

log = logging.getLogger(__name__)

FVP_CHOICES = ("auto",) + FVP_METHODS

__all__ = ["FVP_CHOICES", "FVP_METHODS", "FisherVectorProduct", "TRPOSettings", "conjugate_gradient",
           "trpo_update", "twice_differentiable_attention"]


@dataclass(frozen=True)
class TRPOSettings:
    """The ``trpo:`` section of an experiment (keys, defaults, units and ranges: the schema)."""

    max_kl: float
    cg_iterations: int
    cg_damping: float
    cg_tolerance: float
    line_search_shrink: float
    line_search_max_tries: int
    fvp_subsample: int
    fvp_method: str
    jacobian_vector: str
    minibatch_size: int
    timestep_fraction: float

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "TRPOSettings":
        """From the schema-filled section (:func:`marsdiff.rl.experiments.experiment_settings`)."""
        return settings_from_mapping(cls, cfg, "trpo")


def trpo_update(actions, parameters: Sequence[torch.nn.Parameter], settings: TRPOSettings, progress: bool = True, *,
                kl_to_base: float, apply_step: bool = True, group: RankGroup = SINGLE) -> dict[str, float]:
    """One TRPO step on the round's ``actions``; returns the update's log (one row of metrics).

    ``kl_to_base``: the experiment's weight c of the KL penalty to the base model in the surrogate
    (denoising actions only). ``apply_step`` False (the zero_lr control) computes and logs
    everything up to the step and leaves the parameters as they were, bit for bit.

    With several processes (``group``) each rank takes its contiguous share of every minibatch
    and of the FVP subsample; the surrogate, its gradient, the Fisher-vector products, the KL
    and the line search's surrogate are sums over actions divided by the whole round's count,
    summed over ranks, so every rank computes the same direction, step and acceptance."""
    parameters = list(parameters)
    if not parameters:
        raise MarsdiffError("TRPO: the policy has no trainable parameters")
    family = kl_family(actions)
    method = fvp_method_for(family, settings.fvp_method)
    clock = _Stopwatch()
    # 1. g = grad L(theta_old) over every action of the round; the old policy's distributions.
    shares = share_round(actions, settings, method, kl_to_base, group)
    first = round_surrogate_gradient(actions, parameters, family, shares, group, progress)
    times = {"gradient_seconds": clock.lap()}
    # 2-3. s = (F + lambda I)^-1 g by CG, F the Fisher on the FVP subsample.
    fvp = FisherVectorProduct(actions, parameters, shares.fvp_batch, method, settings.minibatch_size, 0.0, group,
                              first_order_mean=first.kept, jacobian_vector=settings.jacobian_vector)
    clock.lap()  # building the FVP's first-order graph: neither the gradient's time nor CG's
    natural = natural_gradient_direction(fvp, first.gradient, settings)
    fvp.release()
    times["cg_seconds"] = clock.lap() - fvp.seconds  # CG's own arithmetic: the products are fvp_seconds
    # 4. beta = sqrt(2 max_kl / s^T F s): the full step beta s.
    beta = maximal_step_length(settings.max_kl, natural.s_f_s)
    full_step = beta * natural.direction
    # 5. theta_old + shrink^k beta s: the first step inside the trust region that improves L.
    search, searched = None, 0
    if beta > 0 and math.isfinite(beta) and apply_step:
        search, searched = trust_region_line_search(actions, family, parameters, shares, first, full_step, settings,
                                                    group, progress)
    times["line_search_seconds"] = clock.lap()
    row = update_log(shares, settings, first, natural, beta, full_step, search, searched, fvp, times, clock.total)
    log.info("TRPO %s: KL %.4g / %.4g, surrogate gain %.4g, %d CG products (residual %.3g), %d tries, %.1f s",
             "accepted" if row["accepted"] else "rejected", row["kl"], settings.max_kl, row["surrogate_gain"],
             natural.cg_iterations, natural.cg_residual, row["line_search_tries"], row["seconds"])
    return row


def fvp_method_for(family, fvp_method: str) -> str:
    """The FVP method ``fvp_method`` resolves to for an action family (``auto``: gauss_newton
    where sigma is fixed, kl_hessian otherwise)."""
    method = fvp_method
    if method == "auto":
        method = "gauss_newton" if family.supports_gauss_newton else "kl_hessian"
    if method == "gauss_newton" and not family.supports_gauss_newton:
        raise MarsdiffError("trpo.fvp_method gauss_newton needs fixed-sigma Gaussian actions (mode lora_unet); use kl_hessian")
    return method


def leading_actions(batches: Sequence[Any], count: int) -> Any:
    """The first ``count`` actions of ``batches`` in order, as one batch (TRPO's FVP subsample)."""
    parts, taken = [], 0
    for batch in batches:
        if taken >= count:
            break
        part = batch if len(batch) <= count - taken else split_batch(batch, count - taken)[0]
        parts.append(part)
        taken += len(part)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else type(parts[0]).concatenate(parts)


@dataclass
class RoundShares:
    """How the update walks the round: what steps 1, 2 and 5 score."""

    batches: list[Any]  # this rank's (non-empty) share of each minibatch, in the round's shuffled order
    total: int  # the round's actions over every rank: the divisor of every mean
    fvp_batch: Any  # the FVP subsample, every rank's: the first fvp_subsample actions of the round
    keep: int | None  # the share (index in batches) whose gradient graph the FVP reuses, or None
    coef: float  # c, the weight of KL(pi_theta || pi_base) in the surrogate (0: no base model)
    bases: list[Any] | None  # the base model's step means of each share (c > 0), once per round


def share_round(actions, settings: TRPOSettings, method: str, kl_to_base: float, group: RankGroup) -> RoundShares:
    """The round's minibatches (the buffer's epoch-0 order), this rank's share of each, the FVP
    subsample (their first ``fvp_subsample`` actions) and the base model's means for the penalty.

    The gradient pass keeps its graph for the FVP when that graph is the FVP's first-order one:
    gauss_newton on a subsample that is exactly the first minibatch, whose share is one FVP chunk;
    with the reverse J v, which differentiates that graph twice, only in a network without
    attention layers (the gradient pass runs the model's own fused attention kernels, whose
    log-probs match the sampler's, and those have no double backward)."""
    round_batches = list(actions.minibatches(0))
    total = sum(len(b) for b in round_batches)
    if total == 0:
        raise MarsdiffError("TRPO: the round has no actions to learn from")
    fvp_batch = leading_actions(round_batches, settings.fvp_subsample)
    shards = [group.shard(b) for b in round_batches]
    batches = [b for b in shards if len(b)]
    twice_differentiable = settings.jacobian_vector == "forward" or not has_attention(policy_module(actions))
    reuse = (method == "gauss_newton" and twice_differentiable and len(fvp_batch) == len(round_batches[0])
             and len(shards[0]) > 0 and len(shards[0]) <= settings.minibatch_size)
    # The base means do not depend on theta: computed once, they are the penalty's fixed reference.
    coef = float(kl_to_base) if getattr(actions, "base_mean", None) is not None else 0.0
    bases = [actions.base_mean(batch) for batch in batches] if coef > 0 else None
    return RoundShares(batches, total, fvp_batch, 0 if reuse else None, coef, bases)


@dataclass
class SurrogateGradient:
    """Step 1's results: what the solve and the line search need from the gradient pass."""

    gradient: torch.Tensor  # flat float64 (this rank's part; over ranks: round_surrogate_gradient's)
    surrogate: float  # mean (penalised) surrogate at theta_old
    start_log_ratio: float  # max |log pi_theta - log pi_old| at theta_old (0 up to rounding)
    olds: list[Any]  # per batch (in ``batches`` order): the old policy's distributions
    kept: Any = None  # (means, std) of the batch whose graph was kept, or None


def surrogate_gradient(actions, parameters: Sequence[torch.nn.Parameter], family, batches: Sequence[Any], total: int,
                       bases: Sequence[Any] | None, coef: float, keep: int | None, bar) -> SurrogateGradient:
    """g = grad of the mean (penalised) surrogate over ``batches`` (this rank's shares; ``total``
    actions over every rank), batch by batch. ``keep``: the index of a batch whose autograd graph
    the FVP reuses; it is scored last (so no more than one graph is alive at any time, as without
    reuse) and its backward keeps the graph. The order only changes how float64 sums round."""
    gradient = torch.zeros(sum(p.numel() for p in parameters), dtype=torch.float64, device=parameters[0].device)
    olds: list[Any] = [None] * len(batches)
    surrogate, start_log_ratio, kept = 0.0, 0.0, None
    order = [k for k in range(len(batches)) if k != keep] + ([keep] if keep is not None else [])
    for k in order:
        batch = batches[k]
        scored = actions.evaluate(batch)
        part = surrogate_objective(scored.new_log_prob, scored.old_log_prob, scored.advantages) * (len(batch) / total)
        part = part - base_penalty(actions, batch, scored, bases[k] if bases else None, coef) / total
        gradient += flat_vector(torch.autograd.grad(part, parameters, allow_unused=True, retain_graph=k == keep), parameters)
        surrogate += float(part.detach())
        start_log_ratio = max(start_log_ratio, float((scored.new_log_prob.detach() - scored.old_log_prob).abs().max()))
        olds[k] = family.snapshot(actions, batch, scored)
        if k == keep:
            kept = (scored.mean, scored.std)
        bar.update(len(batch))
    return SurrogateGradient(gradient, surrogate, start_log_ratio, olds, kept)


def round_surrogate_gradient(actions, parameters: Sequence[torch.nn.Parameter], family, shares: RoundShares,
                             group: RankGroup, progress: bool) -> SurrogateGradient:
    """Step 1 over the whole round: g = grad L(theta_old) and L(theta_old), each rank's part
    (:func:`surrogate_gradient`) summed over ranks, max |log r| taken over ranks. A NaN/inf
    surrogate or gradient would make the whole step NaN: it raises, and the round loop skips the
    update."""
    from tqdm import tqdm

    bar = tqdm(total=shares.total, desc="TRPO gradient", unit="action", leave=False,
               disable=not progress or not group.is_writer)
    local = surrogate_gradient(actions, parameters, family, shares.batches, shares.total, shares.bases, shares.coef,
                               shares.keep, bar)
    bar.close()
    group.sum_tensor(local.gradient)
    summed = replace(local, surrogate=group.sum(local.surrogate), start_log_ratio=group.max(local.start_log_ratio))
    require_finite("the TRPO surrogate", summed.surrogate)
    require_finite("the TRPO surrogate gradient", summed.gradient)
    return summed


@dataclass
class NaturalDirection:
    """Steps 2-4: the CG solution s of (F + lambda I) s = g and the quadratic KL model along it."""

    direction: torch.Tensor
    s_f_s: float  # s^T F s, undamped
    rayleigh_gradient: float  # g^T F g / g^T g
    damping: float  # lambda
    cg_residual: float
    cg_iterations: int


def natural_gradient_direction(fvp: FisherVectorProduct, gradient: torch.Tensor, settings: TRPOSettings) -> NaturalDirection:
    """s = (F + lambda I)^-1 g by conjugate gradient, lambda = cg_damping * g^T F g / g^T g."""
    if not float(gradient.norm()) > 0:
        return NaturalDirection(torch.zeros_like(gradient), 0.0, 0.0, 0.0, 0.0, 0)
    fvp.damping = 0.0
    f_gradient = fvp(gradient)  # undamped F g: the damping's scale and CG's first product
    g_g = float(gradient @ gradient)
    rayleigh = float(gradient @ f_gradient) / g_g
    fvp.damping = settings.cg_damping * max(rayleigh, 0.0)
    solved = conjugate_gradient(fvp, gradient, settings.cg_iterations, settings.cg_tolerance,
                                a_times_b=f_gradient + fvp.damping * gradient)
    require_finite("the TRPO natural-gradient direction", solved.x)
    s_s = float(solved.x @ solved.x)
    # The undamped quadratic KL model s^T F s; damping regularised the solve only.
    s_f_s = solved.x_a_x - fvp.damping * s_s
    if not s_f_s > 0:
        s_f_s = solved.x_a_x
    return NaturalDirection(solved.x, s_f_s, rayleigh, fvp.damping, solved.residual_norm, solved.products)


def maximal_step_length(max_kl: float, s_f_s: float) -> float:
    """beta = sqrt(2 max_kl / s^T F s): the step beta s whose quadratic KL model beta^2 s^T F s / 2
    is exactly ``max_kl`` (0 when s^T F s is not positive: no direction to step along)."""
    return math.sqrt(2 * max_kl / s_f_s) if s_f_s > 0 else 0.0


def trust_region_line_search(actions, family, parameters: Sequence[torch.nn.Parameter], shares: RoundShares,
                             first: SurrogateGradient, full_step: torch.Tensor, settings: TRPOSettings,
                             group: RankGroup, progress: bool) -> tuple[LineSearchResult, int]:
    """Step 5: theta = theta_old + shrink^k ``full_step``, k = 0 .. line_search_max_tries - 1; keeps the
    first theta with mean KL(pi_old || pi_theta) <= max_kl over every action of the round and
    L(theta) > L(theta_old), else restores theta_old bit for bit and warns. Returns the search and
    how many actions (this rank's) its tries scored."""
    from tqdm import tqdm

    bar = tqdm(total=settings.line_search_max_tries * shares.total, desc="TRPO line search", unit="action",
               leave=False, disable=not progress or not group.is_writer)
    # One process: the denoising steps regrouped by decreasing 1/sigma^2, where their KL lies, so
    # that a rejected try's early stop comes sooner (line_search.py). Several ranks score every try
    # whole (no early stop): nothing to gain there.
    batches, olds, bases = shares.batches, first.olds, shares.bases
    if group.world == 1 and family is DenoiseKL:
        batches, olds, bases = regroup_by_sigma(batches, olds, bases, settings.minibatch_size)
    scored = 0

    def evaluate(kl_bound: float, order):
        nonlocal scored
        evaluation = evaluate_surrogate_and_kl(actions, family, batches, olds, shares.total, bar, bases, shares.coef,
                                               group, kl_bound, order)
        scored += sum(len(b) for b, part in zip(batches, evaluation.batch_kl) if part is not None)
        return evaluation

    # Later tries score the minibatches with the most KL first: a rejection stops sooner (line_search.py).
    search = backtracking_line_search(parameters, unflat_vector(full_step, parameters), evaluate, first.surrogate,
                                      settings.max_kl, settings.line_search_shrink, settings.line_search_max_tries,
                                      batches=len(batches))
    bar.close()
    if not search.accepted:
        log.warning(
            "TRPO step rejected after %d line-search tries: KL %.4g (max %.4g), surrogate gain %.4g; parameters unchanged",
            search.tries, search.kl_last, settings.max_kl, search.gain_last,
        )
    return search, scored


def update_log(shares: RoundShares, settings: TRPOSettings, first: SurrogateGradient, natural: NaturalDirection,
               beta: float, full_step: torch.Tensor, search: LineSearchResult | None, searched: int,
               fvp: FisherVectorProduct, times: Mapping[str, float], elapsed: Callable[[], float]) -> dict[str, float]:
    """The update's row of metrics: the gradient, the solve (:func:`_direction_log`), the step
    (:func:`_step_log`, with the expected gain g^T beta s of the accepted fraction), the time of
    each step (``times``, by key) and ``seconds``, the whole update's (``elapsed()``, read last)."""
    grad_norm = float(first.gradient.norm())
    return {
        "actions": float(shares.total), "fvp_actions": float(fvp.count), "max_kl": settings.max_kl,
        "surrogate_before": first.surrogate, "grad_norm": grad_norm, "start_log_ratio_max": first.start_log_ratio,
        **_direction_log(natural, grad_norm), "kl_to_base_coef": shares.coef,
        **_step_log(search, beta, float(full_step.norm()), float(first.gradient @ full_step)),
        "gradient_seconds": times["gradient_seconds"], "fvp_seconds": fvp.seconds, "fvp_products": float(fvp.products),
        "cg_seconds": times["cg_seconds"], "line_search_seconds": times["line_search_seconds"],
        "line_search_actions": float(searched),
        "seconds": elapsed(),
    }


def _direction_log(natural: NaturalDirection, grad_norm: float) -> dict[str, float]:
    """The solve's part of the update's log: CG's work and the Fisher's curvature."""
    s_s = float(natural.direction @ natural.direction)
    rayleigh = natural.s_f_s / s_s if natural.s_f_s > 0 else 0.0
    return {
        "cg_iterations": float(natural.cg_iterations), "cg_residual": natural.cg_residual,
        "cg_relative_residual": natural.cg_residual / grad_norm if grad_norm > 0 else 0.0,
        "fisher_rayleigh": rayleigh, "fisher_rayleigh_gradient": natural.rayleigh_gradient,
        "cg_damping_absolute": natural.damping,
        # lambda over F's curvature along the step: << 1 means the solve followed F, ~1 or more a gradient step.
        "damping_ratio": natural.damping / rayleigh if rayleigh > 0 else float("nan"),
    }


def _step_log(search: LineSearchResult | None, beta: float, full_step_norm: float, expected_gain: float) -> dict[str, float]:
    """The step's part of the update's log (``search`` None: no step was tried)."""
    accepted = search is not None and search.accepted
    fraction = search.fraction if accepted else 0.0
    if accepted:
        stats = ratio_stats(search.evaluation.new_log_prob, search.evaluation.old_log_prob).as_dict()
        stats.pop("clip_fraction")
    else:
        stats = {"ratio_mean": 1.0, "ratio_max": 1.0, "approx_kl": 0.0}
    return {
        "accepted": float(accepted), "line_search_tries": float(search.tries if search else 0),
        "kl": search.kl if accepted else 0.0, "kl_last_try": search.kl_last if search else float("nan"),
        "surrogate_gain": search.gain if accepted else 0.0,
        "expected_gain": expected_gain * fraction if accepted else 0.0,
        "step_size": beta * fraction, "step_fraction": fraction, "step_norm": full_step_norm * fraction,
        **stats,
    }


class _Stopwatch:
    """The update's times: :meth:`lap` since the previous lap (or the start), :meth:`total` since the start."""

    def __init__(self):
        self.started = self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds

    def total(self) -> float:
        return time.perf_counter() - self.started
