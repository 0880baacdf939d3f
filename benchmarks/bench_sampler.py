"""Benchmark: the recording sampler vs plain diffusers-style DDIM sampling of the same UNet.

One command, prints a table:

    .venv/bin/python benchmarks/bench_sampler.py [--images 16 --steps 20 --repeats 4] [--quick]

* wall time of plain sampling (diffusers ``DDIMScheduler.step`` with eta, one batch generator,
  no recording) and of :class:`marsdiff.diffusion.sampler.RecordingSampler` (per-image seeds,
  Gaussian mean/std/log-prob per step, the whole chain kept), interleaved and repeated, median;
  target ratio <= 1.05;
* peak resident memory above the process baseline of each, measured in a fresh subprocess;
* HDF5 bytes per trajectory for each store dtype / compression, and of a round written by the
  sample_round stage itself with the default config's store settings, model and steps.

``--quick`` (or ``QUICK=1``): 8 images, 10 steps, 2 repeats, no memory subprocesses, a 4-image
round. Writes benchmarks-out/bench/sampler.json for ``benchmarks/summary.py``.

The UNet is the embedded default's size (UNet2DModel 32-64-64 channels, 32x32 grey, 6 classes,
no attention) with random weights: timing does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from benchlib import add_common_args, pick, row, write_result

CLASSES = 6


def build_unet(size: int):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        num_class_embeds=CLASSES,
    ).eval()


def ddpm_config():
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(num_train_timesteps=1000).config)


def make_backend(size: int):
    from marsdiff.diffusion.pixel_backend import PixelBackend

    meta = {"backend": "pixel", "image_size": size, "channels": 1, "class_names": [f"c{i}" for i in range(CLASSES)]}
    return PixelBackend(build_unet(size), ddpm_config(), meta, device="cpu")


class UNetClock:
    """Accumulates wall time inside UNet calls, so the sampler's own overhead can be separated
    from the (noisy, on a shared machine) network time."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            return out

        return timed


UNET_CLOCK = UNetClock()


@torch.no_grad()
def plain_sampling(unet, images: int, steps: int, size: int, seed: int = 0) -> np.ndarray:
    """What a user would write with diffusers: one generator, DDIMScheduler.step, no recording."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(ddpm_config())
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (images,), generator=generator)
    x = torch.randn((images, 1, size, size), generator=generator)
    forward = UNET_CLOCK.wrap(unet)
    for t in scheduler.timesteps:
        eps = forward(x, t.expand(images), class_labels=labels).sample
        x = scheduler.step(eps, t, x, eta=1.0, generator=generator).prev_sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def recording_sampling(backend, images: int, steps: int):
    from marsdiff.diffusion.sampler import RecordingSampler, SamplingSettings

    sampler = RecordingSampler(backend, SamplingSettings.from_config({"steps": steps, "batch_size": images, "seed": 0}))
    return next(iter(sampler.sample(images)))


class PeakRSS:
    """Polls this process's resident set size; peak above the value at start."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.base = self.peak = self.rss()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def memory_child(variant: str, images: int, steps: int, size: int, threads: int) -> None:
    """Run one variant once in this (fresh) process and print its peak RSS delta as JSON."""
    torch.set_num_threads(threads)
    backend = make_backend(size)
    # Warm up allocator and kernels on a 1-step run so the delta is the sampling's own memory.
    plain_sampling(backend.unet, images, 1, size) if variant == "plain" else recording_sampling(backend, images, 1)
    with PeakRSS() as rss:
        plain_sampling(backend.unet, images, steps, size) if variant == "plain" else recording_sampling(backend, images, steps)
    print(json.dumps({"variant": variant, "peak_mib": rss.delta_mib}))


