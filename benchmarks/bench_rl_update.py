"""Benchmark: the cost of one RL update (PPO, TRPO) on a recorded round of the default pixel model.

One command, prints tables:

    .venv/bin/python benchmarks/bench_rl_update.py [--images 24 --steps 10 --repeats 2] [--quick]

* PPO: one update (1 epoch, minibatches of ``--minibatch``) in transitions/s, and its ratio to
  (minibatches x one UNet forward+backward at the same batch size): the overhead of re-scoring,
  reading the round file, clipping and the optimiser step over the bare network cost (target <= 1.15);
* TRPO: the update's wall time as a ratio to the PPO update on the same round, its split
  (surrogate gradient, Fisher-vector products, CG algebra, line search), and how it scales with
  ``fvp_subsample`` and ``cg_iterations`` for both FVP methods. CG runs every iteration here
  (tolerance ~0) so the scaling is not hidden by early stops; one FVP product is also expressed
  in UNet forward+backward units, with the first-order graph kept (one chunk) or rebuilt.

The UNet is the embedded default's size (the "small" preset's image size, block_out_channels and
layers_per_block; mid-block attention, 6 classes) with random weights and a rank-4
LoRA adapter on the default targets (conv1, conv2, time_emb_proj); timing does not depend on
the weights. Median of ``--repeats`` runs, PPO and TRPO interleaved. Not a test: nothing is asserted.

``--quick`` (or ``QUICK=1``): one repeat, only the default TRPO setting, no Fisher-vector product
table; the same round size, since TRPO / PPO depends on it (the FVP subsample is a fixed number of
transitions: on a smaller round it is a larger share of the update). Writes
benchmarks-out/bench/rl_update.json (update / (transitions x fwd+bwd), target <= 1.15; default
TRPO / PPO, target <= 2.5) for ``benchmarks/summary.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchlib import add_common_args, pick, row, write_result

CLASSES = 6


def make_policy(seed: int = 0):
    from marsdiff.config import filled_section
    from marsdiff.diffusion.pixel import PixelConfig, build_noise_scheduler, build_pixel_unet
    from marsdiff.diffusion.pixel_backend import PixelBackend
    from marsdiff.rl.policy import RoundPolicy

    cfg = PixelConfig.from_section(filled_section("model.pixel", {"preset": "small"}))
    torch.manual_seed(seed)
    unet = build_pixel_unet(cfg, CLASSES)
    meta = {"backend": "pixel", "image_size": cfg.image_size, "channels": 1, "class_names": [f"c{i}" for i in range(CLASSES)]}
    backend = PixelBackend(unet, dict(build_noise_scheduler(cfg).config), meta, device="cpu")
    experiment = filled_section("experiments.*", {"mode": "lora_unet", "eta": 1.0, "class_distribution": "uniform",
                                                  "lora": {"rank": 4}})
    policy = RoundPolicy.initial("lora_unet", backend, experiment)
    # B = 0 in a fresh adapter zeroes A's gradient; a trained adapter has B != 0 (cost is the same,
    # but TRPO's CG then works on every parameter as it would after round 0).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return policy


def record_round(policy, images: int, steps: int, out_dir: Path) -> Path:
    from marsdiff.config import filled_section
    from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round

    experiment = {"images_per_round": images, "steps": steps, "eta": 1.0, "seed": 0, "class_distribution": "uniform"}
    settings = round_sampling_settings({"batch_size": min(images, 32), "device": "cpu"}, experiment)
    sample_policy_round(policy, settings, experiment, 0, out_dir, store=filled_section("sampling", {})["store"])
    return out_dir / "trajectories.h5"


def make_actions(policy, path: Path, images: int, steps: int, minibatch: int):
    from marsdiff.rl.actions import DenoiseActions

    advantages = np.random.default_rng(0).normal(size=(images, steps)).astype(np.float32)
    return DenoiseActions(policy, path, advantages, minibatch, 1.0, seed=0)


def forward_backward_seconds(policy, actions, batch_size: int, repeats: int) -> float:
    """One bare UNet forward + backward (LoRA gradients) at ``batch_size``, median."""
    unet = policy.backend.unet
    params = policy.trainable_parameters()
    batch = next(actions.minibatches(0))
    x = torch.as_tensor(batch.latents[:batch_size])
    t = torch.as_tensor(batch.timestep[:batch_size])
    c = torch.as_tensor(batch.condition[:batch_size])
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        out = unet(x, t, class_labels=c).sample
        torch.autograd.grad(out.pow(2).mean(), params)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])  # the first call warms up kernels and the allocator


class Restore:
    """Put the policy's parameters back after an update, so every run starts from the same weights."""

    def __init__(self, params):
        self.params = list(params)

    def __enter__(self):
        self.saved = [p.detach().clone() for p in self.params]

    def __exit__(self, *exc):
        with torch.no_grad():
            for p, s in zip(self.params, self.saved):
                p.copy_(s)


