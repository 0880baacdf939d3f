"""Stage prepare_reference: results/reference/images/, images.csv and the contact sheet."""

from marsdiff.data.reference import CHECK_KEYS, LOCATION_KEYS
from marsdiff.stage import params_json, run_stage, untracked
from marsdiff.stages.prepare_reference import build_reference_images


def main(snakemake):
    def body():
        # Where the data lives comes untracked (its content is the rule's `data` param), and so do
        # the limits that only refuse bad data (the parse checked them already).
        section = untracked(snakemake, "reference")
        cfg = {**params_json(snakemake, "cfg"), **{key: section.get(key) for key in LOCATION_KEYS + CHECK_KEYS}}
        build_reference_images(cfg, snakemake.output.images, snakemake.output.index, snakemake.output.contact_sheet)

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
