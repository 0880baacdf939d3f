"""Stage generate_samples: one evaluated model's seeded images and samples.csv (marsdiff.evaluation.generate)."""

from pathlib import Path

from marsdiff.faults import kill_point
from marsdiff.stage import params_json, run_stage, untracked


def main(snakemake):
    def body():
        # Imported inside the body so a missing package is reported like any other user error.
        import torch

        from marsdiff.evalset.generate import generate_model_samples
        from marsdiff.evalset.models import FROZEN, frozen_spec, stream_round
        from marsdiff.io.reading import read_json

        torch.set_num_threads(max(1, int(snakemake.threads)))
        cfg = params_json(snakemake, "cfg")
        meta = getattr(snakemake.input, "meta", None)
        spec = cfg["model_spec"]
        if spec["kind"] == FROZEN:
            # the frozen knob's knobs: what select_knob chose before any test image was drawn
            spec = frozen_spec(spec, read_json(snakemake.input.selection, "knob selection", "select_knob",
                                               keys=("chosen",)))
        kill_point("generate.start")
        generate_model_samples(
            spec,
            model_cfg=cfg["model"],
            sampling={**cfg["sampling"], "batch_size": untracked(snakemake, "sampling.batch_size")},
            n_images=cfg["images"],
            seed=cfg["seed"],
            steps=cfg["steps"],
            images_dir=snakemake.output.images,
            samples_csv=snakemake.output.samples,
            model_dir=str(Path(meta).parent) if meta else None,
            policy_dir=getattr(snakemake.input, "policy", None),
            round_index=stream_round(cfg.get("stream", 0)),
        )
        kill_point("generate.done")

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
