"""The round policies of every mode: sampling records their actions, re-scoring reproduces the
stored log-probs (PPO ratio exactly 1), every trainable parameter gets gradient, save/load is
exact (safetensors + JSON), and bad experiments or foreign policies are refused in one line."""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pytest
import torch

from marsdiff.errors import MarsdiffError
from marsdiff.io.trajectories import open_trajectories
from marsdiff.rl.actions import DenoiseActions, PlanActions
from marsdiff.rl.experiments import experiment_settings
from marsdiff.rl.policy import RoundPolicy
from marsdiff.rl.rounds import build_policy
from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round
from marsdiff.rl.round_update import update_policy_round
from marsdiff.rl.surrogate import ratio_stats
from rl_helpers import brightness, experiment, round_store
from tiny_models import tiny_pixel_backend

MODES = ["lora_unet", "scheduler_policy", "diversity_policy"]


def sampled_round(mode, tmp_path, **overrides):
    exp = experiment(mode, images_per_round=9, **overrides)
    policy = RoundPolicy.initial(mode, tiny_pixel_backend(), exp)
    sample_policy_round(policy, round_sampling_settings({"batch_size": 4}, exp), exp, 0, tmp_path / "round_000",
                        store=round_store())
    return exp, policy, tmp_path / "round_000" / "trajectories.h5"


def actions_for(policy, path, advantages=None):
    with open_trajectories(path) as f:
        n, steps = f.num_images, f.num_steps
    rng = np.random.default_rng(0)
    if policy.mode == "lora_unet":
        adv = rng.standard_normal((n, steps)) if advantages is None else advantages
        return DenoiseActions(policy, path, adv, minibatch_size=1000, timestep_fraction=1.0, seed=0)
    return PlanActions(policy, path, rng.standard_normal(n) if advantages is None else advantages, minibatch_size=1000,
                       seed=0)


@pytest.mark.parametrize("mode", MODES)
def test_ratio_is_exactly_one_before_the_first_update(tmp_path, mode):
    _, policy, path = sampled_round(mode, tmp_path)
    actions = actions_for(policy, path)
    for batch in actions.minibatches(0):
        scored = actions.evaluate(batch)
        stats = ratio_stats(scored.new_log_prob.detach(), scored.old_log_prob, clip=1e-4)
        assert abs(stats.ratio_mean - 1) < 1e-5 and abs(stats.ratio_max - 1) < 1e-5
        assert stats.clip_fraction == 0.0
    actions.close()


@pytest.mark.parametrize("mode", MODES)
def test_plan_actions_are_recorded_with_units(tmp_path, mode):
    _, policy, path = sampled_round(mode, tmp_path)
    with open_trajectories(path) as f:
        assert f.mode == mode and f.attrs["policy_hash"] == policy.policy_hash()
        assert tuple(f.action_names) == tuple(policy.generation.action_names)
        actions = f.array("actions")
        if mode == "lora_unet":
            assert actions.shape == (9, 0)
            assert (f.array("knobs/eta") == 1.0).all()
        else:
            # The stored raw actions reproduce the knob values the chain used.
            values = policy.generation.head.values(torch.as_tensor(actions))
            np.testing.assert_allclose(values["eta"].numpy(), f.array("knobs/eta"), rtol=1e-6)
            assert len(np.unique(f.array("knobs/eta"))) == 9  # one draw per image
        if mode == "scheduler_policy":
            assert len({tuple(r) for r in f.array("timesteps").tolist()}) > 1  # per-image grids


@pytest.mark.parametrize("mode", MODES)
def test_every_trainable_parameter_gets_a_nonzero_gradient(tmp_path, mode):
    _, policy, path = sampled_round(mode, tmp_path)
    actions = actions_for(policy, path)
    params = policy.trainable_parameters()
    assert params and all(p.requires_grad for p in params)
    optimiser = torch.optim.SGD(params, lr=1e-2)

    def gradients():
        optimiser.zero_grad()
        batch = next(iter(actions.minibatches(0)))
        scored = actions.evaluate(batch)
        loss = -(torch.exp(scored.new_log_prob - scored.old_log_prob) * scored.advantages).mean()
        if actions.entropy(batch) is not None:
            loss = loss - 0.01 * actions.entropy(batch).mean()
        loss.backward()
        return {id(p): (p.grad is not None and float(p.grad.abs().sum()) > 0) for p in params}

    first = gradients()
    if mode == "lora_unet":
        # LoRA starts with B = 0, so A's gradient (through B) is zero until B has moved once.
        names = {id(p): n for n, p in policy.backend.unet.named_parameters() if p.requires_grad}
        assert all(first[i] for i in first if "lora_B" in names[i])
        optimiser.step()
        second = gradients()
        assert all(second.values()), [names[i] for i, ok in second.items() if not ok][:5]
    else:
        assert all(first.values())
    actions.close()


@pytest.mark.parametrize("mode", MODES)
def test_save_and_load_round_trip(tmp_path, mode):
    exp, policy, path = sampled_round(mode, tmp_path)
    update_policy_round(policy, exp, 0, path, brightness(path), None, tmp_path / "policy", progress=False)
    loaded = RoundPolicy.load(tmp_path / "policy", tiny_pixel_backend())
    assert loaded.policy_hash() == policy.policy_hash()
    for name, tensor in policy.state_tensors().items():
        assert torch.equal(tensor, loaded.state_tensors()[name]), name
    files = {p.name for p in (tmp_path / "policy").rglob("*") if p.is_file()}
    assert not any(name.endswith((".pt", ".pkl", ".bin")) for name in files)
    assert "trainer_state.safetensors" in files and "policy.json" in files
    # The loaded policy samples exactly what the trained one samples.
    settings = round_sampling_settings({"batch_size": 4}, exp)
    sample_policy_round(policy, settings, exp, 1, tmp_path / "a", store=round_store())
    sample_policy_round(loaded, settings, exp, 1, tmp_path / "b", store=round_store())
    with open_trajectories(tmp_path / "a" / "trajectories.h5") as a, open_trajectories(tmp_path / "b" / "trajectories.h5") as b:
        np.testing.assert_array_equal(a.image_latents(3), b.image_latents(3))


