"""Benchmark: memory per minibatch transition of the LoRA update's UNet pass, with and without the
Stable Diffusion memory options (model.stable_diffusion.gradient_checkpointing, .autocast).

    .venv/bin/python benchmarks/bench_memory_options.py [--resolution 64] [--minibatch 2 8] [--device cpu]

One transition of a minibatch costs one classifier-free-guided UNet forward (a batch of two) with
the LoRA adapter attached, kept for the backward pass. Per setting and minibatch size n, the
script runs the forward and backward of a loss on the UNet's output, once to warm up, then once
measured, and reports the peak memory above the start:

- on the CPU: torch.profiler with profile_memory=True; the peak of the running sum of its
  allocation and free events (the tensors torch allocates, not the process RSS, which the
  allocator's caching and the Python heap blur at this size);
- on CUDA: torch.cuda.max_memory_allocated.

Memory per transition is the slope between the two minibatch sizes. The pipeline is the tests'
tiny one (tests/test_stable_diffusion.py), randomly initialised: a two-level UNet with one layer
per block (``--unet tiny``), or with ``--unet sd-layout`` SD 1.5's UNet layout (four levels, two
layers per block, cross-attention in the first three) at 1/10 of its widths. Checkpointing keeps
each checkpointed layer's inputs and recomputes the layer in the backward pass, so it pays only
when a model has many layers; on a CPU the numbers show the ratio between the settings, not what
SD 1.5 needs on a GPU (docs/rl.md). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "plain": {},
    "gradient checkpointing": {"gradient_checkpointing": True},
    "autocast bfloat16": {"autocast": "bfloat16"},
    "both": {"gradient_checkpointing": True, "autocast": "bfloat16"},
}


def cpu_peak(run) -> int:
    """Peak bytes above the start of the tensors allocated while ``run()`` runs (profiler events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.events() if e.cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.cpu_memory_usage
        peak = max(peak, live)
    return peak


def cuda_peak(run) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def measure(directory: Path, prompts: Path, resolution: int, device: str, options: dict, sizes: list[int]) -> dict[int, int]:
    from marsdiff.diffusion.stable_diffusion import load_stable_diffusion
    from marsdiff.rl.experiments import experiment_settings
    from marsdiff.rl.policy import RoundPolicy

    backend = load_stable_diffusion({"pretrained": str(directory), "prompt_file": str(prompts), "guidance_scale": 3.0,
                                     "resolution": resolution, "device": device, "dtype": "float32", **options})
    exp = experiment_settings({"m": {"mode": "lora_unet"}}, "m", {"batch_size": 8})
    policy = RoundPolicy.initial("lora_unet", backend, exp)
    params = policy.trainable_parameters()
    peaks = {}
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        x = torch.randn(n, *backend.latent_shape, generator=g).to(backend.device)
        t = torch.full((n,), 500, dtype=torch.long, device=backend.device)
        c = torch.zeros(n, dtype=torch.long, device=backend.device)

        def step():
            loss = backend.predict(x, t, c).pow(2).mean()
            torch.autograd.grad(loss, params)

        step()  # warm-up: lazy initialisation and the allocator's first blocks
        peaks[n] = (cuda_peak if backend.device.type == "cuda" else cpu_peak)(step)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--minibatch", type=int, nargs=2, default=[2, 8])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--unet", default="tiny", choices=["tiny", "sd-layout"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from test_stable_diffusion import PROMPTS, build_tiny_pipeline

    torch.set_num_threads(1)
    low, high = args.minibatch
    with tempfile.TemporaryDirectory() as tmp:
        directory = build_tiny_pipeline(Path(tmp) / "sd")
        if args.unet == "sd-layout":
            from diffusers import UNet2DConditionModel

            torch.manual_seed(0)
            # UNet2DConditionModel's default block types are SD 1.x's; the text width is the tiny 16
            UNet2DConditionModel(block_out_channels=(32, 64, 128, 128), layers_per_block=2, cross_attention_dim=16,
                                 attention_head_dim=8, norm_num_groups=8).save_pretrained(directory / "unet")
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n")
        method = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "torch.profiler profile_memory"
        print(f"{args.unet} SD UNet, {args.resolution} px, LoRA, CFG; {args.device}; peak memory by {method}")
        print(f"| setting | peak at minibatch {low} | peak at minibatch {high} | per transition | vs plain |")
        print("|---|---|---|---|---|")
        plain = None
        for name in args.settings:
            options = SETTINGS[name]
            peaks = measure(directory, prompts, args.resolution, args.device, options, [low, high])
            per = (peaks[high] - peaks[low]) / (high - low)
            plain = plain or per
            print(f"| {name} | {peaks[low] / 2**20:.2f} MiB | {peaks[high] / 2**20:.2f} MiB | "
                  f"{per / 2**20:.3f} MiB | {per / plain:.2f}x |")


if __name__ == "__main__":
    main()
