"""Diagnosis: how well TRPO's quadratic KL model, fitted on the FVP subsample, predicts the KL
the line search measures on every transition of the round (docs/rl.md, "TRPO", "Why the line
search backtracks").

    .venv/bin/python benchmarks/diagnose_trpo_step.py [--images 24 --steps 10 --rounds 3]

On the benchmark's round (bench_rl_update.py: the default-size pixel UNet, LoRA rank 4, random
advantages) and for each of ``--rounds`` draws (a recorded round and its advantages per seed;
``--advantages image`` gives every step of an image its image's advantage, as set-reward credit
does), at the full natural-gradient step beta s it prints:

* the quadratic model's KL on the subsample, beta^2 s^T F_sub s / 2 (= max_kl by construction),
  and on the whole round, beta^2 s^T F_all s / 2 (F_all: the same Gauss-Newton Fisher over every
  transition, one product);
* the KL measured (exact, no early stop) on the subsample and on the whole round, at the full
  step and at the backtracking fractions 0.8^k;
* the damping against the Fisher's curvature along s;
* the expected surrogate gain g^T beta s against the measured one.

A unit mismatch (per-dimension mean against sum, per-image against per-step) shows as a constant
factor between the model and the measured KL on the subsample itself; damping that dominates as
damping_ratio >= 1; a subsample Fisher that underestimates the round's curvature as s^T F_all s
> s^T F_sub s with the subsample's own model right. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_rl_update import make_policy, record_round

SHRINK = 0.8


def shipped_policy(seed: int):
    """The shipped (trained) base model with a fresh rank-4 LoRA adapter, B drawn as in make_policy."""
    from marsdiff.config import filled_section
    from marsdiff.diffusion.pixel_backend import load_pixel_backend
    from marsdiff.diffusion.shipped import SHIPPED_DIR
    from marsdiff.rl.policy import RoundPolicy

    backend = load_pixel_backend(SHIPPED_DIR, device="cpu")
    experiment = filled_section("experiments.*", {"mode": "lora_unet", "eta": 1.0, "class_distribution": "uniform",
                                                  "lora": {"rank": 4}})
    policy = RoundPolicy.initial("lora_unet", backend, experiment)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backend.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return policy


def clipped_fraction(actions, batches) -> float:
    """Share of x0_hat pixels the scheduler's clip_sample clamps, over the round at theta_old."""
    clipped = count = 0
    scheduler = actions.scheduler
    if not scheduler.clip_sample:
        return 0.0
    saved = scheduler.clip_sample
    scheduler.clip_sample = False
    try:
        with torch.no_grad():
            for batch in batches:
                t = torch.as_tensor
                out = actions.policy.backend.predict(t(batch.latents), t(batch.timestep).long(), t(batch.condition).long())
                abar = scheduler.alphas_cumprod[t(batch.timestep).long()].view(-1, 1, 1, 1)
                x = t(batch.latents)
                if scheduler.prediction_type == "v_prediction":
                    x0 = abar.sqrt() * x - (1 - abar).sqrt() * out
                else:
                    x0 = (x - (1 - abar).sqrt() * out) / abar.sqrt()
                clipped += int((x0.abs() > scheduler.clip_sample_range).sum())
                count += x0.numel()
    finally:
        scheduler.clip_sample = saved
    return clipped / count


def make_actions(policy, path: Path, images: int, steps: int, minibatch: int, seed: int, per_image: bool):
    from marsdiff.rl.actions import DenoiseActions

    rng = np.random.default_rng(seed)
    if per_image:
        advantages = np.repeat(rng.normal(size=(images, 1)), steps, axis=1).astype(np.float32)
    else:
        advantages = rng.normal(size=(images, steps)).astype(np.float32)
    return DenoiseActions(policy, path, advantages, minibatch, 1.0, seed=seed)


