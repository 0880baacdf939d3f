"""Stage pretrain_base: train the embedded pixel-space base model into results/models/base/."""

from pathlib import Path

from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        # Imported inside the body so a missing package is reported like any other user error.
        from marsdiff.diffusion.pretrain import pretrain_base

        # Tracked training keys plus the untracked preset name and log cadence.
        section = {**params_json(snakemake, "cfg")["model"]["pixel"], **params_json(snakemake, "settings")}
        pretrain_base(
            snakemake.input.index,
            Path(snakemake.output.meta).parent,
            section,
            threads=snakemake.threads,
            preview=False,  # stage preview_base draws samples.png
        )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
