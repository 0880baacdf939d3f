"""Stage select_knob: the frozen knob, chosen on the validation stream against train crops (marsdiff.stages.select_knob)."""

from pathlib import Path

from marsdiff.stage import params_json, run_stage, untracked


def main(snakemake):
    def body():
        import torch

        from marsdiff.stages.select_knob import select_knob

        torch.set_num_threads(max(1, int(snakemake.threads)))
        cfg = params_json(snakemake, "cfg")
        meta = getattr(snakemake.input, "meta", None)
        select_knob(
            cfg["selection"],
            model_cfg=cfg["model"],
            sampling={**cfg["sampling"], "batch_size": untracked(snakemake, "sampling.batch_size")},
            features_cfg=untracked(snakemake, "features"),
            extractor_name=params_json(snakemake, "extractor")["extractor"],
            resolution=int(snakemake.params.resolution),
            manifest=snakemake.input.manifest,
            reference_features=snakemake.input.reference,
            reference_seed=cfg["reference_seed"],
            out_json=snakemake.output.selection,
            out_csv=snakemake.output.table,
            model_dir=str(Path(meta).parent) if meta else None,
        )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
