"""Stages generate_samples (one RL policy) and generate_base_samples (the base model and all its
knob settings of one stream, one model load): seeded images and samples.csv of each evaluated
model (marsdiff.evalset.generate)."""

from pathlib import Path

from marsdiff.faults import kill_point
from marsdiff.stage import params_json, run_stage, untracked


def as_list(value):
    """A named output of one path is a string, of several a list."""
    return [value] if isinstance(value, str) else list(value)


def main(snakemake):
    def body():
        # Imported inside the body so a missing package is reported like any other user error.
        import torch

        from marsdiff.evalset.generate import generate_samples_of
        from marsdiff.evalset.models import FROZEN, frozen_spec, stream_round
        from marsdiff.io.reading import read_json

        torch.set_num_threads(max(1, int(snakemake.threads)))
        cfg = params_json(snakemake, "cfg")
        meta = getattr(snakemake.input, "meta", None)
        specs = cfg["model_specs"] if "model_specs" in cfg else [cfg["model_spec"]]
        images, samples = as_list(snakemake.output.images), as_list(snakemake.output.samples)
        if not len(specs) == len(images) == len(samples):
            raise RuntimeError(f"{len(specs)} models for {len(images)} image folders and {len(samples)} tables")
        for i, spec in enumerate(specs):
            if spec["kind"] == FROZEN:
                # the frozen knob's knobs: what select_knob chose before any test image was drawn
                specs[i] = frozen_spec(spec, read_json(snakemake.input.selection, "knob selection", "select_knob",
                                                       keys=("chosen",)))
        kill_point("generate.start")
        generate_samples_of(
            list(zip(specs, images, samples)),
            model_cfg=cfg["model"],
            sampling={**cfg["sampling"], "batch_size": untracked(snakemake, "sampling.batch_size")},
            n_images=cfg["images"],
            seed=cfg["seed"],
            steps=cfg["steps"],
            model_dir=str(Path(meta).parent) if meta else None,
            policy_dir=getattr(snakemake.input, "policy", None),
            round_index=stream_round(cfg.get("stream", 0)),
        )
        kill_point("generate.done")

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
