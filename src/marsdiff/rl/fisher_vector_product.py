"""Fisher-vector products v -> (F + lambda I) v for TRPO's conjugate gradient, F the Hessian at
theta_old of the mean KL(pi_old || pi_theta) over a subsample of actions (where the KL and its
gradient vanish, so the Hessian is the Fisher information).

Two ways to multiply by F:

* ``kl_hessian`` (any action family): double backprop, F v = grad_theta (grad_theta KL . v);
* ``gauss_newton`` (denoising steps only): sigma is fixed by the noise schedule, so the KL is
  mean_d (mu_theta - mu_old)^2 / (2 sigma^2) and F = sum_rows J^T J / (sigma^2 D n) with
  J = d mu / d theta, D the latent dimensions (the stored unit averages over them) and n the
  subsample's size. J^T (.) is one ordinary backward through the kept graph of the means; J v
  comes from one of two ``jacobian_vector`` ways:

  - ``reverse`` (default): once per chunk, h(u) = J^T u with create_graph (u a dummy cotangent
    of the means' shape); then J v = d (h(u) . v) / d u, a backward through that backward graph
    (h is linear in u, so its value does not matter). No forward pass per product: measured on
    the default-size pixel UNet (32 rows, one thread), a product costs 1.23 UNet fwd+bwd
    against 1.97 with the dual forward pass; the price is memory, the first backward's graph
    kept beside the forward's (about kl_hessian's);
  - ``forward``: forward-mode AD, one dual forward pass per product (memory of one forward
    graph; the choice for large attention models on a GPU, docs/rl.md).

PyTorch's fused attention kernels have neither a double backward nor a forward-mode derivative:
kl_hessian and gauss_newton's reverse J v run wholly, the forward J v only, through diffusers'
classic attention processor (:func:`twice_differentiable_attention`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch

from marsdiff.errors import MarsdiffError
from marsdiff.rl.distributed import SINGLE, RankGroup
from marsdiff.rl.kl_families import kl_family, policy_module, split_batch
from marsdiff.rl.parameter_vectors import flat_vector, unflat_vector

FVP_METHODS = ("kl_hessian", "gauss_newton")
JACOBIAN_VECTOR = ("reverse", "forward")


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


def has_attention(module: torch.nn.Module | None) -> bool:
    """Whether ``module`` has diffusers attention layers (whose default kernels a double backward
    cannot go through)."""
    if module is None:
        return False
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:
        return False
    return any(isinstance(layer, Attention) for layer in module.modules())


class _WithModule(torch.nn.Module):
    """Registers ``module`` under one root so ``torch.func.functional_call`` can substitute its
    parameters while ``fn`` (which reaches the module through the backend) runs."""

    def __init__(self, module: torch.nn.Module, fn: Callable[[], torch.Tensor]):
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self) -> torch.Tensor:
        return self.fn()


class FisherVectorProduct:
    """v -> (F + damping I) v, F the Fisher information of the mean KL(pi_old || pi_theta) on a
    fixed set of actions (``batch``, the FVP subsample), evaluated at the current parameters
    (theta_old).

    The subsample is processed in chunks of ``chunk_size`` actions. With a single chunk, the
    first-order graph (grad KL with create_graph, or the Gaussian means) is built once and kept
    across products (fastest); with several, every product rebuilds each chunk's graph (memory
    bounded by one chunk). ``seconds`` and ``products`` accumulate for the update's log.

    ``first_order_mean`` (gauss_newton, one chunk): the chunk's (step means, sigma) with the
    means' autograd graph at theta_old, already computed by the caller (TRPO's gradient pass over
    the same rows): the kept graph is then that one, and no forward pass is spent on building
    it. With ``jacobian_vector`` reverse that graph must be twice differentiable (no fused
    attention in it: :func:`has_attention`).
    """

    def __init__(self, actions, parameters: Sequence[torch.nn.Parameter], batch: Any, method: str,
                 chunk_size: int, damping: float, group: RankGroup = SINGLE,
                 first_order_mean: tuple[torch.Tensor, torch.Tensor] | None = None, *, jacobian_vector: str):
        if method not in FVP_METHODS:
            raise MarsdiffError(f"trpo.fvp_method must be one of {', '.join(FVP_METHODS)}, got {method!r}")
        if jacobian_vector not in JACOBIAN_VECTOR:
            raise MarsdiffError(f"trpo.jacobian_vector must be one of {', '.join(JACOBIAN_VECTOR)}, got {jacobian_vector!r}")
        self.reverse = method == "gauss_newton" and jacobian_vector == "reverse"
        self.actions = actions
        self.family = kl_family(actions)
        if method == "gauss_newton" and not self.family.supports_gauss_newton:
            raise MarsdiffError("trpo.fvp_method gauss_newton needs fixed-sigma Gaussian actions (mode lora_unet); use kl_hessian")
        self.parameters = list(parameters)
        self.method = method
        self.damping = float(damping)
        # With several processes each rank takes its share of the subsample; the products are
        # sums over actions divided by the whole subsample's count, summed over ranks.
        self.group = group
        self.count = len(batch)
        self.chunks = split_batch(group.shard(batch), max(1, int(chunk_size)))
        self.module = policy_module(actions)
        self._cached: Any = None
        if first_order_mean is not None:
            if method != "gauss_newton" or len(self.chunks) != 1:
                raise MarsdiffError("FisherVectorProduct: a precomputed first-order graph needs gauss_newton and one chunk")
            mean, std = first_order_mean
            self._cached = self._gauss_newton_graph(mean, std)
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
        v_parts = unflat_vector(vector, self.parameters)
        out = torch.zeros_like(vector)
        # kl_hessian and the reverse J v differentiate the first-order graph again: every attention
        # layer in it must be the classic one. The forward J v needs it only for its dual pass; the
        # J^T pass is then an ordinary backward through the model's own (memory-efficient) attention.
        attention = self.module if self.method == "kl_hessian" or self.reverse else None
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
        """Free the kept first-order graph."""
        self._cached = None

    # kl_hessian: grad KL with a graph, then the gradient of (grad KL . v)
    # gauss_newton: the means with a graph (reverse: and J^T u with a graph), then J^T (J v / (sigma^2 D n))
    def _first_order(self, chunk):
        scored = self.actions.evaluate(chunk)
        if self.method == "gauss_newton":
            return self._gauss_newton_graph(scored.mean, scored.std)
        old = self.family.snapshot(self.actions, chunk, scored)
        kl = self.family.fisher_kl(self.actions, chunk, old, scored).sum() / self.count
        return torch.autograd.grad(kl, self.parameters, create_graph=True, allow_unused=True)

    def _gauss_newton_graph(self, mean: torch.Tensor, std: torch.Tensor) -> tuple:
        """(means, sigma, u, J^T u with its graph): the last two only for the reverse J v."""
        if not self.reverse:
            return mean, std.detach(), None, None
        u = torch.zeros_like(mean, requires_grad=True)
        jt_u = torch.autograd.grad(mean, self.parameters, grad_outputs=u, create_graph=True, allow_unused=True)
        return mean, std.detach(), u, jt_u

    def _product(self, chunk, first, v_parts, retain: bool) -> torch.Tensor:
        if self.method == "gauss_newton":
            mean, std, u, jt_u = first
            jv = self._jacobian_vector(chunk, v_parts) if u is None else self._reverse_jacobian_vector(mean, u, jt_u, v_parts)
            dims = mean[0].numel()
            weight = jv / (std.view(-1, *([1] * (mean.ndim - 1))).pow(2) * dims * self.count)
            grads = torch.autograd.grad(mean, self.parameters, grad_outputs=weight, retain_graph=retain, allow_unused=True)
            return flat_vector(grads, self.parameters)
        grad_kl = first
        dot = sum((g * v).sum() for g, v in zip(grad_kl, v_parts) if g is not None and g.requires_grad)
        if not torch.is_tensor(dot):
            return torch.zeros(sum(p.numel() for p in self.parameters), dtype=torch.float64, device=v_parts[0].device)
        grads = torch.autograd.grad(dot, self.parameters, retain_graph=retain, allow_unused=True)
        return flat_vector(grads, self.parameters)

    @staticmethod
    def _reverse_jacobian_vector(mean, u, jt_u, v_parts) -> torch.Tensor:
        """J v = d (J^T u . v) / d u: a backward through the kept J^T u graph (linear in u)."""
        dot = sum((g * v).sum() for g, v in zip(jt_u, v_parts) if g is not None and g.requires_grad)
        if not torch.is_tensor(dot):
            return torch.zeros_like(mean)
        (jv,) = torch.autograd.grad(dot, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(mean) if jv is None else jv

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
