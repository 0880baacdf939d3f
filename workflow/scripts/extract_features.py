"""Stage extract_features: one extractor's features of the reference set, via the cache."""

from marsdiff.features import extract_image_set
from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        cfg = params_json(snakemake, "cfg")["features"]
        extract_image_set(snakemake.input.manifest, snakemake.wildcards.extractor, cfg, snakemake.output.features)

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