def test_a_policy_from_another_base_model_is_refused(tmp_path):
    exp, policy, path = sampled_round("scheduler_policy", tmp_path)
    update_policy_round(policy, exp, 0, path, brightness(path), None, tmp_path / "policy", progress=False)
    with pytest.raises(MarsdiffError, match="trained on base model") as info:
        RoundPolicy.load(tmp_path / "policy", tiny_pixel_backend(seed=1))
    assert "\n" not in str(info.value)


def test_trajectories_of_another_policy_are_refused(tmp_path):
    exp, policy, path = sampled_round("lora_unet", tmp_path)
    other = RoundPolicy.initial("lora_unet", tiny_pixel_backend(), experiment("lora_unet", lora={"init_seed": 5}))
    with pytest.raises(MarsdiffError, match="sampled by policy"):
        update_policy_round(other, exp, 0, path, brightness(path), None, tmp_path / "policy", progress=False)
    assert not (tmp_path / "policy").exists()


@pytest.mark.parametrize("settings, message", [
    ({"mode": "full_unet"}, "mode"),
    ({"algorithm": "a2c"}, "algorithm"),
    ({"rounds": 0}, "rounds"),
    ({"images_per_round": 1}, "set reward needs >= 3"),
    ({"images_per_round": 2}, "set reward needs >= 3"),
    ({"optimiser": {"lr": 0}}, "lr"),
])
def test_bad_experiments_are_one_line_errors(settings, message):
    with pytest.raises(MarsdiffError, match=message) as info:
        experiment_settings({"bad": settings}, "bad")
    assert "\n" not in str(info.value) and "experiments.bad" in str(info.value)


def test_unknown_experiment_and_mode_mismatch(tmp_path):
    with pytest.raises(MarsdiffError, match="not configured"):
        experiment_settings({"a": {}}, "b")
    exp, policy, path = sampled_round("scheduler_policy", tmp_path)
    update_policy_round(policy, exp, 0, path, brightness(path), None, tmp_path / "policy", progress=False)
    # A scheduler policy handed to a diversity experiment (e.g. a renamed run directory).
    with mock.patch("marsdiff.rl.rounds.load_backend", return_value=tiny_pixel_backend()):
        with pytest.raises(MarsdiffError, match="diversity_policy"):
            build_policy({"backend": "pixel"}, experiment("diversity_policy"), tmp_path / "model", tmp_path / "policy",
                         device="cpu")


def test_policy_json_names_mode_and_base_model(tmp_path):
    exp, policy, path = sampled_round("diversity_policy", tmp_path)
    update_policy_round(policy, exp, 0, path, brightness(path), None, tmp_path / "policy", progress=False)
    meta = json.loads((tmp_path / "policy" / "policy.json").read_text())
    assert meta["mode"] == "diversity_policy" and meta["base_model_hash"] == tiny_pixel_backend().model_hash()
    assert meta["round"] == 0 and meta["policy_hash"] == policy.policy_hash()


def test_kl_to_base_is_the_closed_form_gaussian_kl(tmp_path):
    from marsdiff.diffusion.rescoring import transition_log_prob

    _, policy, path = sampled_round("lora_unet", tmp_path)
    actions = actions_for(policy, path)
    batch = next(iter(actions.minibatches(0)))
    scored = actions.evaluate(batch)
    assert float(actions.kl_to_base(batch, scored).detach().abs().max()) == 0.0  # B = 0: the adapter is the base
    with torch.no_grad():
        for name, p in policy.backend.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    scored = actions.evaluate(batch)
    kl = actions.kl_to_base(batch, scored)
    base = tiny_pixel_backend()  # an independent copy of the base model, no adapter at all
    t = torch.as_tensor
    with torch.no_grad():
        base_out = transition_log_prob(base, actions.scheduler, t(batch.latents), t(batch.next_latents), t(batch.timestep),
                                       t(batch.condition), prev_timestep=t(batch.prev_timestep), eta=t(batch.eta))
    std = scored.std.view(-1, 1, 1, 1).expand_as(scored.mean)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(scored.mean.detach(), std), torch.distributions.Normal(base_out.mean, std)
    ).flatten(1).mean(1)
    assert float(kl.max()) > 0
    torch.testing.assert_close(kl.detach(), expected, rtol=1e-4, atol=1e-8)
    actions.close()


def test_every_policy_starts_from_the_same_noise_at_a_seed(tmp_path):
    """The plan has its own random stream: x_T at a seed is the base model's for every mode."""
    first = {}
    for mode in MODES:
        _, _, path = sampled_round(mode, tmp_path / mode)
        with open_trajectories(path) as f:
            noise_scale = f.array("knobs/noise_scale")
            first[mode] = np.stack([f.image_latents(i)[0] / noise_scale[i] for i in range(f.num_images)])
    np.testing.assert_allclose(first["scheduler_policy"], first["lora_unet"], rtol=1e-6)
    np.testing.assert_allclose(first["diversity_policy"], first["lora_unet"], rtol=1e-5, atol=1e-6)
