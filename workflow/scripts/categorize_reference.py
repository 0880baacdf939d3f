"""Stage categorize_reference: manifest.csv = images.csv + lighting and contrast categories."""

from marsdiff.stage import params_json, run_stage
from marsdiff.stages.categorize_reference import write_manifest


def main(snakemake):
    def body():
        write_manifest(snakemake.input.index, params_json(snakemake, "cfg"), snakemake.output.manifest)

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
