"""TRPO (marsdiff.rl.trpo): Fisher-vector products against explicitly built Fisher matrices,
conjugate gradient against its tolerance, the trust region checked by an independent KL
computation after every accepted step, bit-exact restoration after a rejected one, every mode
through the round loop (pixel LoRA, scheduler and diversity policies, Stable Diffusion LoRA), and
a learning test on a known reward. Tiny models only; nothing is downloaded."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from marsdiff.diffusion.rescoring import scheduler_for_trajectories, transition_log_prob
from marsdiff.diffusion.scheduler_logprob import gaussian_log_prob
from marsdiff.errors import MarsdiffError
from marsdiff.io.trajectories import open_trajectories
from marsdiff.rl.actions import DenoiseActions, PlanActions, Scored
from marsdiff.rl.experiments import experiment_settings
from marsdiff.rl.policy import RoundPolicy
from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round
from marsdiff.rl.round_update import update_policy_round
from marsdiff.rl.trpo import (
    FisherVectorProduct,
    TRPOSettings,
    conjugate_gradient,
    trpo_update,
    twice_differentiable_attention,
)
from rl_helpers import round_store, trpo_settings
from tiny_models import tiny_pixel_backend


# Double backward runs many small kernels: one thread per process (conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def experiment(mode: str, images: int = 6, steps: int = 3, seed: int = 0, **trpo):
    cfg = {"algorithm": "trpo", "mode": mode, "images_per_round": images, "steps": steps, "seed": seed, "trpo": trpo}
    return experiment_settings({"t": cfg}, "t", {"batch_size": images})


def sample(policy, exp, round_index, out_dir) -> str:
    settings = round_sampling_settings({"batch_size": exp["images_per_round"], "device": "cpu"}, exp)
    sample_policy_round(policy, settings, exp, round_index, out_dir, store=round_store())
    return str(out_dir / "trajectories.h5")


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --- settings -----------------------------------------------------------------------------------

def test_settings_defaults_and_one_line_errors():
    s = trpo_settings()
    assert (s.max_kl, s.cg_iterations, s.cg_damping, s.cg_tolerance) == (0.01, 10, 0.01, 1e-10)
    assert (s.line_search_shrink, s.line_search_max_tries, s.fvp_method) == (0.8, 10, "auto")
    assert trpo_settings(cg_iterations=15.0, max_kl=1).cg_iterations == 15
    bad = {
        "max_kl": 0, "cg_iterations": 2.5, "cg_damping": -0.1, "cg_tolerance": 0, "line_search_shrink": 1.0,
        "line_search_max_tries": 0, "fvp_subsample": 0, "fvp_method": "exact", "minibatch_size": True,
        "jacobian_vector": "both",
        "timestep_fraction": 1.5,
    }
    for key, value in bad.items():
        with pytest.raises(MarsdiffError) as err:
            trpo_settings(**{key: value})
        assert f"trpo.{key}" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MarsdiffError, match=r"trpo\.clip: unknown key"):
        trpo_settings(clip=0.2)
    with pytest.raises(MarsdiffError, match=r"trpo: settings \['cg_damping'\] missing"):
        TRPOSettings.from_config({k: v for k, v in vars(s).items() if k != "cg_damping"})


# --- an exactly solvable denoising family: linear Gaussian means, fixed sigma, float64 --------------

class LinearGaussianSteps:
    """Denoising-like actions x_{t-1} ~ N(W x_t + b, sigma^2 I), scored in mean_per_dim_nats by the
    real gaussian_log_prob: small enough (a 6x6 linear map) to build the Fisher matrix explicitly."""

    unit = "mean_per_dim_nats"
    shape = (1, 2, 3)

    def __init__(self, rows: int = 12, seed: int = 0, advantages=None,
                 column_scale: torch.Tensor | None = None):
        g = torch.Generator().manual_seed(seed)
        dims = int(np.prod(self.shape))
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(dims, dims).double()
        self.policy = SimpleNamespace(backend=SimpleNamespace(unet=self.model))
        self.x = torch.randn(rows, dims, generator=g, dtype=torch.float64)
        self.x[0] *= 0.01  # one state with almost no Fisher information (the first of the round's order: see the
        # rejected-step test, whose FVP subsample is this state alone)
        if column_scale is not None:  # inputs of unequal scale: a badly conditioned Fisher
            self.x *= column_scale
        self.std = torch.rand(rows, generator=g, dtype=torch.float64) + 0.5
        with torch.no_grad():
            mean = self.mean(np.arange(rows))
        noise = torch.randn(mean.shape, generator=g, dtype=torch.float64)
        self.sample = mean + self.std.view(-1, 1, 1, 1) * noise
        self.old_log_prob = gaussian_log_prob(self.sample, mean, self.std)
        self.advantages = torch.randn(rows, generator=g, dtype=torch.float64) if advantages is None else advantages
        self.seed = seed

    @property
    def num_actions(self) -> int:
        return len(self.x)

    def mean(self, rows) -> torch.Tensor:
        return self.model(self.x[torch.as_tensor(rows)]).view(len(rows), *self.shape)

    def evaluate(self, rows) -> Scored:
        rows_t = torch.as_tensor(rows)
        mean = self.mean(rows)
        new = gaussian_log_prob(self.sample[rows_t], mean, self.std[rows_t])
        return Scored(new, self.old_log_prob[rows_t], self.advantages[rows_t], mean, self.std[rows_t])

    def minibatches(self, epoch):
        yield from np.array_split(np.arange(self.num_actions), 3)

    def subsample(self, count, seed):
        return np.sort(np.random.default_rng(seed).permutation(self.num_actions)[:count])

    def explicit_fisher(self, rows) -> torch.Tensor:
        """sum_r J_r^T J_r / (sigma_r^2 D n) with J_r = d mu_r / d(W, b) from autograd's jacobian."""
        weight, bias = (p.detach() for p in self.model.parameters())

        def mean_of(flat_params):
            w = flat_params[: weight.numel()].view_as(weight)
            b = flat_params[weight.numel():]
            return (self.x[torch.as_tensor(rows)] @ w.T + b).reshape(len(rows), -1)

        jac = torch.autograd.functional.jacobian(mean_of, torch.cat([weight.reshape(-1), bias]))  # (n, D, P)
        dims = jac.shape[1]
        std = self.std[torch.as_tensor(rows)]
        return torch.einsum("ndp,ndq,n->pq", jac, jac, 1.0 / (std.pow(2) * dims * len(rows)))


