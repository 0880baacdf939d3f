"""The ``marsdiff`` command line (``python -m marsdiff ...``): argparse subcommands.

``doctor`` checks that the configured pipeline can run here and prints what it will do: the
compute device, the trajectory length of the configured sampling, the feature vector shape of
the configured extractor and one diversity-reward value on a small generated batch, scored as
score_round scores a round: both sides at the matched resolution. Anything
missing (base model, reference features, packages) ends with a one-line message naming the
fix and exit status 1; a user error never prints a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from marsdiff.errors import MarsdiffError

DOCTOR_IMAGES = 4


def _print_row(name: str, value: str) -> None:
    print(f"{name:<22} {value}", flush=True)


def _device_line() -> str:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        return f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB" + (f" (x{count})" if count > 1 else "")
    return f"CPU only ({torch.get_num_threads()} torch threads); no CUDA GPU visible"


def doctor(config_path: str | None, model_dir: str, results_dir: str, images: int = DOCTOR_IMAGES) -> int:
    """Run the checks in order; later checks need earlier results. Returns the exit status."""
    from marsdiff.config import load_overlaid_config

    started = time.perf_counter()
    # As Snakemake does with --configfile: the given file overlays the embedded default
    # (config/sd15.yaml holds only what differs).
    config = load_overlaid_config(config_path)
    sampling, model_cfg, features_cfg = config["sampling"], config["model"], config["features"]
    _print_row("config", str(config_path or "config/config.yaml (embedded default)"))
    _print_row("device", _device_line())
    _print_row(
        "trajectory length",
        f"{sampling['steps']} denoising steps per image (DDIM eta={sampling['eta']}), "
        f"{sampling['images_per_round']} images per round",
    )

    from marsdiff.diffusion.loading import load_backend
    from marsdiff.diffusion.sampler import RecordingSampler, SamplingSettings
    from marsdiff.diffusion.scheduler_logprob import LOG_PROB_CONVENTION

    backend = load_backend(model_cfg, model_dir=model_dir, device=sampling["device"])
    _print_row(
        "model",
        f"{backend.kind}, latents {tuple(backend.latent_shape)}, {len(backend.conditions())} conditions, "
        f"hash {backend.model_hash()}",
    )
    settings = SamplingSettings.from_config({**sampling, "batch_size": images})
    batch = next(iter(RecordingSampler(backend, settings).sample(images, round_index=0)))
    _print_row(
        "sampled",
        f"{images} images {batch.images.shape[1:]} uint8, log-probs ({LOG_PROB_CONVENTION}) "
        f"{batch.log_prob.mean():.3f} mean per step",
    )

    from marsdiff.data.images import resize_to
    from marsdiff.data.resolution import generator_size, matched_size
    from marsdiff.features import build_extractor

    # Generated and reference images meet the encoder at the matched resolution, exactly as
    # score_round does: comparing 32 px samples with 64 px reference features would reward
    # sharpness, not diversity (docs/rewards.md, "Matched resolution").
    size = matched_size(config)
    side = int(batch.images.shape[1])
    if side < size:
        raise MarsdiffError(
            f"{model_dir}: the base model generates {side} px images but the config's model section resolves to "
            f"{generator_size(model_cfg)} px; re-run pretrain_base or fix the model config"
        )
    name = features_cfg["extractors"][0]
    extractor = build_extractor(name, features_cfg)
    vectors = extractor.extract([resize_to(image, size) for image in batch.images])
    _print_row(
        "features",
        f"{name}: vectors of shape {tuple(vectors.shape[1:])} (batch {tuple(vectors.shape)}) at {size} px"
        + (f" (generated {side} px, box-downsampled)" if side != size else ""),
    )

    from marsdiff.rewards import RewardModel
    from marsdiff.rewards.round_scoring import train_reference_features

    reference_path = Path(results_dir) / "features" / f"reference_{size}px" / f"{name}.npy"
    if not reference_path.is_file():
        raise MarsdiffError(
            f"no reference features at {reference_path}: build them with `snakemake --cores 2 {reference_path}`"
        )
    # Rewards compare against the train split only; the held-out split is evaluation's.
    reference, _ = train_reference_features(
        reference_path, Path(results_dir) / "reference" / "manifest.csv", extractor=name, expected_dim=extractor.dim
    )
    result = RewardModel(reference, config["reward"]).score(vectors)
    terms = ", ".join(f"{t.name} {t.raw:.4g}" for t in result.terms.values() if t.weight != 0.0)
    _print_row(
        "diversity reward",
        f"combined {result.reward:.4f} (raw terms: {terms}; {images} generated vs {len(reference)} train "
        f"reference images at {size} px, RBF bandwidth {result.bandwidth:.3g} {result.bandwidth_source})",
    )
    _print_row("status", f"ok ({time.perf_counter() - started:.1f} s)")
    return 0


def _assessment_inputs(config: dict, results: str):
    """(extractor name, resolution, resized reference manifest, its features) of a config's
    evaluation path; a missing file is an error naming the command that builds it."""
    from marsdiff.data.resolution import matched_size

    size = matched_size(config)
    extractor = config["features"]["extractors"][0]
    manifest = Path(results) / "reference" / f"at_{size}px" / "manifest.csv"
    features = Path(results) / "features" / f"reference_{size}px" / f"{extractor}.npy"
    for path in (manifest, features):
        if not path.is_file():
            raise MarsdiffError(f"{path} not found: build it with `snakemake --cores 2 {path}`")
    return extractor, size, manifest, features


def assess_base(config: dict, model_dirs: Sequence[str], results: str, etas: Sequence[float],
                images: int, json_out: str | None) -> dict:
    """Print the base-model check (marsdiff.evalset.assess) of model directories, sampled as the
    config's evaluation samples the base model; returns the settings and the rows."""
    import dataclasses
    import json

    from marsdiff.evalset.assess import AssessSettings, HeldoutYardstick, assess_model, format_table

    extractor, size, manifest, features = _assessment_inputs(config, results)
    base = AssessSettings(images=images, steps=int(config["sampling"]["steps"]))
    yardstick = HeldoutYardstick(manifest, features, base.k)
    rows = yardstick.real_rows(base.images, base.real_draws, base.seed)
    for model_dir in model_dirs:
        for eta in etas:
            rows.append(assess_model(model_dir, yardstick, extractor, config["features"], size,
                                     dataclasses.replace(base, eta=float(eta)), config["sampling"]))
    print(f"{images} images per set, k = {base.k}, {base.steps} steps, {size} px, {extractor} features, "
          f"vs {len(yardstick.reference.heldout)} held-out crops")
    print(format_table(rows))
    result = {"settings": {"images": images, "k": base.k, "steps": base.steps, "resolution": size,
                           "extractor": extractor, "heldout": len(yardstick.reference.heldout)}, "rows": rows}
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def ship_base_model(config_path: str | None, model_dir: str, results: str, training_log: str | None) -> int:
    """Assess a freshly trained model and write it, with provenance, as the shipped base model."""
    from marsdiff.diffusion import shipping

    config = _overlaid_config(config_path)
    assessment = assess_base(config, [model_dir], results, (1.0, 0.0), 64, None)
    produced_by = ("make base-checkpoint: rule pretrain_base with config/config.yaml overlaid by "
                   f"{config_path or 'nothing'}, then marsdiff ship-base-model")
    index = Path(results) / "reference" / "images.csv"
    provenance = shipping.ship(model_dir, index, config["model"]["pixel"], assessment, training_log, produced_by)
    print(f"shipped to {shipping.SHIPPED_DIR} (weights sha256 {provenance['weights_sha256'][:12]}, "
          f"training code {provenance['training_code_version']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marsdiff", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    doc = sub.add_parser("doctor", help="check the environment and the configured pipeline; print what it will do")
    doc.add_argument(
        "--config", default=None, help="config file laid over the embedded config/config.yaml (as snakemake --configfile)"
    )
    doc.add_argument("--model-dir", default="results/models/base", help="pixel base model directory")
    doc.add_argument("--results", default="results", help="results directory (reference features)")
    doc.add_argument("--images", type=int, default=DOCTOR_IMAGES, help="images in the test batch (>= 2)")
    assess = sub.add_parser("assess-base", help="base-model check: models' images against the held-out craters")
    assess.add_argument("model_dirs", nargs="+", help="pixel model directories")
    assess.add_argument("--config", default=None, help="config file laid over the embedded config/config.yaml")
    assess.add_argument("--results", default="results", help="results directory (reference and its features)")
    assess.add_argument("--eta", type=float, action="append", help="sampling eta (repeatable; default 1)")
    assess.add_argument("--images", type=int, default=64, help="images per set (default 64)")
    assess.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ship = sub.add_parser("ship-base-model", help="store a trained base model with its provenance as the shipped one")
    ship.add_argument("model_dir", help="model directory written by pretrain_base")
    ship.add_argument("--config", default=None, help="config file laid over config/config.yaml that trained it")
    ship.add_argument("--results", default="results", help="results directory (reference and its features)")
    ship.add_argument("--training-log", default="logs/pretrain_base.log", help="pretrain_base's log")
    sample = sub.add_parser(
        "sample", help="draw a labelled synthetic crater dataset (imagefolder + metadata.csv + card) from one model"
    )
    sample.add_argument("out", help="output folder (new or empty); it appears only when complete")
    sample.add_argument("-n", "--images", type=int, required=True, help="number of images")
    sample.add_argument("--model", default="base", help="'base' (default) or an experiment's name (its policy)")
    sample.add_argument("--round", type=int, default=None, help="the policy's round (default: the final round)")
    sample.add_argument("--eta", type=float, default=None, help="base model knob: DDIM eta (default sampling.eta)")
    sample.add_argument("--noise-scale", type=float, default=None, help="base model knob: initial-noise temperature")
    sample.add_argument("--classes", default=None, help="comma-separated class names to draw (default: the model's)")
    sample.add_argument("--proportions", default=None, help="comma-separated shares of --classes (default: equal)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the images (default 0)")
    sample.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="compute device")
    sample.add_argument("--batch-size", type=int, default=None, help="images per batch (default sampling.batch_size)")
    sample.add_argument("--steps", type=int, default=None, help="denoising steps (default: the evaluation's)")
    sample.add_argument("--config", default=None, help="the run's config file laid over config/config.yaml")
    sample.add_argument("--results", default="results", help="the run's results directory")
    export = sub.add_parser(
        "export-model", help="write a policy as standard files: a merged diffusers model folder plus knobs.json"
    )
    export.add_argument("policy_dir", help="a policy folder (results/runs/<experiment>/round_<r>/policy)")
    export.add_argument("out", help="output folder (new or empty); it appears only when complete")
    export.add_argument("--results", default="results", help="the run's results directory (its base model)")
    export.add_argument("--config", default=None, help="the run's config file laid over config/config.yaml")
    return parser


