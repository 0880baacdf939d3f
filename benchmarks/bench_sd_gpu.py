"""Benchmark: the Stable Diffusion path at SD 1.5's size on a GPU (sampling a recorded round, one
PPO-LoRA update, and their GPU memory).

    .venv/bin/python benchmarks/bench_sd_gpu.py [--resolution 512 --images 16 --steps 20 --minibatch 32 8]

No weights can be fetched, so the pipeline has SD 1.5's shapes with random weights (860 M-parameter
UNet, 4-level VAE, 12-layer CLIP text encoder), built here and saved as a diffusers directory; it
is then loaded through :func:`marsdiff.diffusion.stable_diffusion.load_stable_diffusion` in float16
as a user's checkpoint would be. Timing and memory do not depend on the weights. The tokenizer is
the character-level one of ``tests/test_stable_diffusion.py`` (token ids do not change the cost).
Per minibatch size: one warm-up round, then one timed round (sampling, then the PPO update over
all its transitions). Prints a table and the ratios update/sampling and GiB per minibatch
transition. Without a CUDA GPU it says so and exits 0 (``--tiny`` runs a small pipeline on the
CPU instead, to check the script). Not a test: nothing is asserted. docs/rl.md has the H100 numbers.

On a GPU it also writes benchmarks-out/bench/sd_gpu.json, rows of the benchmark summary (which card,
per minibatch: sampling s per image-step, update s per transition, update / sampling, peak GiB);
the project sets no GPU targets, so they are reported. ``--tiny`` runs write no result: a CPU check
of the script is not a GPU figure. ``--quick`` (or ``QUICK=1``): 8 images x 10 steps, minibatch 8.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchlib import add_common_args, pick, row, write_result

REPO = Path(__file__).resolve().parents[1]


def build_pipeline(directory: Path, resolution: int, tiny: bool) -> int:
    """Save a randomly initialised SD pipeline to ``directory``; returns the UNet's parameter count."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(REPO / "tests"))
    from test_stable_diffusion import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 77
    torch.manual_seed(0)
    if tiny:
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=resolution // 8,
                                    cross_attention_dim=32, attention_head_dim=8,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        vae_channels, vae_layers, text_width, text_layers, heads = (16, 32, 32, 32), 1, 32, 2, 2
    else:  # SD 1.5's shapes (UNet2DConditionModel's defaults are SD 1.x's, but for the text width)
        unet = UNet2DConditionModel(sample_size=resolution // 8, cross_attention_dim=768)
        vae_channels, vae_layers, text_width, text_layers, heads = (128, 256, 512, 512), 2, 768, 12, 12
    vae = AutoencoderKL(block_out_channels=vae_channels, layers_per_block=vae_layers, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=8 if tiny else 32, sample_size=resolution)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer) + 8, hidden_size=text_width, intermediate_size=4 * text_width,
        num_attention_heads=heads, num_hidden_layers=text_layers, max_position_embeddings=77,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(directory)
    return sum(p.numel() for p in unet.parameters())


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def start_clock(device: torch.device) -> float:
    """Wait for queued GPU work and reset the peak-memory counter, then read the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    return time.perf_counter()


def stop_clock(device: torch.device, started: float) -> tuple[float, float]:
    """(seconds since ``started`` once the GPU's queue is done, peak GiB since start_clock)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, peak_gib(device)


def measure(pipeline_dir: Path, work: Path, args, minibatch: int, device: torch.device) -> dict[str, float]:
    from marsdiff.config import filled_section
    from marsdiff.diffusion.stable_diffusion import load_stable_diffusion
    from marsdiff.rl.experiments import experiment_settings
    from marsdiff.rl.policy import RoundPolicy
    from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round
    from marsdiff.rl.round_update import update_policy_round

    cfg = {"pretrained": str(pipeline_dir), "prompt_file": str(REPO / "src/marsdiff/assets/prompts_craters.txt"),
           "guidance_scale": 7.5, "resolution": args.resolution, "device": str(device), "dtype": "auto"}
    backend = load_stable_diffusion(cfg)
    exp = experiment_settings({"bench": {
        "mode": "lora_unet", "images_per_round": args.images, "steps": args.steps, "rounds": 2,
        "lora": {"rank": 4, "alpha": 4.0}, "ppo": {"epochs": 1, "minibatch_size": minibatch, "timestep_fraction": 1.0},
    }}, "bench", {"batch_size": args.images})
    policy = RoundPolicy.initial("lora_unet", backend, exp)
    settings = round_sampling_settings({"batch_size": args.images}, exp)
    row: dict[str, float] = {}
    for r in range(2):  # round 0 warms up kernels and the allocator
        round_dir = work / f"mb{minibatch}_round{r}"
        started = start_clock(device)
        sample_policy_round(policy, settings, exp, r, round_dir, store=filled_section("sampling", {})["store"])
        row["sampling_s"], row["sampling_gib"] = stop_clock(device, started)
        credit = np.random.default_rng(r).normal(size=args.images)
        started = start_clock(device)
        metrics = update_policy_round(policy, exp, r, round_dir / "trajectories.h5", credit, None,
                                      round_dir / "policy", progress=False)
        row["update_s"], row["update_gib"] = stop_clock(device, started)
        row["transitions"] = metrics["actions"]
        row["file_mb"] = (round_dir / "trajectories.h5").stat().st_size / 1e6
    del policy, backend
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--images", type=int, help="default 16 (quick 8)")
    parser.add_argument("--steps", type=int, help="default 20 (quick 10)")
    parser.add_argument("--minibatch", type=int, nargs="+", help="default 32 8 (quick 8)")
    parser.add_argument("--tiny", action="store_true", help="a small pipeline on the CPU (checks the script)")
    add_common_args(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    args.images = pick(args.quick, 8, 16, args.images)
    args.steps = pick(args.quick, 10, 20, args.steps)
    args.minibatch = pick(args.quick, [8], [32, 8], args.minibatch)
    if args.tiny:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("bench_sd_gpu: no CUDA GPU visible; skipped (use --tiny to check the script on the CPU)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        params = build_pipeline(work / "sd", args.resolution, args.tiny)
        name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
        print(f"{name}: UNet {params / 1e6:.0f} M parameters, {args.resolution} px, {args.images} images x "
              f"{args.steps} steps a round (built in {time.perf_counter() - start:.0f} s)")
        rows = {mb: measure(work / "sd", work, args, mb, device) for mb in args.minibatch}
    print("| minibatch | sampling s | sampling GiB | update s | transitions/s | update GiB | update / sampling | "
          "trajectories.h5 MB |")
    print("|---|---|---|---|---|---|---|---|")
    for mb, r in rows.items():
        print(f"| {mb} | {r['sampling_s']:.2f} | {r['sampling_gib']:.1f} | {r['update_s']:.2f} | "
              f"{r['transitions'] / r['update_s']:.0f} | {r['update_gib']:.1f} | {r['update_s'] / r['sampling_s']:.2f} | "
              f"{r['file_mb']:.1f} |")
    if len(rows) >= 2 and device.type == "cuda":
        (small, a), (large, b) = sorted(rows.items())[0], sorted(rows.items())[-1]
        per = (b["update_gib"] - a["update_gib"]) / (large - small)
        print(f"update memory: {per:.2f} GiB per minibatch transition, "
              f"{a['update_gib'] - per * small:.1f} GiB fixed (linear fit of the two extremes)")
    if device.type == "cuda":
        write_result(args.out, "sd_gpu", gpu_rows(rows, args, name), args.quick, started,
                     {"resolution": args.resolution, "images": args.images, "steps": args.steps,
                      "minibatch": args.minibatch})
    return 0


def gpu_rows(rows: dict[int, dict[str, float]], args, card: str) -> list[dict]:
    """Summary rows of a GPU run: no project targets at this size, so reported only."""
    setup = f"{card}, SD 1.5 shapes float16, {args.resolution} px, {args.images} images x {args.steps} steps"
    out = []
    for mb, r in rows.items():
        what = f"SD 1.5 size on GPU, minibatch {mb}:"
        out += [
            row(f"sd_sampling_ms_{mb}", f"{what} sampling per image-step", 1000 * r["sampling_s"] / (args.images * args.steps),
                "ms", note=f"{setup}; round {r['sampling_s']:.2f} s", digits=1),
            row(f"sd_update_ms_{mb}", f"{what} PPO-LoRA update per transition", 1000 * r["update_s"] / r["transitions"],
                "ms", note=f"{r['transitions']:.0f} transitions, {r['update_s']:.2f} s", digits=1),
            row(f"sd_update_sampling_{mb}", f"{what} update / sampling", r["update_s"] / r["sampling_s"], "x", digits=2),
            row(f"sd_update_gib_{mb}", f"{what} update peak GPU memory", r["update_gib"], "GiB",
                note=f"sampling {r['sampling_gib']:.1f} GiB; trajectories.h5 {r['file_mb']:.1f} MB", digits=1),
        ]
    return out


if __name__ == "__main__":
    sys.exit(main())