@pytest.mark.parametrize("method, jacobian_vector",
                         [("kl_hessian", "reverse"), ("gauss_newton", "reverse"), ("gauss_newton", "forward")])
def test_fvp_matches_the_explicit_fisher_of_linear_gaussian_steps(method, jacobian_vector):
    actions = LinearGaussianSteps()
    params = list(actions.model.parameters())
    rows = actions.subsample(8, 0)
    fisher = actions.explicit_fisher(rows)
    # 3 chunks: recompute path; one chunk: kept graph
    fvp = FisherVectorProduct(actions, params, rows, method, chunk_size=3, damping=0.0, jacobian_vector=jacobian_vector)
    cached = FisherVectorProduct(actions, params, rows, method, chunk_size=64, damping=0.0, jacobian_vector=jacobian_vector)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(fisher.shape[0], generator=g, dtype=torch.float64)
        assert relative(fvp(v), fisher @ v) < 1e-6
        assert relative(cached(v), fisher @ v) < 1e-6
        assert relative(cached(v), fisher @ v) < 1e-6  # the kept graph survives repeated products
    damped = FisherVectorProduct(actions, params, rows, method, chunk_size=64, damping=0.1, jacobian_vector="reverse")
    assert relative(damped(v), fisher @ v + 0.1 * v) < 1e-6


