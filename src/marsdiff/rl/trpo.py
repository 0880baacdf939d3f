"""TRPO on the denoising chain or on the generation plan: one natural-gradient step per round,
inside a KL trust region that the line search checks on every action of the round.

One update (the structure of sb3-contrib's TRPO, one policy step per rollout):

1. Surrogate gradient, over every action of the round (minibatches of ``minibatch_size``):
   g = grad_theta L(theta_old), L(theta) = mean(r A), r = exp(log pi_theta(a) - log pi_old(a))
   in the action family's stored unit: the same surrogate as PPO, without the clip
   (:func:`marsdiff.rl.surrogate.surrogate_objective`). The pass also keeps the old policy's
   distribution of each action (the Gaussian means of the denoising steps, the knob
   distributions of the plan actions) for the line search's KL.
2. Fisher-vector products F v on a seeded subsample of ``fvp_subsample`` actions, F the Hessian
   of the mean KL(pi_old || pi_theta) at theta = theta_old (where KL and its gradient vanish and
   the Hessian is the Fisher information):

   * ``kl_hessian`` (any family): double backprop, F v = grad_theta (grad_theta KL . v);
   * ``gauss_newton`` (denoising steps only): sigma is fixed by the noise schedule, so the KL is
     mean_d (mu_theta - mu_old)^2 / (2 sigma^2) and F = mean_rows J^T J / (sigma^2 D) with
     J = d mu / d theta and D the latent dimensions (the stored unit averages over them).
     J v comes from forward-mode AD, J^T (.) from one ordinary backward.
   * ``auto`` (default): gauss_newton for denoising steps (cheaper, and no double backward:
     less memory), kl_hessian for plan actions.

   PyTorch's fused attention kernels have neither a double backward nor a forward-mode
   derivative: kl_hessian runs wholly, gauss_newton's J v only, through diffusers' classic
   attention processor (:func:`twice_differentiable_attention`).
3. Conjugate gradient solves (F + lambda I) s = g in at most ``cg_iterations`` products,
   stopping once the squared residual is below ``cg_tolerance``. The damping is relative to
   the Fisher's scale: lambda = ``cg_damping`` * (g^T F g) / (g^T g), the Rayleigh quotient of F
   along the gradient (one extra product). An absolute lambda cannot be right in every unit: in
   mean_per_dim_nats the LoRA Fisher's Rayleigh quotient is about 1e-3, so an absolute 0.1 made
   (F + 0.1 I) about 0.1 I and the "natural" step a rescaled gradient after one CG product.
   With lambda a fraction of F's scale along g, directions whose curvature is above lambda are
   solved for (F^-1 g), those below are damped (cut at about g / lambda).
4. Step length beta = sqrt(2 max_kl / s^T F s) (undamped F: the step whose quadratic KL model is
   exactly max_kl; damping only regularises the solve).
   With ``kl_to_base`` c > 0 (LoRA mode) the surrogate is mean(r A) - c * KL(pi_theta || pi_base),
   the per-step KL to the base model (the adapter disabled, no gradient; the base means are
   computed once per round) in mean_per_dim_nats: its gradient enters g, and the line search
   asks the penalised surrogate to improve.
5. Backtracking line search: theta_old + shrink^k beta s, k = 0 .. line_search_max_tries - 1;
   the first step whose mean KL(old || new) over the round's actions is <= max_kl and whose
   surrogate improves is kept. If none is, the old parameters are copied back bit for bit and the
   rejection is logged.

KL units: the family's stored log-prob unit, so ``max_kl`` = 0.01 means 0.01
mean_per_dim_nats per denoising step (true nats: times C*H*W) and 0.01 nats per plan action.
Laplace knobs: autograd's Hessian of the exact Laplace KL at theta_old is 0 in the location (the
KL has |mu - mu_old| in it); the FVP uses a form with the same value, gradient and Hessian at
theta_old (:func:`_smooth_laplace_kl`), the line search the exact KL.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from marsdiff.errors import MarsdiffError
from marsdiff.faults import kill_point
from marsdiff.rl.distributed import SINGLE, RankGroup
from marsdiff.rl.settings import settings_from_mapping
from marsdiff.rl.actions import gaussian_mean_kl
from marsdiff.rl.skips import require_finite
from marsdiff.rl.surrogate import ratio_stats, surrogate_objective

log = logging.getLogger(__name__)

FVP_METHODS = ("kl_hessian", "gauss_newton")
FVP_CHOICES = ("auto",) + FVP_METHODS


@dataclass(frozen=True)
class TRPOSettings:
    """The ``trpo:`` section of an experiment (defaults: sb3-contrib's TRPO)."""

    max_kl: float = 0.01  # in the action family's stored unit (mean_per_dim_nats / nats)
    cg_iterations: int = 10
    cg_damping: float = 0.01  # relative: lambda = cg_damping * g^T F g / g^T g (docs/rl.md, "TRPO")
    cg_tolerance: float = 1e-10  # on the squared residual norm, as sb3-contrib
    line_search_shrink: float = 0.8
    line_search_max_tries: int = 10
    fvp_subsample: int = 32  # = minibatch_size: one chunk, its graph kept across CG products
    fvp_method: str = "auto"  # gauss_newton for denoising steps, kl_hessian for plan actions
    minibatch_size: int = 32  # also the FVP chunk size
    timestep_fraction: float = 1.0  # read by the round loop (DenoiseActions)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "TRPOSettings":
        settings = settings_from_mapping(cls, cfg, "trpo")
        checks = (
            ("max_kl", settings.max_kl > 0, "must be > 0"),
            ("cg_iterations", settings.cg_iterations >= 1, "must be >= 1"),
            ("cg_damping", settings.cg_damping >= 0, "must be >= 0"),
            ("cg_tolerance", settings.cg_tolerance > 0, "must be > 0"),
            ("line_search_shrink", 0 < settings.line_search_shrink < 1, "must be in (0, 1)"),
            ("line_search_max_tries", settings.line_search_max_tries >= 1, "must be >= 1"),
            ("fvp_subsample", settings.fvp_subsample >= 1, "must be >= 1"),
            ("fvp_method", settings.fvp_method in FVP_CHOICES, f"must be one of {', '.join(FVP_CHOICES)}"),
            ("minibatch_size", settings.minibatch_size >= 1, "must be >= 1"),
            ("timestep_fraction", 0 < settings.timestep_fraction <= 1, "must be in (0, 1]"),
        )
        for key, ok, rule in checks:
            if not ok:
                raise MarsdiffError(f"trpo.{key} {rule}, got {getattr(settings, key)!r}")
        return settings


# --- the two action families: old-policy snapshot and KL(old || new) per action ----------------

def _split(batch: Any, size: int) -> list[Any]:
    """Consecutive chunks of a minibatch (a TransitionBatch or an array of plan-action rows)."""
    n = len(batch)
    take = (lambda s: batch[s]) if isinstance(batch, np.ndarray) else batch.take
    return [take(slice(lo, min(n, lo + size))) for lo in range(0, n, size)]


class _DenoiseFamily:
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


def _smooth_laplace_kl(old: torch.distributions.Laplace, new: torch.distributions.Laplace) -> torch.Tensor:
    """KL(Laplace(m1, b1) || Laplace(m2, b2)) = log(b2/b1) + |d|/b2 + (b1/b2) exp(-|d|/b1) - 1 with
    its |d| terms replaced by their second-order expansion d^2 / (2 b1 b2): equal value, gradient
    and Hessian at d = 0 (where the FVP differentiates), but twice differentiable by autograd."""
    b1, b2 = old.scale, new.scale
    d = new.loc - old.loc
    return torch.log(b2 / b1) + b1 / b2 - 1 + d.pow(2) / (2 * b1 * b2)


class _PlanFamily:
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
                return _smooth_laplace_kl(p, q)
            return torch.distributions.kl_divergence(p, q)

        return cls._kl(actions, rows, old, knob_kl)


def _family(actions):
    return _PlanFamily if hasattr(actions, "distributions") else _DenoiseFamily


def _policy_module(actions) -> torch.nn.Module | None:
    """The network the denoising actions run through (None for plan actions)."""
    backend = getattr(getattr(actions, "policy", None), "backend", None)
    return getattr(backend, "unet", None)


# --- flat parameter vectors ----------------------------------------------------------------------

def _flat(tensors: Sequence[torch.Tensor | None], parameters: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """Concatenate per-parameter tensors (None = zero, an unused parameter) into one float64 vector."""
    return torch.cat([
        (t if t is not None else torch.zeros_like(p)).detach().reshape(-1).double() for t, p in zip(tensors, parameters)
    ])


def _unflat(vector: torch.Tensor, parameters: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    parts, lo = [], 0
    for p in parameters:
        parts.append(vector[lo : lo + p.numel()].view_as(p).to(dtype=p.dtype, device=p.device))
        lo += p.numel()
    return parts


# --- attention that supports double backward and forward-mode AD ------------------------------

@contextmanager
def twice_differentiable_attention(module: torch.nn.Module | None) -> Iterator[int]:
    """Run ``module``'s diffusers attention layers with the classic ``AttnProcessor`` (softmax(QK^T)V
    in plain tensor ops), restoring each layer's own processor afterwards; yields how many were swapped.

    The default ``AttnProcessor2_0`` calls ``scaled_dot_product_attention``, whose fused kernels
    (flash, memory-efficient, the CPU flash kernel) implement neither a double backward nor a
    forward-mode derivative. The classic processor materialises the (heads, N, N) attention
    matrix, which the FVP's graph keeps: the memory cost documented in docs/rl.md.
    """
    if module is None:
        yield 0
        return
    try:
        from diffusers.models.attention_processor import Attention, AttnProcessor
    except ImportError:  # no diffusers attention in this module
        yield 0
        return
    swapped = [(layer, layer.processor) for layer in module.modules() if isinstance(layer, Attention)]
    for layer, _ in swapped:
        layer.set_processor(AttnProcessor())
    try:
        yield len(swapped)
    finally:
        for layer, processor in swapped:
            layer.set_processor(processor)


class _WithModule(torch.nn.Module):
    """Registers ``module`` under one root so ``torch.func.functional_call`` can substitute its
    parameters while ``fn`` (which reaches the module through the backend) runs."""

    def __init__(self, module: torch.nn.Module, fn: Callable[[], torch.Tensor]):
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self) -> torch.Tensor:
        return self.fn()


# --- Fisher-vector products ------------------------------------------------------------------------

class FisherVectorProduct:
    """v -> (F + damping I) v, F the Fisher information of the mean KL(pi_old || pi_theta) on a
    fixed set of actions (the FVP subsample), evaluated at the current parameters (theta_old).

    The subsample is processed in chunks of ``chunk_size`` actions. With a single chunk, the
    first-order graph (grad KL with create_graph, or the Gaussian means) is built once and kept
    across products (fastest); with several, every product rebuilds each chunk's graph (memory
    bounded by one chunk). ``seconds`` and ``products`` accumulate for the update's log.
    """

    def __init__(self, actions, parameters: Sequence[torch.nn.Parameter], batch: Any, method: str,
                 chunk_size: int, damping: float, group: RankGroup = SINGLE):
        if method not in FVP_METHODS:
            raise MarsdiffError(f"trpo.fvp_method must be one of {', '.join(FVP_METHODS)}, got {method!r}")
        self.actions = actions
        self.family = _family(actions)
        if method == "gauss_newton" and not self.family.supports_gauss_newton:
            raise MarsdiffError("trpo.fvp_method gauss_newton needs fixed-sigma Gaussian actions (mode lora_unet); use kl_hessian")
        self.parameters = list(parameters)
        self.method = method
        self.damping = float(damping)
        # With several processes each rank takes its share of the subsample; the products are
        # sums over actions divided by the whole subsample's count, summed over ranks.
        self.group = group
        self.count = len(batch)
        self.chunks = _split(group.shard(batch), max(1, int(chunk_size)))
        self.module = _policy_module(actions)
        self._cached: Any = None
        self.seconds = 0.0
        self.products = 0
        if method == "gauss_newton":
            if self.module is None:
                raise MarsdiffError("trpo.fvp_method gauss_newton: the actions expose no network (actions.policy.backend.unet)")
            names = {id(p): name for name, p in self.module.named_parameters()}
            missing = [i for i, p in enumerate(self.parameters) if id(p) not in names]
            if missing:
                raise MarsdiffError(f"trpo.fvp_method gauss_newton: {len(missing)} trainable parameters are not in the policy network")
            self._names = ["module." + names[id(p)] for p in self.parameters]

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        v_parts = _unflat(vector, self.parameters)
        out = torch.zeros_like(vector)
        # kl_hessian differentiates the whole first-order graph again: every attention layer in it
        # must be the classic one. gauss_newton only needs it for the forward-mode J v; its J^T
        # pass is an ordinary backward through the model's own (memory-efficient) attention.
        attention = self.module if self.method == "kl_hessian" else None
        with twice_differentiable_attention(attention):
            keep = len(self.chunks) == 1
            for chunk in self.chunks:
                if keep and self._cached is None:
                    self._cached = self._first_order(chunk)
                first = self._cached if keep else self._first_order(chunk)
                out += self._product(chunk, first, v_parts, retain=keep)
        self.group.sum_tensor(out)
        self.seconds += time.perf_counter() - started
        self.products += 1
        return out + self.damping * vector

    def release(self) -> None:
        self._cached = None

    # kl_hessian: grad KL with a graph, then the gradient of (grad KL . v)
    # gauss_newton: the means with a graph, then J^T (J v / (sigma^2 D n))
    def _first_order(self, chunk):
        scored = self.actions.evaluate(chunk)
        if self.method == "gauss_newton":
            return scored.mean, scored.std.detach()
        old = self.family.snapshot(self.actions, chunk, scored)
        kl = self.family.fisher_kl(self.actions, chunk, old, scored).sum() / self.count
        return torch.autograd.grad(kl, self.parameters, create_graph=True, allow_unused=True)

    def _product(self, chunk, first, v_parts, retain: bool) -> torch.Tensor:
        if self.method == "gauss_newton":
            mean, std = first
            jv = self._jacobian_vector(chunk, v_parts)
            dims = mean[0].numel()
            weight = jv / (std.view(-1, *([1] * (mean.ndim - 1))).pow(2) * dims * self.count)
            grads = torch.autograd.grad(mean, self.parameters, grad_outputs=weight, retain_graph=retain, allow_unused=True)
            return _flat(grads, self.parameters)
        grad_kl = first
        dot = sum((g * v).sum() for g, v in zip(grad_kl, v_parts) if g is not None and g.requires_grad)
        if not torch.is_tensor(dot):
            return torch.zeros(sum(p.numel() for p in self.parameters), dtype=torch.float64, device=v_parts[0].device)
        grads = torch.autograd.grad(dot, self.parameters, retain_graph=retain, allow_unused=True)
        return _flat(grads, self.parameters)

    def _jacobian_vector(self, chunk, v_parts) -> torch.Tensor:
        """J v = d mu(theta + e v) / d e at e = 0, by forward-mode AD (one dual forward pass)."""
        import torch.autograd.forward_ad as fwAD
        from torch.func import functional_call

        probe = _WithModule(self.module, lambda: self.actions.evaluate(chunk).mean)
        with torch.no_grad(), fwAD.dual_level(), twice_differentiable_attention(self.module):
            duals = {name: fwAD.make_dual(p.detach(), v) for name, p, v in zip(self._names, self.parameters, v_parts)}
            mean = functional_call(probe, duals, ())
            tangent = fwAD.unpack_dual(mean).tangent
        return torch.zeros_like(fwAD.unpack_dual(mean).primal) if tangent is None else tangent


def conjugate_gradient(fvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iterations: int,
                       tolerance: float) -> tuple[torch.Tensor, float, int]:
    """Solve A x = b for symmetric positive-definite A given only v -> A v.

    Stops after ``iterations`` products or once ||b - A x||^2 < ``tolerance`` (the recursive
    residual). Returns (x, ||residual||, products used).
    """
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    r_dot_r = float(residual @ residual)
    used = 0
    while used < iterations and r_dot_r >= tolerance:
        a_direction = fvp(direction)
        used += 1
        curvature = float(direction @ a_direction)
        if not curvature > 0:
            # Only without damping and along a null direction of F: nothing left to solve for.
            log.warning("conjugate gradient: non-positive curvature %.3g after %d products; stopping", curvature, used)
            break
        alpha = r_dot_r / curvature
        x += alpha * direction
        residual -= alpha * a_direction
        new_r_dot_r = float(residual @ residual)
        direction = residual + (new_r_dot_r / r_dot_r) * direction
        r_dot_r = new_r_dot_r
    return x, math.sqrt(max(r_dot_r, 0.0)), used


# --- the update -------------------------------------------------------------------------------------

def _base_penalty(actions, batch, scored, base_mean, coef: float) -> torch.Tensor | float:
    """c * sum over the batch of KL(pi_theta || pi_base) per action (0 when c is 0)."""
    if coef <= 0 or base_mean is None:
        return 0.0
    return coef * actions.kl_to_base(batch, scored, base_mean=base_mean).sum()


@torch.no_grad()
def _evaluate_all(actions, family, batches: Sequence[Any], olds: Sequence[Any], total: int,
                  bar=None, bases: Sequence[Any] | None = None,
                  coef: float = 0.0, group: RankGroup = SINGLE) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Mean (penalised) surrogate and mean KL(old || current) over all ``batches``, plus all log-probs
    (``batches``: this rank's shares; the means and log-probs are over every rank's)."""
    surrogate = kl = 0.0
    new_parts, old_parts = [], []
    for k, (batch, old) in enumerate(zip(batches, olds)):
        scored = actions.evaluate(batch)
        surrogate += float(surrogate_objective(scored.new_log_prob, scored.old_log_prob, scored.advantages)) * len(batch) / total
        surrogate -= float(_base_penalty(actions, batch, scored, bases[k] if bases else None, coef)) / total
        kl += float(family.kl(actions, batch, old, scored).double().sum()) / total
        new_parts.append(scored.new_log_prob.detach().cpu())
        old_parts.append(scored.old_log_prob.detach().cpu())
        if bar is not None:
            bar.update(len(batch))
    new = torch.cat(new_parts) if new_parts else torch.zeros(0)
    old = torch.cat(old_parts) if old_parts else torch.zeros(0)
    return group.sum(surrogate), group.sum(kl), group.cat(new), group.cat(old)


def trpo_update(actions, parameters: Sequence[torch.nn.Parameter], settings: TRPOSettings,
                progress: bool = True, kl_to_base: float = 0.0, apply_step: bool = True,
                group: RankGroup = SINGLE) -> dict[str, float]:
    """One TRPO step on the round's ``actions``; returns the update's log (one row of metrics).

    ``kl_to_base``: weight of the KL penalty to the base model in the surrogate (denoising
    actions only). ``apply_step`` False (the zero_lr control) computes and logs everything up to
    the step and leaves the parameters as they were, bit for bit.

    With several processes (``group``) each rank takes its contiguous share of every minibatch
    and of the FVP subsample; the surrogate, its gradient, the Fisher-vector products, the KL
    and the line search's surrogate are sums over actions divided by the whole round's count,
    summed over ranks, so every rank computes the same direction, step and acceptance."""
    from tqdm import tqdm

    parameters = list(parameters)
    if not parameters:
        raise MarsdiffError("TRPO: the policy has no trainable parameters")
    family = _family(actions)
    method = settings.fvp_method
    if method == "auto":
        method = "gauss_newton" if family.supports_gauss_newton else "kl_hessian"
    if method == "gauss_newton" and not family.supports_gauss_newton:
        raise MarsdiffError("trpo.fvp_method gauss_newton needs fixed-sigma Gaussian actions (mode lora_unet); use kl_hessian")
    started = time.perf_counter()

    # 1. Surrogate value and gradient at theta_old over every action; the old distributions.
    batches = list(actions.minibatches(0))
    total = sum(len(b) for b in batches)
    if total == 0:
        raise MarsdiffError("TRPO: the round has no actions to learn from")
    batches = [b for b in (group.shard(b) for b in batches) if len(b)]
    gradient = torch.zeros(sum(p.numel() for p in parameters), dtype=torch.float64, device=parameters[0].device)
    olds, surrogate_old, start_log_ratio = [], 0.0, 0.0
    # The base model's step means, once per round (they do not depend on theta): the penalty's reference.
    coef = float(kl_to_base) if getattr(actions, "base_mean", None) is not None else 0.0
    bases = [actions.base_mean(batch) for batch in batches] if coef > 0 else None
    bar = tqdm(total=total, desc="TRPO gradient", unit="action", leave=False, disable=not progress or not group.is_writer)
    for k, batch in enumerate(batches):
        scored = actions.evaluate(batch)
        part = surrogate_objective(scored.new_log_prob, scored.old_log_prob, scored.advantages) * (len(batch) / total)
        part = part - _base_penalty(actions, batch, scored, bases[k] if bases else None, coef) / total
        gradient += _flat(torch.autograd.grad(part, parameters, allow_unused=True), parameters)
        surrogate_old += float(part.detach())
        start_log_ratio = max(start_log_ratio, float((scored.new_log_prob.detach() - scored.old_log_prob).abs().max()))
        olds.append(family.snapshot(actions, batch, scored))
        bar.update(len(batch))
    bar.close()
    group.sum_tensor(gradient)
    surrogate_old, start_log_ratio = group.sum(surrogate_old), group.max(start_log_ratio)
    # A NaN/inf surrogate or gradient makes the whole step NaN: the round loop skips the update.
    require_finite("the TRPO surrogate", surrogate_old)
    require_finite("the TRPO surrogate gradient", gradient)
    gradient_seconds = time.perf_counter() - started

    # 2-3. Natural-gradient direction s = (F + damping I)^-1 g on the FVP subsample.
    fvp_rows = actions.subsample(settings.fvp_subsample, int(getattr(actions, "seed", 0)))
    fvp = FisherVectorProduct(actions, parameters, fvp_rows, method, settings.minibatch_size, 0.0, group)
    cg_started = time.perf_counter()
    grad_norm = float(gradient.norm())
    direction = torch.zeros_like(gradient)
    cg_residual, cg_used, s_f_s, rayleigh_g = 0.0, 0, 0.0, 0.0
    if grad_norm > 0:
        # Relative damping: a fraction of F's curvature along g (undamped product, fvp.damping is 0 here).
        rayleigh_g = float(gradient @ fvp(gradient)) / float(gradient @ gradient)
        fvp.damping = settings.cg_damping * max(rayleigh_g, 0.0)
        direction, cg_residual, cg_used = conjugate_gradient(fvp, gradient, settings.cg_iterations, settings.cg_tolerance)
        require_finite("the TRPO natural-gradient direction", direction)
        f_direction = fvp(direction)
        s_s = float(direction @ direction)
        # The undamped quadratic KL model s^T F s; damping regularised the solve only.
        s_f_s = float(direction @ f_direction) - fvp.damping * s_s
        if not s_f_s > 0:
            s_f_s = float(direction @ f_direction)
    fvp.release()
    cg_seconds = time.perf_counter() - cg_started - fvp.seconds

    # 4-5. Step length and backtracking line search on every action of the round.
    ls_started = time.perf_counter()
    row: dict[str, float] = {
        "actions": float(total), "fvp_actions": float(fvp.count), "max_kl": settings.max_kl,
        "surrogate_before": surrogate_old, "grad_norm": grad_norm, "start_log_ratio_max": start_log_ratio,
        "cg_iterations": float(cg_used), "cg_residual": cg_residual,
        "cg_relative_residual": cg_residual / grad_norm if grad_norm > 0 else 0.0,
        "fisher_rayleigh": s_f_s / float(direction @ direction) if s_f_s > 0 else 0.0,
        "fisher_rayleigh_gradient": rayleigh_g, "cg_damping_absolute": fvp.damping,
        "kl_to_base_coef": coef,
    }
    # lambda over F's curvature along the step: << 1 means the solve followed F, ~1 or more a gradient step.
    row["damping_ratio"] = fvp.damping / row["fisher_rayleigh"] if row["fisher_rayleigh"] > 0 else float("nan")
    accepted, tries, kl, gain, fraction, kl_last, gain_last = False, 0, 0.0, 0.0, 0.0, float("nan"), float("nan")
    beta = math.sqrt(2 * settings.max_kl / s_f_s) if s_f_s > 0 else 0.0
    full_step = beta * direction
    expected_gain = float(gradient @ full_step)
    saved = [p.detach().clone() for p in parameters]
    new_log_prob = old_log_prob = None
    if beta > 0 and math.isfinite(beta) and apply_step:
        step_parts = _unflat(full_step, parameters)
        bar = tqdm(total=settings.line_search_max_tries * total, desc="TRPO line search", unit="action", leave=False,
                   disable=not progress or not group.is_writer)
        for k in range(settings.line_search_max_tries):
            tries = k + 1
            fraction = settings.line_search_shrink ** k
            with torch.no_grad():
                for p, p0, d in zip(parameters, saved, step_parts):
                    p.copy_(p0 + fraction * d)
            kill_point("update.trpo.line_search")
            surrogate_new, kl_last, new_log_prob, old_log_prob = _evaluate_all(actions, family, batches, olds, total, bar,
                                                                               bases, coef, group)
            gain_last = surrogate_new - surrogate_old
            if kl_last <= settings.max_kl and gain_last > 0:
                accepted, kl, gain = True, kl_last, gain_last
                break
        bar.close()
    if not accepted:
        with torch.no_grad():
            for p, p0 in zip(parameters, saved):
                p.copy_(p0)  # exact: the saved tensors themselves, no arithmetic
    if not accepted and apply_step:
        log.warning(
            "TRPO step rejected after %d line-search tries: KL %.4g (max %.4g), surrogate gain %.4g; parameters unchanged",
            tries, kl_last, settings.max_kl, gain_last,
        )
        fraction = 0.0
    line_search_seconds = time.perf_counter() - ls_started
    if accepted:
        stats = ratio_stats(new_log_prob, old_log_prob).as_dict()
        stats.pop("clip_fraction")
    else:
        stats = {"ratio_mean": 1.0, "ratio_max": 1.0, "approx_kl": 0.0}
    row.update({
        "accepted": float(accepted), "line_search_tries": float(tries), "kl": kl, "kl_last_try": kl_last,
        "surrogate_gain": gain, "expected_gain": expected_gain * fraction if accepted else 0.0,
        "step_size": beta * fraction, "step_fraction": fraction,
        "step_norm": float(full_step.norm()) * fraction,
        **stats,
        "gradient_seconds": gradient_seconds, "fvp_seconds": fvp.seconds, "fvp_products": float(fvp.products),
        "cg_seconds": cg_seconds, "line_search_seconds": line_search_seconds,
        "seconds": time.perf_counter() - started,
    })
    log.info("TRPO %s: KL %.4g / %.4g, surrogate gain %.4g, %d CG products (residual %.3g), %d tries, %.1f s",
             "accepted" if accepted else "rejected", kl, settings.max_kl, gain, cg_used, cg_residual, tries, row["seconds"])
    return row
