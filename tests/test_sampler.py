"""The recording sampler and the per-step Gaussian maths (scheduler_logprob), on a tiny pixel UNet.

Properties: stored log-probs are reproduced by re-evaluation (PPO ratio exactly 1 before an
update), every step has sigma_t > 0 (the last included), a step agrees with diffusers' DDIM,
images do not depend on the batch they were drawn in, and gradients reach the policy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from marsdiff.diffusion.pixel_backend import PixelBackend, load_pixel_backend
from marsdiff.diffusion.plan import condition_probabilities
from marsdiff.diffusion.rescoring import scheduler_for_trajectories, transition_log_prob
from marsdiff.diffusion.round_files import write_round
from marsdiff.diffusion.sampler import RecordingSampler, SamplingSettings
from marsdiff.diffusion.scheduler_logprob import (
    LOG_PROB_CONVENTION,
    DDIMLogProbScheduler,
    gaussian_log_prob,
    power_timesteps,
    total_nats,
)
from marsdiff.errors import MarsdiffError

from tiny_models import CLASS_NAMES, ddpm_config, tiny_unet


@pytest.fixture(scope="module")
def backend():
    meta = {"backend": "pixel", "image_size": 16, "channels": 1, "class_names": CLASS_NAMES}
    return PixelBackend(tiny_unet(), ddpm_config(), meta, device="cpu")


@pytest.fixture(scope="module")
def recorded(backend):
    sampler = RecordingSampler(backend, SamplingSettings.from_config({"steps": 6, "batch_size": 5, "seed": 3}))
    return sampler, next(iter(sampler.sample(5, round_index=0)))


def test_recorded_shapes_and_actions(recorded):
    sampler, batch = recorded
    assert batch.latents.shape == (5, 7, 1, 16, 16)
    assert batch.log_prob.shape == (5, 6) and np.isfinite(batch.log_prob).all()
    assert batch.images.shape == (5, 16, 16) and batch.images.dtype == np.uint8
    assert set(batch.condition.tolist()) <= {0, 1, 2}
    np.testing.assert_allclose(batch.plan_log_prob["condition"], math.log(1 / 3), rtol=1e-6)
    # Without a schedule knob every image follows the scheduler's grid.
    assert (batch.timesteps == sampler.timesteps.numpy()[None]).all()
    assert len(set(batch.seed.tolist())) == 5


def test_reevaluation_reproduces_stored_log_probs_in_shuffled_minibatches(recorded, backend):
    """The PPO ratio is exactly 1 before the first update: same weights -> same log-probs."""
    sampler, batch = recorded
    n, steps = batch.log_prob.shape
    rows = [(i, k) for i in range(n) for k in range(steps)]
    order = np.random.default_rng(0).permutation(len(rows))
    # a fresh scheduler, as the trainer builds it
    scheduler = backend.make_scheduler(eta=sampler.settings.eta, min_std=sampler.settings.min_std)
    scheduler.set_timesteps(steps)
    for chunk in np.array_split(order, 4):  # mixed images and timesteps per minibatch
        i = np.array([rows[r][0] for r in chunk])
        k = np.array([rows[r][1] for r in chunk])
        with torch.no_grad():
            out = transition_log_prob(
                backend,
                scheduler,
                torch.from_numpy(batch.latents[i, k]),
                torch.from_numpy(batch.latents[i, k + 1]),
                torch.from_numpy(batch.timesteps[i, k]),
                torch.from_numpy(batch.condition[i]),
                prev_timestep=torch.from_numpy(batch.prev_timesteps[i, k]),
                eta=torch.from_numpy(batch.eta[i]),
            )
        diff = np.abs(out.log_prob.numpy() - batch.log_prob[i, k])
        assert diff.max() <= 1e-5, diff.max()
        ratio = torch.exp(out.log_prob - torch.from_numpy(batch.log_prob[i, k]))
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)


class PerImageSchedule:
    """A plan with a different eta and timestep spacing per image (as the scheduler policy draws)."""

    mode, action_names = "test", ()

    def plan(self, generators):
        from marsdiff.diffusion.plan import GenerationPlan

        b = len(generators)
        return GenerationPlan(
            condition=torch.arange(b) % 3,
            knobs={"eta": torch.linspace(0.3, 1.4, b), "timestep_power": torch.linspace(0.5, 2.5, b)},
            actions=torch.zeros(b, 0),
            log_prob={"condition": torch.zeros(b), "knobs": torch.zeros(b)},
        )

    def describe(self):
        return {}


def test_per_image_schedules_are_recorded_and_reproduced(backend):
    sampler = RecordingSampler(backend, SamplingSettings.from_config({"steps": 5, "batch_size": 4, "seed": 1}), PerImageSchedule())
    batch = next(iter(sampler.sample(4)))
    grids, prev = power_timesteps(1000, 5, torch.linspace(0.5, 2.5, 4))
    np.testing.assert_array_equal(batch.timesteps, grids.numpy())
    np.testing.assert_array_equal(batch.prev_timesteps, prev.numpy())
    assert len({tuple(row) for row in batch.timesteps.tolist()}) == 4  # every image its own grid
    np.testing.assert_allclose(batch.eta, np.linspace(0.3, 1.4, 4), rtol=1e-6)
    # Larger eta, larger sigma on the same (first) step: the knob reaches the chain.
    assert batch.std[-1, 0] > batch.std[0, 0]
    scheduler = backend.make_scheduler(eta=sampler.settings.eta, min_std=sampler.settings.min_std)
    scheduler.set_timesteps(5)
    i = np.repeat(np.arange(4), 5)
    k = np.tile(np.arange(5), 4)
    with torch.no_grad():
        out = transition_log_prob(
            backend, scheduler, torch.from_numpy(batch.latents[i, k]), torch.from_numpy(batch.latents[i, k + 1]),
            torch.from_numpy(batch.timesteps[i, k]), torch.from_numpy(batch.condition[i]),
            prev_timestep=torch.from_numpy(batch.prev_timesteps[i, k]), eta=torch.from_numpy(batch.eta[i]),
        )
    assert np.abs(out.log_prob.numpy() - batch.log_prob[i, k]).max() <= 1e-5


def test_power_timesteps_are_strictly_decreasing_and_trailing_at_one():
    grids, prev = power_timesteps(1000, 50, torch.tensor([0.25, 1.0, 4.0]))
    assert (grids[:, :-1] > grids[:, 1:]).all() and (grids >= 0).all() and (grids <= 999).all()
    np.testing.assert_array_equal(grids[1].numpy(), np.arange(999, 0, -20))  # diffusers' "trailing"
    assert (prev[:, -1] == -1).all() and (prev[:, :-1] == grids[:, 1:]).all()


def test_sigma_positive_on_every_step_including_the_last(backend):
    # A DDPM config gives set_alpha_to_one=True: DDIM's last-step sigma is exactly 0 there.
    scheduler = DDIMLogProbScheduler.from_config(ddpm_config(), eta=1.0, min_std=0.01)
    timesteps = scheduler.set_timesteps(10)
    std = scheduler.std(timesteps)
    assert (std > 0).all() and float(std[-1]) == pytest.approx(0.01)
    assert int(scheduler.prev_timesteps[-1]) == -1
    # A sample drawn at the last step still has a finite log-prob.
    x = torch.randn(2, 1, 4, 4)
    out = scheduler.step(torch.zeros_like(x), int(timesteps[-1]), x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.log_prob).all()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_step_matches_diffusers_ddim_away_from_the_floor(prediction_type):
    from diffusers import DDIMScheduler

    config = ddpm_config(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    ours = DDIMLogProbScheduler.from_config(config, eta=0.7, min_std=1e-8)
    theirs = DDIMScheduler.from_config(config)
    ours.set_timesteps(8)
    theirs.set_timesteps(8)
    torch.manual_seed(0)
    x, eps, noise = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    for t in theirs.timesteps[:-1].tolist():
        expected = theirs.step(eps, t, x, eta=0.7, variance_noise=noise).prev_sample
        got = ours.step(eps, t, x, noise=noise)
        torch.testing.assert_close(got.prev_sample, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.mean + got.std.view(-1, 1, 1, 1) * noise, expected, rtol=1e-5, atol=1e-5)


def test_log_prob_convention_is_per_dimension_mean():
    sample, mean, std = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([0.5, 2.0])
    dist = torch.distributions.Normal(mean, std.view(-1, 1, 1, 1))
    true_nats = dist.log_prob(sample).flatten(1).sum(1)
    ours = gaussian_log_prob(sample, mean, std)
    assert LOG_PROB_CONVENTION == "mean_per_dim_nats"
    torch.testing.assert_close(total_nats(ours, 48), true_nats, rtol=1e-5, atol=1e-4)


def test_images_do_not_depend_on_batching(backend):
    one = RecordingSampler(backend, SamplingSettings.from_config({"steps": 3, "batch_size": 1, "seed": 9}))
    four = RecordingSampler(backend, SamplingSettings.from_config({"steps": 3, "batch_size": 4, "seed": 9}))
    singles = list(one.sample(4))
    together = next(iter(four.sample(4)))
    np.testing.assert_array_equal(np.concatenate([b.seed for b in singles]), together.seed)
    np.testing.assert_array_equal(np.concatenate([b.condition for b in singles]), together.condition)
    np.testing.assert_allclose(np.concatenate([b.latents for b in singles]), together.latents, atol=1e-5)


def test_policy_parameters_receive_gradient(recorded, backend):
    """Score-function gradients: the stored action is a constant, the mean depends on theta."""
    sampler, batch = recorded
    scheduler = backend.make_scheduler(eta=sampler.settings.eta, min_std=sampler.settings.min_std)
    scheduler.set_timesteps(6)
    unet = backend.policy
    unet.requires_grad_(True)
    try:
        out = transition_log_prob(
            backend,
            scheduler,
            torch.from_numpy(batch.latents[:, 2]),
            torch.from_numpy(batch.latents[:, 3]),
            torch.full((5,), int(sampler.timesteps[2])),
            torch.from_numpy(batch.condition),
        )
        out.log_prob.sum().backward()
        grads = [p.grad for p in unet.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    finally:
        unet.zero_grad(set_to_none=True)
        unet.requires_grad_(False)


def test_float16_store_keeps_the_chain_exact(backend):
    sampler = RecordingSampler(backend, SamplingSettings.from_config({"steps": 3, "batch_size": 2, "store": {"dtype": "float16"}}))
    batch = next(iter(sampler.sample(2)))
    assert batch.latents.dtype == np.float16
    scheduler = backend.make_scheduler(eta=sampler.settings.eta, min_std=sampler.settings.min_std)
    scheduler.set_timesteps(3)
    with torch.no_grad():
        out = transition_log_prob(
            backend,
            scheduler,
            torch.from_numpy(batch.latents[:, 1].astype(np.float32)),
            torch.from_numpy(batch.latents[:, 2].astype(np.float32)),
            torch.full((2,), int(sampler.timesteps[1])),
            torch.from_numpy(batch.condition),
        )
    assert np.abs(out.log_prob.numpy() - batch.log_prob[:, 1]).max() <= 1e-5


def test_condition_distribution_specs():
    names = ["a", "b", "c"]
    assert torch.allclose(condition_probabilities("uniform", names), torch.full((3,), 1 / 3, dtype=torch.float64))
    assert condition_probabilities({"b": 1.0}, names).tolist() == [0.0, 1.0, 0.0]
    assert condition_probabilities([1, 1, 2], names).tolist() == [0.25, 0.25, 0.5]
    with pytest.raises(MarsdiffError, match="unknown classes"):
        condition_probabilities({"z": 1.0}, names)
    with pytest.raises(MarsdiffError, match="3 conditions"):
        condition_probabilities([1, 2], names)


def test_sample_round_writes_all_outputs(tmp_path, backend):
    from marsdiff.io.trajectories import open_trajectories

    out = tmp_path / "round_000"
    write_round(
        RecordingSampler(backend, SamplingSettings.from_config({"steps": 2, "batch_size": 3})),
        num_images=4,
        trajectories_path=out / "trajectories.h5",
        images_dir=out / "images",
        samples_csv=out / "samples.csv",
        stage_config={"sampling": {"steps": 2}},
        compression="gzip",
        compression_level=4,
    )
    assert len(list((out / "images").glob("*.png"))) == 4
    lines = (out / "samples.csv").read_text().splitlines()
    assert lines[0].startswith("image_id,file,image_index,condition,condition_name") and len(lines) == 5
    with open_trajectories(out / "trajectories.h5") as f:
        assert f.num_images == 4 and f.num_steps == 2
        assert f.attrs["model_hash"] == backend.model_hash()
        assert f.attrs["log_prob_convention"] == LOG_PROB_CONVENTION
        # The trainer's path: rebuild the step distribution from the file, re-score a transition.
        scheduler = scheduler_for_trajectories(f)
        chain, stored = f.image_latents(2), f.array("log_prob/denoise")[2]
        with torch.no_grad():
            out_step = transition_log_prob(
                backend,
                scheduler,
                torch.from_numpy(chain[:-1]),
                torch.from_numpy(chain[1:]),
                torch.from_numpy(f.array("timesteps")[2]),
                torch.full((2,), int(f.array("condition")[2])),
                prev_timestep=torch.from_numpy(f.array("prev_timesteps")[2]),
            )
        assert np.abs(out_step.log_prob.numpy() - stored).max() <= 1e-5


def test_missing_base_model_names_the_command(tmp_path):
    with pytest.raises(MarsdiffError, match="pretrain_base"):
        load_pixel_backend(tmp_path / "models" / "base", device="cpu")
