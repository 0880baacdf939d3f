"""Stage pretrain_base: train the embedded pixel-space base model into results/models/base/,
or install the shipped one when it was trained from exactly this config, train split and code."""

from pathlib import Path

from marsdiff.stage import params_json, run_stage, untracked


def main(snakemake):
    def body():
        # Imported inside the body so a missing package is reported like any other user error.
        from marsdiff.diffusion.pixel_keys import PIXEL_LOGGING_KEYS
        from marsdiff.stages.pretrain_base import pretrain_or_install

        # Tracked training keys plus the untracked preset name (recorded in the model's metadata)
        # and log cadence (the config is filled by the schema at parse time); samples.png is stage
        # preview_base's.
        pixel = untracked(snakemake, "model.pixel")
        settings = {"preset": pixel["preset"], **{k: pixel[k] for k in PIXEL_LOGGING_KEYS}}
        section = {**params_json(snakemake, "cfg"), **settings}
        pretrain_or_install(snakemake.input.index, Path(snakemake.output.meta).parent, section,
                            code_version=snakemake.params.training_code, threads=snakemake.threads)

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
