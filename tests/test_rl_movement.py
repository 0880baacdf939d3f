"""How far an update moves the policy, and the study's controls: the post-update KL (non-zero when
the parameters moved, exactly 0 for the zero_lr control), the KL penalty to the base model, the
batch/class advantage normalisation, the shuffled-credit control, the plan policies reaching a
knob target under a synthetic reward, and the plan/<knob> values in every round's metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from marsdiff.errors import MarsdiffError
from marsdiff.io.trajectories import open_trajectories
from marsdiff.rl.actions import DenoiseActions
from marsdiff.rl.advantages import group_advantages
from marsdiff.rl.movement import plan_values
from marsdiff.rl.policy import RoundPolicy
from marsdiff.rl.ppo import ppo_update
from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round
from marsdiff.rl.round_update import shuffled_credit, update_policy_round
from rl_helpers import advantage_settings, brightness, experiment, ppo_settings, round_store, run_rounds
from tiny_models import tiny_pixel_backend

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (algorithm, mode): PPO on the plan is the case whose in-update statistics said "ratio 1, KL 0".
CASES = [("ppo", "lora_unet"), ("ppo", "scheduler_policy"), ("trpo", "lora_unet"), ("trpo", "diversity_policy")]


def small(algorithm: str, mode: str, **overrides):
    widen = {"trpo": {"max_kl": 0.01}} if algorithm == "trpo" and mode == "lora_unet" else {}
    return experiment(mode, algorithm=algorithm, images_per_round=8, steps=3, **{**widen, **overrides})


def one_update(exp, tmp_path: Path, credit=None):
    """Sample round 0 with the initial policy and update it once; (policy, weights before, metrics)."""
    policy = RoundPolicy.initial(exp["mode"], tiny_pixel_backend(), exp)
    sample_policy_round(policy, round_sampling_settings({"batch_size": 8}, exp), exp, 0, tmp_path / "round_000",
                        store=round_store())
    path = tmp_path / "round_000" / "trajectories.h5"
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    credit = brightness(path) if credit is None else credit
    metrics = update_policy_round(policy, exp, 0, path, credit, None, tmp_path / "policy", progress=False)
    return policy, before, metrics


def bit_identical(policy, before) -> bool:
    return all(p.detach().numpy().tobytes() == b.numpy().tobytes() for p, b in zip(policy.trainable_parameters(), before))


# --- post-update statistics --------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm, mode", CASES)
def test_post_update_kl_is_positive_when_the_parameters_moved(tmp_path, algorithm, mode):
    policy, before, metrics = one_update(small(algorithm, mode), tmp_path)
    assert not bit_identical(policy, before)
    assert metrics["kl_post_update"] > 0
    assert metrics["ratio_max_post"] > 1.0 and metrics["approx_kl_post"] > 0
    if algorithm == "trpo":
        # The line search's KL is the same quantity on the same actions.
        assert metrics["kl_post_update"] == pytest.approx(metrics["kl"], rel=1e-4)


@pytest.mark.parametrize("algorithm, mode", CASES)
def test_zero_lr_control_leaves_the_weights_bit_for_bit_and_logs_zero_movement(tmp_path, algorithm, mode):
    policy, before, metrics = one_update(small(algorithm, mode, control="zero_lr"), tmp_path)
    assert bit_identical(policy, before)
    assert metrics["kl_post_update"] == 0.0 and metrics["ratio_max_post"] == 1.0 and metrics["ratio_mean_post"] == 1.0
    assert metrics["grad_norm"] > 0  # the update itself ran: its statistics are still logged
    if mode == "lora_unet":
        assert metrics["kl_to_base"] == 0.0  # B stays 0: the adapter is the base
    saved = RoundPolicy.load(tmp_path / "policy", tiny_pixel_backend())
    assert saved.policy_hash() == policy.policy_hash() == RoundPolicy.initial(mode, tiny_pixel_backend(), small(algorithm, mode)).policy_hash()


def test_post_update_kl_of_the_plan_is_the_exact_kl_between_the_two_policies(tmp_path):
    exp = small("ppo", "scheduler_policy")
    start = RoundPolicy.initial(exp["mode"], tiny_pixel_backend(), exp)
    policy, _, metrics = one_update(exp, tmp_path)
    with open_trajectories(tmp_path / "round_000" / "trajectories.h5") as f:
        condition = torch.as_tensor(f.array("condition")).long()
    with torch.no_grad():
        kl = torch.distributions.kl_divergence(start.generation.head.dist(condition), policy.generation.head.dist(condition))
    assert metrics["kl_post_update"] == pytest.approx(float(kl.sum(dim=1).mean()), rel=1e-5)


# --- the KL penalty to the base model ---------------------------------------------------------------

def test_kl_to_base_is_zero_at_round_zero_and_positive_after_an_update(tmp_path):
    exp = small("ppo", "lora_unet", optimiser={"lr": 1e-2}, ppo={"clip_denoise": 0.05, "epochs": 2, "minibatch_size": 8})
    assert exp["kl_to_base"] == 0.1  # the LoRA default
    policy = RoundPolicy.initial(exp["mode"], tiny_pixel_backend(), exp)
    sample_policy_round(policy, round_sampling_settings({"batch_size": 8}, exp), exp, 0, tmp_path / "r0",
                        store=round_store())
    path = tmp_path / "r0" / "trajectories.h5"
    with open_trajectories(path) as f:
        n, steps = f.num_images, f.num_steps
    actions = DenoiseActions(policy, path, np.zeros((n, steps)), 64, timestep_fraction=1.0, seed=0)
    batch = next(iter(actions.minibatches(0)))
    assert float(actions.kl_to_base(batch, actions.evaluate(batch)).abs().max()) == 0.0  # B = 0
    actions.close()
    metrics = update_policy_round(policy, exp, 0, path, brightness(path), None, tmp_path / "policy", progress=False)
    assert metrics["kl_to_base"] > 0 and metrics["kl_to_base_coef"] == 0.1


def test_the_penalty_pulls_the_adapter_back_to_the_base(tmp_path):
    """Zero advantages: the PPO loss is the penalty alone, and its steps shrink the KL to the base."""
    exp = small("ppo", "lora_unet")
    policy = RoundPolicy.initial(exp["mode"], tiny_pixel_backend(), exp)
    sample_policy_round(policy, round_sampling_settings({"batch_size": 8}, exp), exp, 0, tmp_path / "r0",
                        store=round_store())
    path = tmp_path / "r0" / "trajectories.h5"
    with torch.no_grad():
        for name, p in policy.backend.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    with open_trajectories(path) as f:
        n, steps = f.num_images, f.num_steps
    actions = DenoiseActions(policy, path, np.zeros((n, steps)), 64, timestep_fraction=1.0, seed=0)
    batches = list(actions.minibatches(0))

    def kl_to_base() -> float:
        with torch.no_grad():
            return float(sum(actions.kl_to_base(b, actions.evaluate(b)).sum() for b in batches))

    params = policy.trainable_parameters()
    start = kl_to_base()
    # The gradient of the penalty is a descent direction of the KL (and is not zero off the base).
    penalty = sum(actions.kl_to_base(b, actions.evaluate(b)).sum() for b in batches)
    grads = torch.autograd.grad(penalty, params)
    assert sum(float(g.norm()) for g in grads) > 0
    optimiser = torch.optim.Adam(params, lr=5e-3)
    ppo_update(actions, params, optimiser, ppo_settings(epochs=5, minibatch_size=64), progress=False, kl_to_base=1.0)
    assert kl_to_base() < 0.9 * start
    actions.close()


def test_kl_to_base_settings_per_mode():
    assert experiment("scheduler_policy")["kl_to_base"] == 0.0
    assert experiment("lora_unet", kl_to_base=0.25)["kl_to_base"] == 0.25
    for bad, mode, message in [(-1, "lora_unet", "less than the minimum of 0"), ("a", "lora_unet", "expected number"),
                               (None, "lora_unet", "expected number"), (float("inf"), "lora_unet", "finite"),
                               (0.5, "diversity_policy", "no base")]:
        with pytest.raises(MarsdiffError, match=message) as err:
            experiment(mode, kl_to_base=bad)
        assert "experiments.test.kl_to_base" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MarsdiffError, match=r"^experiments\.test\.ppo\.kl_coef was replaced by the experiment key kl_to_base"):
        experiment("lora_unet", ppo={"kl_coef": 0.1})


# --- advantages: batch or class normalisation -----------------------------------------------------

def test_batch_normalisation_is_the_default_and_class_needs_min_count():
    credit = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 5.0, 7.0])
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    batch = group_advantages(credit, groups, advantage_settings(clip=10))
    np.testing.assert_allclose(batch, (credit - credit.mean()) / credit.std())
    per_class = group_advantages(credit, groups, advantage_settings(normalisation="class", min_count=3, clip=10))
    within = (credit[:3] - 2.0) / np.std(credit[:3])
    np.testing.assert_allclose(per_class[:3], within)
    np.testing.assert_allclose(per_class[3:6], within)
    np.testing.assert_allclose(per_class[6:], (credit[6:] - credit.mean()) / credit.std())  # 2 < 3 images: batch
    # min_count above every class: all batch statistics, the same as normalisation: batch.
    np.testing.assert_allclose(group_advantages(credit, groups, advantage_settings(
        normalisation="class", min_count=4, clip=10)), batch)


@pytest.mark.parametrize("cfg, message", [
    ({"min_group_size": 4}, r"^experiments\.test\.advantages\.min_group_size was replaced by advantages\.min_count"),
    ({"normalisation": "group"}, r"experiments\.test\.advantages\.normalisation: 'group' is not one of \['batch', 'class'\]"),
    ({"min_count": 1}, r"experiments\.test\.advantages\.min_count: 1 is less than the minimum of 2"),
])
def test_bad_advantage_settings_are_one_line(cfg, message):
    with pytest.raises(MarsdiffError, match=message) as err:
        experiment("lora_unet", advantages=cfg)
    assert "\n" not in str(err.value)


# --- controls -----------------------------------------------------------------------------------------

def test_shuffled_credit_permutes_reproducibly():
    exp = experiment("lora_unet", control="shuffled_credit", seed=4)
    credit = np.arange(32, dtype=float)
    first = shuffled_credit(credit, exp, 2)
    assert sorted(first) == sorted(credit) and not np.array_equal(first, credit)
    np.testing.assert_array_equal(first, shuffled_credit(credit, exp, 2))  # same seed and round: same permutation
    assert not np.array_equal(first, shuffled_credit(credit, exp, 3))
    assert not np.array_equal(first, shuffled_credit(credit, experiment("lora_unet", seed=5), 2))


def test_the_shuffled_arm_learns_from_the_permuted_credit(tmp_path):
    """control: shuffled_credit == control: none fed the permuted credit (and != the true credit)."""
    base = small("ppo", "scheduler_policy")
    shuffled = small("ppo", "scheduler_policy", control="shuffled_credit")
    credit = brightness_of_round(base, tmp_path / "probe")
    a, _, _ = one_update(shuffled, tmp_path / "a", credit)
    b, _, _ = one_update(base, tmp_path / "b", shuffled_credit(credit, shuffled, 0))
    c, _, _ = one_update(base, tmp_path / "c", credit)
    assert a.policy_hash() == b.policy_hash() != c.policy_hash()


def brightness_of_round(exp, out: Path) -> np.ndarray:
    policy = RoundPolicy.initial(exp["mode"], tiny_pixel_backend(), exp)
    sample_policy_round(policy, round_sampling_settings({"batch_size": 8}, exp), exp, 0, out, store=round_store())
    return brightness(out / "trajectories.h5")


def test_controls_are_checked_and_lr_zero_stays_refused():
    with pytest.raises(MarsdiffError, match=r"experiments\.test\.control: 'aa' is not one of \['none', 'shuffled_credit', 'zero_lr'\]"):
        experiment("lora_unet", control="aa")
    # (the schema's description of optimiser.lr says that the A/A run is control: zero_lr)
    with pytest.raises(MarsdiffError, match=r"experiments\.test\.optimiser\.lr: 0 is less than or equal to the minimum of 0"):
        experiment("lora_unet", optimiser={"lr": 0})


def test_the_aa_arm_draws_the_same_noise_as_its_arm_every_round(tmp_path):
    """Same seed, same round: the same x_T, whatever the policy became (the pairing of the study)."""
    arm, aa = (small("ppo", "lora_unet", rounds=2, optimiser={"lr": 1e-2}, control=c) for c in ("none", "zero_lr"))
    run_rounds(arm, tmp_path / "arm")
    run_rounds(aa, tmp_path / "aa")
    for r in range(2):
        starts = []
        for name in ("arm", "aa"):
            with open_trajectories(tmp_path / name / f"round_{r:03d}" / "trajectories.h5") as f:
                starts.append(np.stack([f.image_latents(i)[0] for i in range(f.num_images)]))
        np.testing.assert_array_equal(starts[0], starts[1])


# --- plan policies reach the knob settings ------------------------------------------------------------

def knob_reward(knob: str, target: float):
    def reward(path: Path) -> np.ndarray:
        with open_trajectories(path) as f:
            return -np.abs(f.array(f"knobs/{knob}").astype(float) - target)
    return reward


# Default settings of each mode (4 rounds of 32 images); only the reward is synthetic.
TARGETS = [("scheduler_policy", "eta", 0.5, 0.06), ("diversity_policy", "noise_scale", 1.15, 0.03),
           ("diversity_policy", "eta", 0.5, 0.06)]


@pytest.mark.parametrize("mode, knob, target, tolerance", TARGETS)
def test_plan_policy_reaches_a_rewarded_knob_setting_in_the_default_rounds(tmp_path, mode, knob, target, tolerance):
    exp = experiment(mode, images_per_round=32, steps=3, rounds=4)
    start = plan_values(RoundPolicy.initial(mode, tiny_pixel_backend(), exp).generation)[f"plan/{knob}"]
    _, history = run_rounds(exp, tmp_path, reward=knob_reward(knob, target))
    trace = [h[f"plan/{knob}"] for h in history]
    assert abs(start - target) > 3 * tolerance  # the target is far from the start
    assert abs(trace[-1] - target) < tolerance, trace


def test_plan_values_are_the_policy_mean_knobs_and_class_probabilities(tmp_path):
    exp = experiment("diversity_policy")
    generation = RoundPolicy.initial("diversity_policy", tiny_pixel_backend(), exp).generation
    values = plan_values(generation)
    probs = [v for k, v in values.items() if k.startswith("plan/class_prob/")]
    assert len(probs) == len(generation.condition_names) and sum(probs) == pytest.approx(1.0)
    # Monte Carlo of the knob value the policy draws (squashed actions), against the quadrature.
    condition = torch.multinomial(generation.condition_log_probs().exp(), 200_000, replacement=True,
                                  generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        draws = generation.head.dist(condition).sample()
        knob_values = generation.head.values(draws)
    for name, value in knob_values.items():
        assert values[f"plan/{name}"] == pytest.approx(float(value.double().mean()), abs=3e-3)
    _, history = run_rounds(experiment("scheduler_policy", rounds=1), tmp_path)
    assert {"plan/eta", "plan/timestep_power"} <= set(history[0]) and all(
        isinstance(history[0][k], float) for k in history[0] if k.startswith("plan/"))