def hdf5_sizes(batch, steps: int) -> list[tuple[str, str, float]]:
    from marsdiff.io.trajectories import TrajectoryHeader, bytes_per_trajectory, write_trajectories

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float16"):
            for compression in ("gzip", "lzf", "none"):
                path = Path(tmp) / f"{dtype}_{compression}.h5"
                header = TrajectoryHeader(
                    num_images=len(batch.seed),
                    num_steps=steps,
                    latent_shape=batch.latents.shape[2:],
                    condition_names=[f"c{i}" for i in range(CLASSES)],
                    config_hash="bench",
                    model_hash="bench",
                    backend="pixel",
                    scheduler_config={},
                    latent_dtype=dtype,
                    compression=compression,
                    compression_level=4,
                )
                with write_trajectories(path, header) as writer:
                    writer.write(**{k: v for k, v in vars(batch).items() if k != "images"})
                rows.append((dtype, compression, bytes_per_trajectory(path)))
    return rows


def default_round_bytes(images: int) -> tuple[float, dict]:
    """Bytes per trajectory of a round that the sample_round stage writes with the default config:
    the shipped base model, the default steps and ``sampling.store`` (only images_per_round is
    lowered: a trajectory's size does not depend on how many there are)."""
    from marsdiff.config import load_config
    from marsdiff.diffusion.shipped import install
    from marsdiff.io.trajectories import bytes_per_trajectory
    from marsdiff.stages.sample_round import sample_round_stage

    cfg = load_config()
    experiment = next(iter(cfg["experiments"]))
    cfg["sampling"]["images_per_round"] = images
    cfg["experiments"][experiment].pop("images_per_round", None)
    with tempfile.TemporaryDirectory() as tmp:
        # The default run starts from the shipped model, installed as pretrain_base installs it.
        install(Path(tmp) / "base")
        sample_round_stage(cfg, experiment, 0, model_dir=str(Path(tmp) / "base"), previous_policy=None,
                           out_dir=Path(tmp) / "round")
        size = bytes_per_trajectory(Path(tmp) / "round" / "trajectories.h5")
    return size, {"experiment": experiment, "steps": cfg["sampling"]["steps"], **cfg["sampling"]["store"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, help="default 16 (quick 8)")
    parser.add_argument("--steps", type=int, help="default 20 (quick 10)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, help="default 4 (quick 2)")
    parser.add_argument("--round-images", type=int, help="images of the default-config round (default 16, quick 4)")
    # One thread by default: on a shared 2-core machine two OpenMP threads per process
    # oversubscribe the cores and a UNet forward got ~9x slower (measured), drowning the signal.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-child", choices=["plain", "recording"], help=argparse.SUPPRESS)
    add_common_args(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    args.images = pick(args.quick, 8, 16, args.images)
    args.steps = pick(args.quick, 10, 20, args.steps)
    args.repeats = pick(args.quick, 2, 4, args.repeats)
    args.round_images = pick(args.quick, 4, 16, args.round_images)
    if args.memory_child:
        memory_child(args.memory_child, args.images, args.steps, args.size, args.threads)
        return

    torch.set_num_threads(args.threads)
    backend = make_backend(args.size)
    unet = backend.unet
    backend.predict = UNET_CLOCK.wrap(backend.predict)  # the recording sampler's only UNet call
    plain_sampling(unet, args.images, 2, args.size)  # warm-up
    recording_sampling(backend, args.images, 2)
    times: dict[str, list[float]] = {"plain": [], "recording": []}
    cpu: dict[str, list[float]] = {"plain": [], "recording": []}
    outside: dict[str, list[float]] = {"plain": [], "recording": []}
    batch = None
    runs = {
        "plain": lambda: plain_sampling(unet, args.images, args.steps, args.size),
        "recording": lambda: recording_sampling(backend, args.images, args.steps),
    }
    for repeat in range(args.repeats):
        # Interleaved, alternating order: both variants see the same machine load. CPU time
        # (all threads of this process) is reported too: it is far less sensitive than wall
        # time to other processes on a shared machine.
        for variant in ("plain", "recording") if repeat % 2 == 0 else ("recording", "plain"):
            start, start_cpu = time.perf_counter(), time.process_time()
            UNET_CLOCK.seconds = 0.0
            result = runs[variant]()
            times[variant].append(time.perf_counter() - start)
            outside[variant].append(times[variant][-1] - UNET_CLOCK.seconds)
            cpu[variant].append(time.process_time() - start_cpu)
            if variant == "recording":
                batch = result

    # Peak memory needs a fresh process per variant (model build and imports again): not in quick mode.
    memory = {"plain": float("nan"), "recording": float("nan")}
    for variant in () if args.quick else ("plain", "recording"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", variant, "--images", str(args.images),
             "--steps", str(args.steps), "--size", str(args.size), "--threads", str(args.threads)],
            capture_output=True, text=True, check=True,
        )
        memory[variant] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]

    plain, rec = statistics.median(times["plain"]), statistics.median(times["recording"])
    ratio = rec / plain
    pairwise = statistics.median(r / p for r, p in zip(times["recording"], times["plain"]))
    chain_mib = batch.latents.nbytes / 2**20
    print(f"# bench_sampler: {args.images} images, {args.steps} DDIM steps (eta 1), {args.size}x{args.size} grey, "
          f"UNet2DModel 32-64-64, {args.threads} threads, torch {torch.__version__}, {args.repeats} repeats")
    cpu_plain, cpu_rec = statistics.median(cpu["plain"]), statistics.median(cpu["recording"])
    out_plain, out_rec = statistics.median(outside["plain"]), statistics.median(outside["recording"])
    print(f"{'variant':<12} {'median wall s':>14} {'wall s/step':>12} {'median CPU s':>13} {'outside UNet s':>15} {'peak RSS MiB':>13}")
    for name, wall, cpu_s, out_s in (("plain", plain, cpu_plain, out_plain), ("recording", rec, cpu_rec, out_rec)):
        print(f"{name:<12} {wall:>14.3f} {wall / args.steps:>12.4f} {cpu_s:>13.3f} {out_s:>15.3f} {memory[name]:>13.1f}")
    print(f"wall-time ratio recording/plain: {ratio:.3f} (pairwise median {pairwise:.3f}; target <= 1.05)")
    print(f"CPU-time ratio recording/plain:  {cpu_rec / cpu_plain:.3f}")
    # The same UNet work plus each sampler's own work: robust to load on other cores.
    print(f"overhead-based ratio (plain + extra time outside the UNet) / plain: {(plain + out_rec - out_plain) / plain:.3f}")
    print(f"recorded chain in memory: {chain_mib:.2f} MiB ({batch.latents.nbytes / args.images / 1024:.1f} KiB per image)")
    print(f"{'store dtype':<12} {'compression':<12} {'bytes/trajectory':>17}")
    for dtype, compression, size in hdf5_sizes(batch, args.steps):
        print(f"{dtype:<12} {compression:<12} {size:>17,.0f}")
    raw = (args.steps + 1) * args.size * args.size * 4
    print(f"(raw float32 chain: {raw:,} bytes per trajectory; SD 1.5 4x64x64 x {args.steps + 1} steps: "
          f"{(args.steps + 1) * 4 * 64 * 64 * 4:,} bytes float32 before compression)")
    round_bytes, store = default_round_bytes(args.round_images)
    store_text = f"{store['dtype']}, {store['compression']} level {store['compression_level']}"
    print(f"default config round ({store['experiment']}, shipped base model, {store['steps']} steps, {store_text}): "
          f"{round_bytes:,.0f} bytes per trajectory")

    overhead_ratio = (plain + out_rec - out_plain) / plain
    rows = [
        row("sampler_ratio", "recording sampler / plain diffusers DDIM sampling, wall time", ratio, "x", ("<=", 1.05),
            f"{args.images} images x {args.steps} steps, {args.threads} thread(s), median of {args.repeats}; "
            f"pairwise {pairwise:.3f}, CPU time {cpu_rec / cpu_plain:.3f}, UNet time removed {overhead_ratio:.3f}"),
        # The store has no size target: the figure is reported so a change in it shows.
        row("hdf5_bytes", "HDF5 bytes per trajectory, a default-config round", round_bytes, "bytes", None,
            f"{store['steps']} steps 1x32x32, {store_text}; raw float32 chain "
            f"{(store['steps'] + 1) * args.size * args.size * 4:,} bytes", digits=0),
    ]
    write_result(args.out, "sampler", rows, args.quick, started,
                 {"images": args.images, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                  "round_images": args.round_images})


if __name__ == "__main__":
    main()
