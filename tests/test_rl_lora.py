"""LoRA adapters: float32 on a half-precision base, and the saved Stable Diffusion adapter loads
with diffusers' own LoRA loader and reproduces the trained UNet's predictions."""

from __future__ import annotations

import torch

from marsdiff.diffusion.stable_diffusion import load_stable_diffusion
from marsdiff.rl.lora import LoraSettings, attach_lora, lora_parameters
from marsdiff.rl.policy import RoundPolicy
from rl_helpers import experiment
from test_stable_diffusion import PROMPTS, build_tiny_pipeline
from tiny_models import tiny_unet


def test_adapter_is_float32_on_a_half_precision_base():
    unet = tiny_unet().to(torch.bfloat16)
    params = attach_lora(unet, LoraSettings.from_config(experiment("lora_unet", lora={"target_modules": ["conv1", "conv2"]})["lora"], "pixel"))
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert all(p.dtype == torch.bfloat16 for n, p in unet.named_parameters() if "lora_" not in n)
    # The base stays frozen: only adapter weights are trainable.
    assert {id(p) for p in unet.parameters() if p.requires_grad} == {id(p) for p in lora_parameters(unet)}


def test_sd_adapter_loads_with_diffusers_lora_loader(tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe_dir = build_tiny_pipeline(tmp_path / "sd")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cfg = {"pretrained": str(pipe_dir), "prompt_file": str(prompts), "resolution": 16, "device": "cpu"}
    backend = load_stable_diffusion(cfg)
    policy = RoundPolicy.initial("lora_unet", backend, experiment("lora_unet", lora={"rank": 2, "alpha": 4.0}))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: B away from its zero start
        for name, p in backend.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    policy.save(tmp_path / "policy", round_index=0)

    x = torch.randn(2, *backend.latent_shape)
    t = torch.tensor([900, 300])
    text = backend.prompt_embeds[:2]
    with torch.no_grad():
        ours = backend.unet(x, t, encoder_hidden_states=text).sample
        pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, safety_checker=None, requires_safety_checker=False)
        plain = pipe.unet(x, t, encoder_hidden_states=text).sample
        pipe.load_lora_weights(str(tmp_path / "policy" / "lora"))
        theirs = pipe.unet(x, t, encoder_hidden_states=text).sample
    assert not torch.allclose(plain, ours, atol=1e-4), "the adapter changes the prediction"
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    # And our own loader puts the same adapter back on a fresh base.
    reloaded = RoundPolicy.load(tmp_path / "policy", load_stable_diffusion(cfg))
    with torch.no_grad():
        again = reloaded.backend.unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(again, ours)
