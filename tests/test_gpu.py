"""The CUDA paths: Stable Diffusion in half precision (sampling, log-prob re-scoring, LoRA PPO
rounds) and the pixel model's training step. Skipped on machines without a GPU (CI has none);
run them with `pytest tests/test_gpu.py` where one is visible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marsdiff.diffusion.rescoring import transition_log_prob
from marsdiff.diffusion.sampler import RecordingSampler, SamplingSettings
from marsdiff.diffusion.stable_diffusion import load_stable_diffusion
from marsdiff.rl.lora import lora_parameters
from marsdiff.rl.policy import RoundPolicy
from rl_helpers import brightness, experiment, run_rounds
from test_stable_diffusion import PROMPTS, build_tiny_pipeline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture()
def sd_config(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return {"pretrained": str(build_tiny_pipeline(tmp_path / "sd")), "prompt_file": str(prompts),
            "guidance_scale": 3.0, "resolution": 16, "device": "cuda", "dtype": "auto"}


def test_sd_loads_in_half_precision_on_cuda(sd_config):
    backend = load_stable_diffusion(sd_config)
    assert backend.device.type == "cuda" and backend.model_dtype == torch.float16
    assert next(backend.unet.parameters()).dtype == torch.float16
    assert backend.prompt_embeds.device.type == "cuda"


def test_sd_half_precision_log_probs_are_reproduced(sd_config):
    """The update re-scores recorded transitions; in float16 the recorded and recomputed
    log-probs must still agree closely, or every PPO ratio starts away from 1."""
    backend = load_stable_diffusion(sd_config)
    sampler = RecordingSampler(backend, SamplingSettings.from_config({"steps": 4, "batch_size": 3, "seed": 1}))
    batch = next(iter(sampler.sample(3)))
    assert np.isfinite(batch.latents).all() and (batch.std > 0).all()
    scheduler = backend.make_scheduler(eta=sampler.settings.eta, min_std=sampler.settings.min_std)
    scheduler.set_timesteps(4)
    steps = np.array([3, 0, 2])
    rows = np.arange(3)
    with torch.no_grad():
        out = transition_log_prob(
            backend, scheduler,
            torch.from_numpy(batch.latents[rows, steps]).to("cuda"),
            torch.from_numpy(batch.latents[rows, steps + 1]).to("cuda"),
            torch.from_numpy(batch.timesteps[rows, steps]).to("cuda"),
            torch.from_numpy(batch.condition).to("cuda"),
        )
    recomputed = out.log_prob.float().cpu().numpy()
    # log-probs of 256-dimensional latents are O(100); the ratio exp(difference) must stay near 1
    assert np.abs(recomputed - batch.log_prob[rows, steps]).max() <= 1e-2


def test_lora_ppo_rounds_on_half_precision_sd(sd_config, tmp_path):
    backend = load_stable_diffusion(sd_config)
    exp = experiment("lora_unet", images_per_round=6, steps=3, rounds=2, lora={"rank": 2, "alpha": 4.0})
    start = RoundPolicy.initial("lora_unet", backend, exp)
    frozen = {n: p.detach().clone() for n, p in backend.unet.named_parameters() if "lora_" not in n}
    adapter_before = [p.detach().clone() for p in lora_parameters(backend.unet)]
    policy, history = run_rounds(exp, tmp_path / "rounds", reward=brightness, start_policy=start)
    assert len(history) == 2 and all(np.isfinite(h["reward_mean"]) for h in history)
    adapter_after = list(lora_parameters(policy.backend.unet))
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in adapter_after)
    assert any(not torch.equal(a, b) for a, b in zip(adapter_before, adapter_after)), "the update moved the adapter"
    assert all(torch.equal(p, frozen[n]) for n, p in policy.backend.unet.named_parameters() if "lora_" not in n)


def test_pixel_model_trains_on_cuda(tmp_path):
    from marsdiff.config import filled_section
    from marsdiff.diffusion.pixel import load_pixel_model
    from marsdiff.diffusion.pretrain import pretrain_base
    from test_pixel_model import TINY, write_reference

    section = filled_section("model.pixel", {**TINY, "device": "cuda", "train_steps": 20})
    meta = pretrain_base(write_reference(tmp_path / "reference"), tmp_path / "model", section)
    assert meta["training"]["device"].startswith("cuda") and np.isfinite(meta["training"]["final_loss"])
    unet, _, _ = load_pixel_model(tmp_path / "model", device="cuda")
    assert next(unet.parameters()).device.type == "cuda"
