"""Stage prepare_reference: results/reference/images/, images.csv and the contact sheet."""

from marsdiff.data.reference import build_reference_images
from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        # Where the data lives comes untracked; its content is the rule's `data` param.
        cfg = {**params_json(snakemake, "cfg")["reference"], **params_json(snakemake, "locations")["reference"]}
        build_reference_images(cfg, snakemake.output.images, snakemake.output.index, snakemake.output.contact_sheet)

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