def _overlaid_config(path: str | None) -> dict:
    """The embedded default overlaid by ``path``, imported on use so ``--help`` stays fast."""
    from marsdiff.config import load_overlaid_config

    return load_overlaid_config(path)


def _number_list(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise MarsdiffError(f"{option} {text!r}: expected comma-separated numbers") from None


def sample(args: argparse.Namespace) -> int:
    from marsdiff.export.dataset import export_dataset

    summary = export_dataset(
        _overlaid_config(args.config), args.out, args.images, model=args.model, round_index=args.round,
        eta=args.eta, noise_scale=args.noise_scale,
        classes=args.classes.split(",") if args.classes else None,
        proportions=_number_list(args.proportions, "--proportions"), seed=args.seed, device=args.device,
        batch_size=args.batch_size, steps=args.steps, results=args.results,
    )
    print(f"{summary['images']} images of {summary['model_id']} in {summary['folder']} ({summary['seconds']:.1f} s)")
    return 0


def export_model(args: argparse.Namespace) -> int:
    from marsdiff.export.models import export_model as export

    summary = export(_overlaid_config(args.config), args.policy_dir, args.out, results=args.results)
    what = "LoRA merged into the UNet" if summary["lora_merged"] else "base UNet, learnt knobs in knobs.json"
    print(f"{summary['mode']} policy ({summary['backend']}) exported to {summary['folder']} ({what})")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "sample": sample,
    "export-model": export_model,
    "doctor": lambda a: doctor(a.config, a.model_dir, a.results, max(2, a.images)),
    "assess-base": lambda a: 0 if assess_base(_overlaid_config(a.config), a.model_dirs, a.results, a.eta or [1.0],
                                              a.images, a.json) else 1,
    "ship-base-model": lambda a: ship_base_model(a.config, a.model_dir, a.results, a.training_log),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MarsdiffError as err:
        print(f"marsdiff {args.command}: {err}", file=sys.stderr)
        return 1
    except ImportError as err:
        print(f"marsdiff {args.command}: the package '{err.name}' is not installed (pip install -r requirements.txt)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"marsdiff {args.command}: interrupted", file=sys.stderr)
        return 130