def run_ppo(policy, actions, minibatch: int) -> float:
    from marsdiff.config import filled_section
    from marsdiff.rl.ppo import PPOSettings, ppo_update

    params = policy.trainable_parameters()
    settings = filled_section("experiments.*", {"mode": "lora_unet", "ppo": {"minibatch_size": minibatch}})["ppo"]
    optimiser = torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-4)
    with Restore(params):
        started = time.perf_counter()
        # kl_to_base 0: the update alone, without the base model's extra forward pass, as before
        ppo_update(actions, params, optimiser, PPOSettings.from_config(settings), progress=False, kl_to_base=0.0)
        return time.perf_counter() - started


def run_trpo(policy, actions, **settings) -> dict[str, float]:
    from marsdiff.config import filled_section
    from marsdiff.rl.trpo import TRPOSettings, trpo_update

    params = policy.trainable_parameters()
    section = filled_section("experiments.*", {"mode": "lora_unet", "trpo": {"cg_tolerance": 1e-300, **settings}})["trpo"]
    with Restore(params):
        # kl_to_base 0: the update alone, without the base model's extra forward pass, as before
        return trpo_update(actions, params, TRPOSettings.from_config(section), progress=False, kl_to_base=0.0)


def fvp_product_seconds(policy, actions, method: str, subsample: int, chunk: int, repeats: int) -> float:
    from marsdiff.rl.trpo import FisherVectorProduct

    params = policy.trainable_parameters()
    fvp = FisherVectorProduct(actions, params, actions.subsample(subsample, 0), method, chunk, 0.1, jacobian_vector="reverse")
    v = torch.randn(sum(p.numel() for p in params), dtype=torch.float64)
    fvp(v)  # builds the kept graph (one chunk) and warms up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fvp(v)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--minibatch", type=int, default=32)
    parser.add_argument("--repeats", type=int, help="default 2 (quick 1)")
    parser.add_argument("--subsamples", type=int, nargs="+", help="default 32 64 128 (quick: the minibatch only)")
    parser.add_argument("--cg", type=int, nargs="+", help="default 5 10 20 (quick 10)")
    # One thread by default: double backward is many small kernels, and on a shared 2-core
    # machine two threads per process oversubscribe the cores (measured 10-50x slower).
    parser.add_argument("--threads", type=int, default=1)
    add_common_args(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    args.repeats = pick(args.quick, 1, 2, args.repeats)
    args.subsamples = pick(args.quick, [args.minibatch], [32, 64, 128], args.subsamples)
    args.cg = pick(args.quick, [10], [5, 10, 20], args.cg)
    torch.set_num_threads(args.threads)

    policy = make_policy()
    with tempfile.TemporaryDirectory() as tmp:
        path = record_round(policy, args.images, args.steps, Path(tmp) / "round")
        actions = make_actions(policy, path, args.images, args.steps, args.minibatch)
        n = actions.num_actions
        fb = forward_backward_seconds(policy, actions, args.minibatch, args.repeats)
        run_ppo(policy, actions, args.minibatch)  # warm-up

        # The default (fvp_method auto = gauss_newton here, fvp_subsample = minibatch, 10 CG
        # iterations), kl_hessian beside it, then one knob at a time.
        base = {"fvp_subsample": args.minibatch, "cg_iterations": 10, "minibatch_size": args.minibatch}
        configs = [("gauss_newton (default)", dict(base, fvp_method="gauss_newton"))]
        if not args.quick:
            configs.append(("kl_hessian", dict(base, fvp_method="kl_hessian")))
        for s in args.subsamples:
            if s != base["fvp_subsample"]:
                configs.append((f"gauss_newton fvp_subsample {s}", dict(base, fvp_method="gauss_newton", fvp_subsample=s)))
        if len(args.subsamples) > 1 and not args.quick:
            s = sorted(args.subsamples)[1]
            configs.append((f"kl_hessian fvp_subsample {s}", dict(base, fvp_method="kl_hessian", fvp_subsample=s)))
        for c in args.cg:
            if c != base["cg_iterations"]:
                configs.append((f"gauss_newton cg_iterations {c}", dict(base, fvp_method="gauss_newton", cg_iterations=c)))

        ppo_times: list[float] = []
        trpo_rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
        for _ in range(args.repeats):
            ppo_times.append(run_ppo(policy, actions, args.minibatch))
            for name, settings in configs:
                trpo_rows[name].append(run_trpo(policy, actions, **settings))
        products = {
            (method, keep): fvp_product_seconds(policy, actions, method, args.minibatch if keep else 2 * args.minibatch,
                                               args.minibatch, args.repeats)
            for method in ("kl_hessian", "gauss_newton") for keep in (True, False)
        } if not args.quick else {}
        actions.close()

    ppo = statistics.median(ppo_times)
    from marsdiff.config import filled_section

    small = filled_section("model.pixel", {"preset": "small"})
    print(f"\nRL update cost, pixel UNet of the small preset ({small['image_size']} px, "
          f"block_out_channels {tuple(small['block_out_channels'])}), LoRA rank 4, {args.images} images x {args.steps} steps "
          f"= {n} trainable transitions, minibatch {args.minibatch}, {args.threads} thread(s), median of {args.repeats}")
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}\n")
    print("PPO (1 epoch)")
    print(f"  update                               {ppo:8.3f} s   {n / ppo:8.1f} transitions/s")
    bare = fb * n / args.minibatch
    print(f"  UNet fwd+bwd at batch {args.minibatch:<3d}            {fb:8.3f} s   x {n}/{args.minibatch} batches = {bare:.3f} s")
    print(f"  update / (transitions x fwd+bwd)     {ppo / bare:8.3f}     (target <= 1.15)\n")
    print("One Fisher-vector product, in UNet fwd+bwd units of the same number of transitions")
    if not products:
        print("  (not measured in quick mode)")
    for (method, keep), seconds in products.items():
        count = args.minibatch if keep else 2 * args.minibatch
        label = "graph kept (1 chunk)" if keep else "rebuilt (2 chunks)"
        print(f"  {method:13s} {label:22s} {seconds:8.3f} s   {seconds / (fb * count / args.minibatch):6.2f} x")
    print("\nTRPO (one step; CG runs all its iterations)")
    header = (f"  {'setting':32s} {'seconds':>8s} {'/ PPO':>7s} {'gradient':>9s} {'fvp':>8s} {'products':>9s} {'cg':>7s} "
              f"{'search':>7s} {'tries':>6s} {'passes':>7s} {'kl':>8s} {'sFs/ss':>8s}")
    print(header)
    for name, rows in trpo_rows.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"  {name:32s} {med['seconds']:8.3f} {med['seconds'] / ppo:7.2f} {med['gradient_seconds']:9.3f} "
              f"{med['fvp_seconds']:8.3f} {med['fvp_products']:9.0f} {med['cg_seconds']:7.3f} "
              f"{med['line_search_seconds']:7.3f} {med['line_search_tries']:6.0f} {med['line_search_actions'] / n:7.2f} "
              f"{med['kl']:8.4f} {med['fisher_rayleigh']:8.4f}")
    print("\n  passes: actions the line search scored over all its tries, in whole rounds (a rejected try stops early)")
    print("  sFs/ss: Rayleigh quotient of the Fisher along the step (undamped), to compare with cg_damping")

    default_name = configs[0][0]
    trpo = statistics.median(r["seconds"] for r in trpo_rows[default_name])
    setup = f"{n} transitions ({args.images} images x {args.steps} steps), minibatch {args.minibatch}, " \
            f"{args.threads} thread(s), median of {args.repeats}"
    rows = [
        row("update_ratio", "PPO update / (transitions x one UNet forward+backward)", ppo / bare, "x", ("<=", 1.15),
            f"PPO 1 epoch {ppo:.2f} s, fwd+bwd {fb:.3f} s per batch of {args.minibatch}; {setup}"),
        row("trpo_ppo", "TRPO update / PPO update, same transitions", trpo / ppo, "x", ("<=", 2.5),
            f"TRPO {default_name}, 10 CG iterations run to the end, {trpo:.2f} s vs PPO {ppo:.2f} s; {setup}",
            digits=2),
    ]
    write_result(args.out, "rl_update", rows, args.quick, started,
                 {"images": args.images, "steps": args.steps, "minibatch": args.minibatch, "repeats": args.repeats,
                  "threads": args.threads, "subsamples": args.subsamples, "cg": args.cg})


if __name__ == "__main__":
    main()