def diagnose(policy, actions, max_kl: float, minibatch: int, cg_iterations: int, damping: float) -> dict[str, float]:
    from marsdiff.config import filled_section
    from marsdiff.rl.fisher_vector_product import FisherVectorProduct
    from marsdiff.rl.kl_families import kl_family
    from marsdiff.rl.line_search import evaluate_surrogate_and_kl
    from marsdiff.rl.parameter_vectors import unflat_vector
    from marsdiff.rl.trpo import TRPOSettings, leading_actions, natural_gradient_direction, surrogate_gradient

    class NoBar:
        def update(self, n):
            pass

    params = policy.trainable_parameters()
    family = kl_family(actions)
    trpo = {"max_kl": max_kl, "cg_iterations": cg_iterations, "cg_damping": damping, "cg_tolerance": 1e-300,
            "minibatch_size": minibatch, "fvp_subsample": minibatch}
    settings = TRPOSettings.from_config(filled_section("experiments.*", {"mode": "lora_unet", "trpo": trpo})["trpo"])
    jacobian_vector = settings.jacobian_vector
    batches = list(actions.minibatches(0))
    total = sum(len(b) for b in batches)
    sub = leading_actions(batches, minibatch)
    clip_share = clipped_fraction(actions, batches)
    first = surrogate_gradient(actions, params, family, batches, total, None, 0.0, None, NoBar())
    fvp = FisherVectorProduct(actions, params, sub, "gauss_newton", minibatch, 0.0, jacobian_vector=jacobian_vector)
    natural = natural_gradient_direction(fvp, first.gradient, settings)
    fvp.release()
    s = natural.direction
    beta = math.sqrt(2 * max_kl / natural.s_f_s)
    # The same Fisher over every transition of the round (chunks of the minibatch size, undamped).
    everything = leading_actions(batches, total)
    f_all = FisherVectorProduct(actions, params, everything, "gauss_newton", minibatch, 0.0, jacobian_vector=jacobian_vector)
    s_f_all_s = float(s @ f_all(s))
    f_sub = FisherVectorProduct(actions, params, sub, "gauss_newton", minibatch, 0.0, jacobian_vector=jacobian_vector)
    s_f_sub_s = float(s @ f_sub(s))  # explicit, to check CG's recursion
    f_sub.release()

    saved = [p.detach().clone() for p in params]
    step = unflat_vector(beta * s, params)
    sub_olds = [first.olds[0]]  # the subsample is the first minibatch: its old means are the pass's first
    measured = {}
    for k in range(6):
        fraction = SHRINK ** k
        with torch.no_grad():
            for p, p0, d in zip(params, saved, step):
                p.copy_(p0 + fraction * d)
        whole = evaluate_surrogate_and_kl(actions, family, batches, first.olds, total)
        on_sub = evaluate_surrogate_and_kl(actions, family, [batches[0]], sub_olds, len(batches[0]))
        measured[k] = (fraction, whole.kl, on_sub.kl, whole.surrogate - first.surrogate)
    # Small steps on the subsample: KL / f^2 must tend to the quadratic model (max_kl) as f -> 0
    # if the Fisher is the Hessian of the line search's KL (a unit mismatch shows as another limit).
    small = {}
    for fraction in (0.1, 0.01):
        with torch.no_grad():
            for p, p0, d in zip(params, saved, step):
                p.copy_(p0 + fraction * d)
        small[fraction] = evaluate_surrogate_and_kl(actions, family, [batches[0]], sub_olds, len(batches[0])).kl / fraction ** 2
    with torch.no_grad():
        for p, p0 in zip(params, saved):
            p.copy_(p0)
    s_s = float(s @ s)
    row = {
        "transitions": float(total), "beta": beta,
        "quad_kl_sub": 0.5 * beta ** 2 * natural.s_f_s, "quad_kl_sub_explicit": 0.5 * beta ** 2 * s_f_sub_s,
        "quad_kl_all": 0.5 * beta ** 2 * s_f_all_s,
        "kl_all": measured[0][1], "kl_sub": measured[0][2],
        "expected_gain": float(first.gradient @ (beta * s)), "gain": measured[0][3],
        "damping_ratio": natural.damping / (natural.s_f_s / s_s), "cg_products": float(natural.cg_iterations),
        "cg_relative_residual": natural.cg_residual / float(first.gradient.norm()), "clipped": clip_share,
    }
    row["kl_sub_f0.1_over_f2"], row["kl_sub_f0.01_over_f2"] = small[0.1], small[0.01]
    for k, (fraction, kl_all, kl_sub, gain) in measured.items():
        row[f"kl_all_{k}"] = kl_all
        row[f"kl_sub_{k}"] = kl_sub
        row[f"gain_{k}"] = gain
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--minibatch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-kl", type=float, default=0.01)
    parser.add_argument("--damping", type=float, default=0.01)
    parser.add_argument("--cg", type=int, default=10)
    parser.add_argument("--advantages", choices=("transition", "image"), default="transition")
    parser.add_argument("--model", choices=("random", "shipped"), default="random",
                        help="the bench's random-weight UNet or the shipped trained base model")
    parser.add_argument("--no-clip", action="store_true",
                        help="score without the scheduler's clip_sample (KL model check; the ratio at theta_old is then not 1)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.rounds):
            policy = make_policy(seed) if args.model == "random" else shipped_policy(seed)
            path = record_round(policy, args.images, args.steps, Path(tmp) / f"round{seed}")
            actions = make_actions(policy, path, args.images, args.steps, args.minibatch, seed, args.advantages == "image")
            if args.no_clip:
                actions.scheduler.clip_sample = False
            rows.append(diagnose(policy, actions, args.max_kl, args.minibatch, args.cg, args.damping))
            actions.close()
            r = rows[-1]
            print(f"round {seed}: quad KL sub {r['quad_kl_sub']:.4g} (explicit {r['quad_kl_sub_explicit']:.4g}) "
                  f"all {r['quad_kl_all']:.4g}; measured sub {r['kl_sub']:.4g} all {r['kl_all']:.4g}; "
                  f"expected gain {r['expected_gain']:.4g} measured {r['gain']:.4g}; damping ratio {r['damping_ratio']:.3g}; "
                  f"x0 clipped {r['clipped']:.3f}",
                  flush=True)
    print(f"\nTRPO full-step diagnosis: {args.images} images x {args.steps} steps, minibatch/subsample {args.minibatch}, "
          f"model {args.model}, clip_sample {'off' if args.no_clip else 'as stored'}, max_kl {args.max_kl}, cg_damping {args.damping} (relative), CG {args.cg}, advantages per {args.advantages}, "
          f"{args.threads} thread(s); torch {torch.__version__}, python {sys.version.split()[0]}; "
          f"{time.perf_counter() - started:.0f} s\n")
    keys = ["transitions", "quad_kl_sub", "quad_kl_sub_explicit", "quad_kl_all", "kl_sub", "kl_all", "expected_gain",
            "gain", "damping_ratio", "cg_relative_residual", "clipped", "kl_sub_f0.1_over_f2", "kl_sub_f0.01_over_f2"]
    print("  " + " ".join(f"{k:>14s}" for k in ["round"] + keys))
    for i, r in enumerate(rows):
        print("  " + f"{i:>14d} " + " ".join(f"{r[k]:14.4g}" for k in keys))
    print("\n  along the backtracking line theta_old + 0.8^k beta s: KL all / KL sub / gain")
    for i, r in enumerate(rows):
        cells = [f"k={k}: {r[f'kl_all_{k}']:.3g}/{r[f'kl_sub_{k}']:.3g}/{r[f'gain_{k}']:.3g}" for k in range(6)]
        print(f"  round {i}: " + "  ".join(cells))
    ratio = [r["kl_all"] / r["quad_kl_sub"] for r in rows]
    print(f"\n  measured KL on all / quadratic model on the subsample: median {statistics.median(ratio):.3g} "
          f"(min {min(ratio):.3g}, max {max(ratio):.3g})")
    ratio = [r["quad_kl_all"] / r["quad_kl_sub"] for r in rows]
    print(f"  quadratic model on all / on the subsample:            median {statistics.median(ratio):.3g}")
    ratio = [r["kl_sub"] / r["quad_kl_sub"] for r in rows]
    print(f"  measured KL on the subsample / its quadratic model:   median {statistics.median(ratio):.3g}")


if __name__ == "__main__":
    main()
