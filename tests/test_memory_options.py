"""The Stable Diffusion memory options (model.stable_diffusion.gradient_checkpointing, .autocast)
on the tiny randomly initialised pipeline, on the CPU.

Gradient checkpointing must change no number: the PPO surrogate's gradient, TRPO's
Fisher-vector products (double backward and forward-mode) and a whole PPO and TRPO update agree
with and without it, to float rounding. Autocast changes the recorded log-probs, so the update's
recompute must run in the same precision: at the old policy the ratio stays 1, and it would not
if the recompute ran in float32 (checked, so the test can fail). Memory per minibatch transition
is measured by benchmarks/bench_memory_options.py (docs/rl.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marsdiff.diffusion.stable_diffusion import load_stable_diffusion
from marsdiff.errors import MarsdiffError
from marsdiff.rl.actions import DenoiseActions
from marsdiff.rl.experiments import experiment_settings
from marsdiff.rl.policy import RoundPolicy
from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round
from marsdiff.rl.round_update import update_policy_round
from marsdiff.rl.trpo import FisherVectorProduct
from rl_helpers import round_store
from test_stable_diffusion import PROMPTS, build_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGES, STEPS = 3, 3
# float32 with a different order of operations (recomputed blocks): agreement to rounding
GRAD_RTOL = 1e-5
# autocast: the same half-precision ops in sampling and in the recompute give the same numbers;
# the bound leaves room for a kernel that sums in another order at another batch size. A float32
# recompute of half-precision samples is off by far more (asserted below).
AUTOCAST_LOG_RATIO = 1e-4


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    directory = build_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"))
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")

    def load(**options):
        return load_stable_diffusion({"pretrained": str(directory), "prompt_file": str(prompts), "guidance_scale": 3.0,
                                      "resolution": 16, "device": "cpu", "dtype": "auto", **options})
    return load


def experiment(algorithm: str, **section):
    cfg = {"algorithm": algorithm, "mode": "lora_unet", "images_per_round": IMAGES, "steps": STEPS, "seed": 0,
           algorithm: {"minibatch_size": 4, **section}}
    return experiment_settings({"m": cfg}, "m", {"batch_size": IMAGES})


def policy_with_adapter(backend, exp):
    """The round policy with a nonzero LoRA B (a fresh adapter's B = 0 gives A no gradient)."""
    policy = RoundPolicy.initial("lora_unet", backend, exp)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.backend.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return policy


def sample(policy, exp, out_dir) -> str:
    settings = round_sampling_settings({"batch_size": IMAGES, "device": "cpu"}, exp)
    sample_policy_round(policy, settings, exp, 0, out_dir, store=round_store())
    return str(out_dir / "trajectories.h5")


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def pair(tiny_sd, tmp_path_factory):
    """The same policy without and with gradient checkpointing, and one round sampled without."""
    exp = experiment("ppo")
    plain = policy_with_adapter(tiny_sd(), exp)
    checkpointed = policy_with_adapter(tiny_sd(gradient_checkpointing=True), exp)
    path = sample(plain, exp, tmp_path_factory.mktemp("round"))
    return plain, checkpointed, path


def test_options_are_off_by_default_and_bad_values_are_one_line_errors(tiny_sd):
    backend = tiny_sd()
    assert not backend.unet.is_gradient_checkpointing and backend.autocast is None
    assert tiny_sd(gradient_checkpointing=True).unet.is_gradient_checkpointing
    with pytest.raises(MarsdiffError, match="model.stable_diffusion.autocast"):
        tiny_sd(autocast="float8")


def test_checkpointing_gives_the_same_ppo_gradient(pair):
    plain, checkpointed, path = pair
    grads = []
    for policy in (plain, checkpointed):
        actions = DenoiseActions(policy, path, np.linspace(-1, 1, IMAGES * STEPS).reshape(IMAGES, STEPS), 4,
                                 timestep_fraction=1.0, seed=0)
        params = policy.trainable_parameters()
        batch = next(actions.minibatches(0))
        scored = actions.evaluate(batch)
        # the PPO surrogate at the old policy (ratio 1: the clip is inactive)
        loss = -((scored.new_log_prob - scored.old_log_prob).exp() * scored.advantages).mean()
        grads.append(flat(torch.autograd.grad(loss, params)))
        actions.close()
    assert float(grads[0].norm()) > 0
    assert relative(grads[1], grads[0]) < GRAD_RTOL


@pytest.mark.parametrize("method", ["kl_hessian", "gauss_newton"])
def test_checkpointing_gives_the_same_trpo_fisher_vector_product(pair, method):
    # kl_hessian differentiates the checkpointed graph twice; gauss_newton pushes a forward-mode
    # tangent through it
    plain, checkpointed, path = pair
    products = []
    for policy in (plain, checkpointed):
        actions = DenoiseActions(policy, path, np.zeros((IMAGES, STEPS)), 4, timestep_fraction=1.0, seed=0)
        params = policy.trainable_parameters()
        v = torch.randn(len(flat(params)), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        products.append(FisherVectorProduct(actions, params, actions.subsample(4, 0), method, 4, 0.0, jacobian_vector="reverse")(v))
        actions.close()
    assert float(products[0].norm()) > 0
    assert relative(products[1], products[0]) < GRAD_RTOL


@pytest.mark.parametrize("algorithm", ["ppo", "trpo"])
def test_checkpointing_gives_the_same_update(tiny_sd, tmp_path, algorithm):
    section = {"fvp_subsample": 4, "cg_iterations": 4} if algorithm == "trpo" else {"epochs": 2}
    exp = experiment(algorithm, **section)
    credit = np.random.default_rng(0).normal(size=IMAGES)
    path = sample(policy_with_adapter(tiny_sd(), exp), exp, tmp_path / "round")
    updated = []
    for name, options in (("plain", {}), ("checkpointed", {"gradient_checkpointing": True})):
        policy = policy_with_adapter(tiny_sd(**options), exp)
        before = flat(policy.trainable_parameters())
        update_policy_round(policy, exp, 0, path, credit, None, tmp_path / name / "policy", progress=False)
        after = flat(policy.trainable_parameters())
        assert float((after - before).norm()) > 0, f"{name}: the update took no step"
        updated.append(after - before)
    assert relative(updated[1], updated[0]) < 1e-4  # the step, after Adam / CG / line search


# float16 autocast runs the same code path; on a CPU it is slow, so the test uses bfloat16
@pytest.mark.parametrize("precision", ["bfloat16"])
def test_autocast_log_probs_are_recomputed_in_the_same_precision(tiny_sd, tmp_path, precision):
    exp = experiment("trpo", fvp_subsample=4, cg_iterations=2)
    policy = policy_with_adapter(tiny_sd(autocast=precision), exp)
    path = sample(policy, exp, tmp_path / "round")

    def log_ratio(backend_policy) -> float:
        actions = DenoiseActions(backend_policy, path, np.zeros((IMAGES, STEPS)), 4, timestep_fraction=1.0, seed=0)
        worst = 0.0
        with torch.no_grad():
            for batch in actions.minibatches(0):
                scored = actions.evaluate(batch)
                worst = max(worst, float((scored.new_log_prob - scored.old_log_prob).abs().max()))
        actions.close()
        return worst

    # the update's recompute (the same predict, in the same precision) reproduces the samples
    assert log_ratio(policy) < AUTOCAST_LOG_RATIO
    # ... which a float32 recompute does not: the option really changes the recorded numbers
    plain = RoundPolicy.initial("lora_unet", tiny_sd(), exp)
    plain.backend.unet.load_state_dict(policy.backend.unet.state_dict())
    assert log_ratio(plain) > 10 * AUTOCAST_LOG_RATIO
    # and through the round loop: TRPO's start ratio check sees the same; its default Fisher
    # products for LoRA (gauss_newton) push a forward-mode tangent, which runs without autocast
    credit = np.random.default_rng(0).normal(size=IMAGES)
    row = update_policy_round(policy, exp, 0, path, credit, None, tmp_path / "policy", progress=False)
    assert row["start_log_ratio_max"] < AUTOCAST_LOG_RATIO and row["accepted"] == 1.0
