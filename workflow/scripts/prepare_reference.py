"""Stage prepare_reference: build results/reference/ (images, manifest.csv, contact sheet)."""

from pathlib import Path

from marsdiff.data.reference import prepare_reference
from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        cfg = params_json(snakemake, "cfg")["reference"]
        prepare_reference(cfg, Path(snakemake.output.manifest).parent)

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
