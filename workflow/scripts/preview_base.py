"""Stage preview_base: samples.png of the trained base model (grid settings only)."""

from pathlib import Path

from marsdiff.stage import params_json, run_stage, untracked


def main(snakemake):
    def body():
        from marsdiff.stages.preview_base import write_preview

        write_preview(
            Path(snakemake.input.meta).parent,
            snakemake.input.index,
            params_json(snakemake, "cfg"),
            snakemake.output.samples,
            threads=snakemake.threads,
            device=untracked(snakemake, "model.pixel.device"),
        )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
