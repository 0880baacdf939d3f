"""The Stable Diffusion backend on a tiny randomly initialised pipeline, built in code, saved with
``save_pretrained`` and loaded through the same path a user's checkpoint takes. Nothing is
downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marsdiff.diffusion.rescoring import transition_log_prob
from marsdiff.diffusion.sampler import RecordingSampler, SamplingSettings
from marsdiff.diffusion.stable_diffusion import load_stable_diffusion, read_prompts
from marsdiff.errors import MarsdiffError

PROMPTS = ["a small fresh crater", "a large degraded crater", "a crater at low sun"]


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    # A character-level CLIP BPE vocabulary written here (no merges: every letter is a token).
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789,.-'()":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=24)


def build_tiny_pipeline(directory):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
    )
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer) + 8,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    # SD 1.5's scheduler settings: scaled_linear betas, steps_offset 1, set_alpha_to_one False.
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# test prompts\n" + "\n".join(PROMPTS) + "\n\n")
    return path


@pytest.fixture(scope="module")
def backend(tiny_dir, prompt_file):
    cfg = {"pretrained": str(tiny_dir), "prompt_file": str(prompt_file), "guidance_scale": 3.0,
           "resolution": 16, "device": "cpu", "dtype": "auto"}
    return load_stable_diffusion(cfg)


def test_loads_a_local_directory_in_float32_on_cpu(backend):
    assert backend.kind == "stable_diffusion"
    assert backend.conditions() == PROMPTS
    assert backend.model_dtype == torch.float32 and next(backend.unet.parameters()).dtype == torch.float32
    assert backend.latent_shape == (4, 8, 8)  # 16 px / VAE factor 2
    assert backend.scheduler_config["steps_offset"] == 1
    assert backend.prompt_embeds.shape[0] == len(PROMPTS)


def test_sampling_and_log_prob_reproduction_with_cfg(backend):
    sampler = RecordingSampler(backend, SamplingSettings.from_config({"steps": 4, "batch_size": 3, "seed": 1}))
    batch = next(iter(sampler.sample(3)))
    assert batch.images.shape == (3, 16, 16, 3) and batch.images.dtype == np.uint8
    assert batch.latents.shape == (3, 5, 4, 8, 8)
    assert (batch.std > 0).all()
    scheduler = backend.make_scheduler(eta=sampler.settings.eta, min_std=sampler.settings.min_std)
    scheduler.set_timesteps(4)
    steps = np.array([3, 0, 2])  # one transition per image, mixed timesteps
    rows = np.arange(3)
    with torch.no_grad():
        out = transition_log_prob(
            backend,
            scheduler,
            torch.from_numpy(batch.latents[rows, steps]),
            torch.from_numpy(batch.latents[rows, steps + 1]),
            torch.from_numpy(batch.timesteps[rows, steps]),
            torch.from_numpy(batch.condition),
        )
    assert np.abs(out.log_prob.numpy() - batch.log_prob[rows, steps]).max() <= 1e-5


def test_guidance_changes_the_prediction(backend):
    x = torch.randn(2, *backend.latent_shape)
    t = torch.tensor([500, 500])
    c = torch.tensor([0, 1])
    guided = backend.predict(x, t, c)
    scale = backend.guidance_scale
    try:
        backend.guidance_scale = 1.0
        plain = backend.predict(x, t, c)
    finally:
        backend.guidance_scale = scale
    assert guided.shape == plain.shape and not torch.allclose(guided, plain)
    # Per-image guidance (the scheduler policy's knob) equals the global setting row by row.
    per_image = backend.predict(x, t, c, guidance_scale=torch.tensor([scale, 1.0]))
    torch.testing.assert_close(per_image[0], guided[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(per_image[1], plain[1], rtol=1e-5, atol=1e-5)


def test_uncached_hub_id_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MarsdiffError, match="not in the local Hugging Face cache") as info:
        load_stable_diffusion({"pretrained": "nobody/no-such-model", "device": "cpu"})
    assert "\n" not in str(info.value)


def test_missing_local_directory_is_a_clear_error(tmp_path):
    with pytest.raises(MarsdiffError, match="not a diffusers pipeline directory"):
        load_stable_diffusion({"pretrained": str(tmp_path / "missing"), "device": "cpu"})


def test_packaged_prompt_file_covers_the_crater_variety():
    prompts = read_prompts(None)
    assert len(prompts) >= 16 and len(set(prompts)) == len(prompts)
    text = " ".join(prompts).lower()
    for word in ("rim", "ejecta", "degraded", "sun", "shadow", "small", "large", "plains", "dunes"):
        assert word in text, word
