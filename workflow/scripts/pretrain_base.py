"""Stage pretrain_base: train the embedded pixel-space base model into results/models/base/."""

from pathlib import Path

from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        # Imported inside the body so a missing package is reported like any other user error.
        from marsdiff.diffusion.pretrain import pretrain_base

        cfg = params_json(snakemake, "cfg")["model"]
        pretrain_base(
            snakemake.input.manifest,
            Path(snakemake.output.meta).parent,
            (cfg or {}).get("pixel"),
            threads=snakemake.threads,
        )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