def test_conjugate_gradient_solves_the_damped_fisher_system_to_its_tolerance():
    actions = LinearGaussianSteps()
    params = list(actions.model.parameters())
    rows = np.arange(actions.num_actions)
    damping, tolerance = 0.1, 1e-20
    fisher = actions.explicit_fisher(rows) + damping * torch.eye(len(flat(params)), dtype=torch.float64)
    fvp = FisherVectorProduct(actions, params, rows, "kl_hessian", chunk_size=64, damping=damping, jacobian_vector="reverse")
    b = torch.randn(fisher.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    solved = conjugate_gradient(fvp, b, iterations=200, tolerance=tolerance)
    x, residual, used = solved.x, solved.residual_norm, solved.products
    true_residual = float((b - fisher @ x).norm())
    assert true_residual**2 < 10 * tolerance  # the recursion's residual is the true one up to rounding
    assert residual**2 < tolerance and used < 200
    assert relative(x, torch.linalg.solve(fisher, b)) < 1e-8
    # A budget of products is a budget: stopping early reports the residual it stopped at.
    stopped = conjugate_gradient(fvp, b, iterations=3, tolerance=tolerance)
    x3, residual3, used3 = stopped.x, stopped.residual_norm, stopped.products
    assert used3 == 3 and abs(residual3 - float((b - fisher @ x3).norm())) < 1e-8 * float(b.norm())


def test_accepted_step_on_linear_gaussian_steps_respects_the_trust_region():
    actions = LinearGaussianSteps()
    params = list(actions.model.parameters())
    all_rows = np.arange(actions.num_actions)
    with torch.no_grad():
        old_mean = actions.mean(all_rows).clone()
    settings = trpo_settings(**{"max_kl": 0.02, "cg_iterations": 100, "cg_damping": 0.0, "fvp_subsample": 100})
    row = trpo_update(actions, params, settings, progress=False, kl_to_base=0.0)
    with torch.no_grad():
        new_mean = actions.mean(all_rows)
    # Independent KL: equal-sigma Gaussians, mean over dims, mean over the round's actions.
    kl = float((0.5 * ((new_mean - old_mean) / actions.std.view(-1, 1, 1, 1)).pow(2).flatten(1).mean(1)).mean())
    assert row["accepted"] == 1.0
    # The line search's KL and this one sum in different orders: equal to rounding (1e-16 here).
    assert kl <= settings.max_kl * (1 + 1e-12) and abs(kl - row["kl"]) < 1e-12
    # Linear means, full-batch FVP, no damping: the KL is exactly quadratic, so the full step lands
    # on the trust-region boundary (where rounding may reject it by an ulp: then 0.8 of it is
    # taken) and a step shrunk by f has KL f^2 max_kl.
    assert abs(kl - settings.max_kl * row["step_fraction"] ** 2) < 1e-9 * settings.max_kl
    assert row["surrogate_gain"] > 0 and row["cg_residual"] ** 2 < settings.cg_tolerance
    for key in ("fvp_seconds", "cg_seconds", "line_search_seconds", "step_size", "step_norm", "expected_gain"):
        assert key in row


def test_step_size_is_sqrt_two_delta_over_sfs():
    actions = LinearGaussianSteps()
    params = list(actions.model.parameters())
    rows = np.arange(actions.num_actions)
    fisher = actions.explicit_fisher(rows)
    before = flat(params)
    settings = trpo_settings(**{"max_kl": 0.005, "cg_iterations": 100, "cg_damping": 0.0, "fvp_subsample": 100})
    scored = actions.evaluate(rows)
    g = torch.autograd.grad((torch.exp(scored.new_log_prob - scored.old_log_prob) * scored.advantages).mean(), params)
    direction = torch.linalg.solve(fisher, flat(g))
    expected = direction * (2 * settings.max_kl / float(direction @ fisher @ direction)) ** 0.5
    row = trpo_update(actions, params, settings, progress=False, kl_to_base=0.0)
    assert row["accepted"] == 1.0 and row["step_fraction"] in (1.0, 0.8)  # 0.8: the boundary step lost by an ulp
    assert relative(flat(params) - before, expected * row["step_fraction"]) < 1e-7


@pytest.mark.parametrize("reason", ["surrogate", "kl"])
def test_rejected_step_restores_the_parameters_bit_for_bit(reason, caplog):
    if reason == "surrogate":
        # Every advantage +1 and a huge trust region: each tried step moves the means many sigmas
        # away from every stored action, so every ratio collapses and the surrogate falls.
        actions = LinearGaussianSteps(advantages=torch.ones(12, dtype=torch.float64))
        cfg = {"max_kl": 50.0, "line_search_max_tries": 3, "line_search_shrink": 0.5}
    else:
        # The FVP subsample (the first action of the round's order) is the state with almost no
        # Fisher information: the step it sizes for max_kl has a KL on the whole round far above
        # max_kl, at every try.
        actions = LinearGaussianSteps()
        cfg = {"max_kl": 0.01, "line_search_max_tries": 4, "cg_iterations": 50, "fvp_subsample": 1}
    params = list(actions.model.parameters())
    before = [p.detach().clone() for p in params]
    with caplog.at_level(logging.WARNING, logger="marsdiff.rl.trpo"):
        row = trpo_update(actions, params, trpo_settings(**cfg), progress=False, kl_to_base=0.0)
    assert row["accepted"] == 0.0 and row["line_search_tries"] == cfg["line_search_max_tries"]
    if reason == "surrogate":
        assert row["kl_last_try"] <= cfg["max_kl"]
    else:
        assert row["kl_last_try"] > cfg["max_kl"]
    assert row["kl"] == 0.0 and row["surrogate_gain"] == 0.0 and row["step_norm"] == 0.0
    for p, b in zip(params, before):
        assert p.dtype == b.dtype and p.detach().numpy().tobytes() == b.numpy().tobytes()
    assert any("rejected" in r.getMessage() for r in caplog.records)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_the_step_is_the_natural_gradient_on_a_badly_conditioned_fisher():
    """Inputs spread over half a decade of scales: F's condition number is about 100 and F^-1 g is
    far from g. With the damping relative to F's scale (default 0.01) the step follows F^-1 g; a
    damping far above F's eigenvalues (the old absolute 0.1 in mean_per_dim_nats was about 100x
    the LoRA Fisher's Rayleigh quotient) gives the scaled gradient instead."""
    def toy():
        actions = LinearGaussianSteps(column_scale=torch.logspace(-0.25, 0.25, 6, dtype=torch.float64))
        return actions, list(actions.model.parameters())

    actions, params = toy()
    rows = np.arange(actions.num_actions)
    fisher = actions.explicit_fisher(rows)
    eigenvalues = torch.linalg.eigvalsh(fisher)
    assert float(eigenvalues[-1] / eigenvalues[0]) > 50
    scored = actions.evaluate(rows)
    g = flat(torch.autograd.grad((torch.exp(scored.new_log_prob - scored.old_log_prob) * scored.advantages).mean(), params))
    natural = torch.linalg.solve(fisher, g)
    assert cosine(natural, g) < 0.6  # the two directions really differ on this problem
    before = flat(params)
    row = trpo_update(actions, params, trpo_settings(**{"max_kl": 0.001, "fvp_subsample": 100}), progress=False,
                      kl_to_base=0.0)
    step = flat(params) - before
    assert row["accepted"] == 1.0
    assert cosine(step, natural) > 0.95 and cosine(step, g) < cosine(natural, g) + 0.15
    assert row["cg_iterations"] > 1 and row["damping_ratio"] < 0.1
    assert row["cg_damping_absolute"] == pytest.approx(0.01 * float(g @ fisher @ g) / float(g @ g), rel=1e-6)
    assert row["fisher_rayleigh"] == pytest.approx(float(step @ fisher @ step) / float(step @ step), rel=1e-6)
    over_damped, params_over = toy()
    before = flat(params_over)
    trpo_update(over_damped, params_over, trpo_settings(**{"max_kl": 0.001, "fvp_subsample": 100, "cg_damping": 100.0}),
                progress=False, kl_to_base=0.0)
    assert cosine(flat(params_over) - before, g) > 0.95


def test_zero_advantages_take_no_step():
    actions = LinearGaussianSteps(advantages=torch.zeros(12, dtype=torch.float64))
    params = list(actions.model.parameters())
    before = flat(params)
    row = trpo_update(actions, params, trpo_settings(), progress=False, kl_to_base=0.0)
    assert row["accepted"] == 0.0 and row["grad_norm"] == 0.0 and torch.equal(flat(params), before)


# --- plan actions: the knob / condition distributions of the scheduler and diversity policies --------

def knob_fisher(generation, condition: torch.Tensor) -> torch.Tensor:
    """The Fisher information of the mean KL over rows, built from the textbook per-distribution
    Fisher matrices (no autograd): location 1/scale^2, log-scale 2 (Gaussian) or 1 (Laplace),
    softmax logits diag(p) - p p^T; parameters in generation.parameters() order."""
    head = generation.head
    scale = head.log_scale.detach().exp().double()
    conditions, knobs = head.location.shape
    counts = torch.bincount(condition.long(), minlength=conditions).double() / len(condition)
    gaussian = head.distribution == "gaussian"
    blocks = []
    if generation.learn_conditions:
        p = torch.softmax(generation.logits.detach().double(), 0)
        blocks.append(torch.diag(p) - torch.outer(p, p))
    blocks.append(torch.diag((counts.view(-1, 1) / scale.pow(2).view(1, -1)).reshape(-1)))
    blocks.append(torch.eye(knobs, dtype=torch.float64) * (2.0 if gaussian else 1.0))
    return torch.block_diag(*blocks)


@pytest.fixture(scope="module")
def plan_rounds(tmp_path_factory):
    """One sampled round per (mode, distribution) on the tiny pixel model."""
    out = {}
    for mode in ("scheduler_policy", "diversity_policy"):
        for distribution in ("gaussian", "laplace"):
            exp = experiment(mode, images=9, steps=2)
            exp["policy"].update(distribution=distribution, init_std=0.3)
            policy = RoundPolicy.initial(mode, tiny_pixel_backend(), exp)
            with torch.no_grad():  # away from the initial plan: locations differ per condition
                policy.generation.head.location.add_(torch.randn(policy.generation.head.location.shape) * 0.3)
            path = sample(policy, exp, 0, tmp_path_factory.mktemp(f"{mode}_{distribution}"))
            out[mode, distribution] = (policy, exp, path)
    return out


@pytest.mark.parametrize("mode", ["scheduler_policy", "diversity_policy"])
@pytest.mark.parametrize("distribution", ["gaussian", "laplace"])
def test_fvp_matches_the_explicit_fisher_of_the_knob_policy(plan_rounds, mode, distribution):
    policy, exp, path = plan_rounds[mode, distribution]
    policy = copy.deepcopy(policy)
    policy.generation.double()
    actions = PlanActions(policy, path, np.linspace(-1, 1, 9), minibatch_size=4, seed=0)
    params = policy.trainable_parameters()
    assert len(params) == (3 if mode == "diversity_policy" else 2)
    rows = np.arange(actions.num_actions)
    fisher = knob_fisher(policy.generation, actions.condition)
    fvp = FisherVectorProduct(actions, params, rows, "kl_hessian", chunk_size=4, damping=0.0, jacobian_vector="reverse")
    built = torch.stack([fvp(e) for e in torch.eye(fisher.shape[0], dtype=torch.float64)], dim=1)
    assert relative(built, fisher) < 1e-6  # the Laplace location block is 0 under naive double backprop
    with pytest.raises(MarsdiffError, match="gauss_newton needs fixed-sigma Gaussian"):
        FisherVectorProduct(actions, params, rows, "gauss_newton", chunk_size=4, damping=0.0, jacobian_vector="reverse")


# --- every mode through update_policy_round: KL <= max_kl, every parameter moves -----------------

def denoise_means(policy, path, batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The step Gaussians (mean, sigma) of ``batches`` under the policy's current weights."""
    with open_trajectories(path) as f:
        scheduler = scheduler_for_trajectories(f)
    sd = policy.backend.kind == "stable_diffusion"
    out = []
    with torch.no_grad():
        for b in batches:
            t = torch.as_tensor
            step = transition_log_prob(policy.backend, scheduler, t(b.latents), t(b.next_latents), t(b.timestep),
                                       t(b.condition), prev_timestep=t(b.prev_timestep), eta=t(b.eta),
                                       guidance_scale=t(b.guidance_scale) if sd else None)
            out.append((step.mean.double(), step.std.double()))
    return out


def independent_denoise_kl(before, after) -> float:
    rows = [0.5 * ((new - old) / std.view(-1, 1, 1, 1)).pow(2).flatten(1).mean(1) for (old, std), (new, _) in zip(before, after)]
    return float(torch.cat(rows).mean())


def independent_plan_kl(old_generation, new_generation, path) -> float:
    with open_trajectories(path) as f:
        condition = torch.as_tensor(f.array("condition")).long()
    with torch.no_grad():
        kl = torch.distributions.kl_divergence(old_generation.head.dist(condition), new_generation.head.dist(condition)).sum(1)
        if new_generation.learn_conditions:
            p, q = old_generation.condition_log_probs(), new_generation.condition_log_probs()
            kl = kl + (p.exp() * (p - q)).sum()
    return float(kl.double().mean())


def run_trpo_round(policy, exp, tmp_path, credit_seed: int = 0):
    path = sample(policy, exp, 0, tmp_path / "round_000")
    credit = np.random.default_rng(credit_seed).normal(size=exp["images_per_round"])
    before_state = {name: p.detach().clone() for name, p in trainable(policy)}
    if policy.mode == "lora_unet":
        selection = DenoiseActions(policy, path, np.zeros((exp["images_per_round"], exp["steps"])),
                                   exp["trpo"].get("minibatch_size", 32), exp["trpo"].get("timestep_fraction", 1.0),
                                   int(exp["seed"]) * 1000)
        batches = list(selection.minibatches(0))
        selection.close()
        before = denoise_means(policy, path, batches)
    else:
        old_generation = copy.deepcopy(policy.generation)
    row = update_policy_round(policy, exp, 0, path, credit, None, tmp_path / "round_000" / "policy", progress=False)
    if policy.mode == "lora_unet":
        kl = independent_denoise_kl(before, denoise_means(policy, path, batches))
    else:
        kl = independent_plan_kl(old_generation, policy.generation, path)
    return row, kl, before_state


def trainable(policy) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every trainable parameter of the round policy."""
    module = policy.backend.unet if policy.mode == "lora_unet" else policy.generation
    ids = {id(p) for p in policy.trainable_parameters()}
    named = [(name, p) for name, p in module.named_parameters() if id(p) in ids]
    assert len(named) == len(ids)
    return named


def check_accepted_and_every_parameter_moved(policy, row, kl, before_state, max_kl):
    assert row["accepted"] == 1.0
    # Float32 re-evaluation in another order may differ from the line search's sum in the last bits.
    assert 0 < kl <= max_kl * (1 + 1e-5)
    assert kl == pytest.approx(row["kl"], rel=1e-4)
    after = dict(trainable(policy))
    assert after.keys() == before_state.keys()
    unmoved = [name for name, value in before_state.items() if torch.equal(value, after[name])]
    assert not unmoved, f"parameters without a step: {unmoved[:5]}"
    for key in ("kl", "surrogate_gain", "step_size", "cg_residual", "line_search_tries", "accepted",
                "fvp_seconds", "cg_seconds", "line_search_seconds"):
        assert np.isfinite(row[key])


def perturb_lora_b(unet, seed: int = 0):
    # The fresh adapter has B = 0, where d out / d A = 0: A gets no gradient in the first round
    # (by design of LoRA). Start from a nonzero B so the test sees every parameter move.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)


@pytest.mark.parametrize("fvp_method", ["kl_hessian", "gauss_newton"])
def test_lora_mode_through_the_round_loop(tmp_path, fvp_method):
    exp = experiment("lora_unet", images=6, steps=3, fvp_subsample=8, cg_iterations=6, fvp_method=fvp_method,
                     minibatch_size=8)
    policy = RoundPolicy.initial("lora_unet", tiny_pixel_backend(), exp)
    perturb_lora_b(policy.backend.unet)
    row, kl, before = run_trpo_round(policy, exp, tmp_path)
    check_accepted_and_every_parameter_moved(policy, row, kl, before, 0.01)
    assert row["fvp_actions"] == min(8, row["actions"]) and row["fvp_products"] >= 2 and row["start_log_ratio_max"] < 1e-5
    saved = RoundPolicy.load(tmp_path / "round_000" / "policy", tiny_pixel_backend())
    assert saved.policy_hash() == policy.policy_hash()


@pytest.mark.parametrize("mode", ["scheduler_policy", "diversity_policy"])
@pytest.mark.parametrize("max_kl", [0.01, 0.001])
def test_plan_modes_through_the_round_loop(tmp_path, mode, max_kl):
    exp = experiment(mode, images=12, steps=2, max_kl=max_kl)
    policy = RoundPolicy.initial(mode, tiny_pixel_backend(), exp)
    row, kl, before = run_trpo_round(policy, exp, tmp_path)
    with open_trajectories(tmp_path / "round_000" / "trajectories.h5") as f:
        assert len(np.unique(f.array("condition"))) == 3  # every location row has actions to move it
    check_accepted_and_every_parameter_moved(policy, row, kl, before, max_kl)


def test_kl_hessian_and_gauss_newton_agree_on_the_tiny_unet(tmp_path):
    exp = experiment("lora_unet", images=4, steps=3)
    policy = RoundPolicy.initial("lora_unet", tiny_pixel_backend(), exp)
    perturb_lora_b(policy.backend.unet)
    path = sample(policy, exp, 0, tmp_path)
    actions = DenoiseActions(policy, path, np.zeros((4, 3)), 8, timestep_fraction=1.0, seed=0)
    params = policy.trainable_parameters()
    rows = actions.subsample(6, 0)
    v = torch.randn(len(flat(params)), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hessian = FisherVectorProduct(actions, params, rows, "kl_hessian", 6, 0.0, jacobian_vector="reverse")(v)
    gauss_newton = FisherVectorProduct(actions, params, rows, "gauss_newton", 4, 0.0, jacobian_vector="reverse")(v)
    forward = FisherVectorProduct(actions, params, rows, "gauss_newton", 4, 0.0, jacobian_vector="forward")(v)
    actions.close()
    assert float(hessian.norm()) > 0
    assert relative(hessian, gauss_newton) < 1e-5  # float32 UNet: agreement to rounding
    assert relative(forward, gauss_newton) < 1e-5


# --- attention ----------------------------------------------------------------------------------------

def test_classic_attention_during_the_fvp_and_the_original_processors_after():
    from diffusers.models.attention_processor import Attention, AttnProcessor

    unet = tiny_pixel_backend().unet
    layers = [m for m in unet.modules() if isinstance(m, Attention)]
    assert layers, "the tiny UNet's mid block has attention"
    originals = [layer.processor for layer in layers]
    with pytest.raises(RuntimeError, match="boom"):
        with twice_differentiable_attention(unet) as swapped:
            assert swapped == len(layers)
            assert all(type(layer.processor) is AttnProcessor for layer in layers)
            raise RuntimeError("boom")
    assert all(layer.processor is original for layer, original in zip(layers, originals))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from test_stable_diffusion import PROMPTS, build_tiny_pipeline

    from marsdiff.diffusion.stable_diffusion import load_stable_diffusion

    directory = build_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"))
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")

    def load():
        return load_stable_diffusion({"pretrained": str(directory), "prompt_file": str(prompts), "guidance_scale": 3.0,
                                      "resolution": 16, "device": "cpu", "dtype": "auto"})
    return load


def test_stable_diffusion_lora_fvp_double_backward_through_attention(tiny_sd, tmp_path):
    from diffusers.models.attention_processor import Attention

    exp = experiment("lora_unet", images=3, steps=3, fvp_subsample=4, cg_iterations=4, minibatch_size=4)
    policy = RoundPolicy.initial("lora_unet", tiny_sd(), exp)
    unet = policy.backend.unet
    perturb_lora_b(unet)
    processors = [m.processor for m in unet.modules() if isinstance(m, Attention)]
    path = sample(policy, exp, 0, tmp_path / "fvp")
    actions = DenoiseActions(policy, path, np.zeros((3, 3)), 4, timestep_fraction=1.0, seed=0)
    params = policy.trainable_parameters()
    rows = actions.subsample(4, 0)

    # Why the switch exists: the default attention (SDPA) has no double backward.
    scored = actions.evaluate(rows)
    kl = (0.5 * (scored.mean - scored.mean.detach()).pow(2)).sum()
    grads = torch.autograd.grad(kl + scored.mean.pow(2).sum(), params, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        torch.autograd.grad(sum((g * g).sum() for g in grads), params)

    v = torch.randn(len(flat(params)), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hessian = FisherVectorProduct(actions, params, rows, "kl_hessian", 4, 0.0, jacobian_vector="reverse")(v)
    gauss_newton = FisherVectorProduct(actions, params, rows, "gauss_newton", 2, 0.0, jacobian_vector="reverse")(v)
    actions.close()
    assert float(hessian.norm()) > 0 and relative(hessian, gauss_newton) < 1e-5
    assert [m.processor for m in unet.modules() if isinstance(m, Attention)] == processors


def test_stable_diffusion_lora_through_the_round_loop(tiny_sd, tmp_path):
    exp = experiment("lora_unet", images=3, steps=3, fvp_subsample=4, cg_iterations=4, minibatch_size=4)
    policy = RoundPolicy.initial("lora_unet", tiny_sd(), exp)
    perturb_lora_b(policy.backend.unet)
    row, kl, before = run_trpo_round(policy, exp, tmp_path)
    check_accepted_and_every_parameter_moved(policy, row, kl, before, 0.01)


# --- learning ------------------------------------------------------------------------------------------

# Per mode: what makes a short CPU run learn (the shared helper's rounds of 16 images x 4 steps).
# The radii are wider than the defaults so a few rounds move the policy, as the PPO learning test
# widens the clip. The scheduler policy is left out: its knobs move mean brightness little (TRPO
# reaches ~3 seed spreads in 8-10 rounds, PPO 3.7: too close to a threshold for a stable test).
# LoRA, measured (gain over the base vs the bar 3 seed spreads = 0.079): the old absolute damping
# 0.1 (a rescaled gradient) passed at max_kl 0.03; the natural step (relative damping 0.01) gains
# 0.050 there: its quadratic KL model, fitted on the 32-action FVP subsample, overshoots and the
# line search keeps half the radius (KL 0.015), and CG uses all 10 products. max_kl 0.1 gains
# 0.086, with 20 CG products 0.096. The KL penalty to the base is off here: at this toy's KL scale
# (0.03 per dimension per round, 3000x the default run's) c = 1 binds at once (0.068 at max_kl 0.1).
LEARNING = {
    "lora_unet": dict(rounds=5, trpo={"max_kl": 0.1, "cg_iterations": 20}, kl_to_base=0.0),
    "diversity_policy": dict(rounds=6, images_per_round=32, trpo={"max_kl": 0.2}),
}


@pytest.mark.parametrize("mode", list(LEARNING))
def test_trpo_raises_a_known_reward_beyond_seed_spread(tmp_path, mode):
    from rl_helpers import experiment as helper_experiment
    from rl_helpers import mean_reward_of, run_rounds

    exp = helper_experiment(mode, algorithm="trpo", **LEARNING[mode])
    base_policy, _ = run_rounds(exp, tmp_path / "base", rounds=0)
    base = [mean_reward_of(base_policy, exp, tmp_path / f"base_{k}", 100 + k) for k in range(4)]
    policy, history = run_rounds(exp, tmp_path / "run")
    assert all(h["accepted"] == 1.0 and h["kl"] <= exp["trpo"]["max_kl"] for h in history)
    tuned = np.mean([mean_reward_of(policy, exp, tmp_path / f"tuned_{k}", 200 + k) for k in range(2)])
    spread = np.std(base, ddof=1)
    assert tuned - np.mean(base) > 3 * spread, (mode, base, tuned, [h["reward_mean"] for h in history])
