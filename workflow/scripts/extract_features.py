"""Stage extract_features: one extractor's features of the reference set, via the cache."""

from marsdiff.stage import run_stage, untracked
from marsdiff.stages.extract_features import extract_image_set


def main(snakemake):
    def body():
        import torch

        torch.set_num_threads(max(1, int(snakemake.threads)))
        # the extractor's own options are the tracked `extractor` param's, taken from this section
        cfg = untracked(snakemake, "features")
        extract_image_set(snakemake.input.manifest, snakemake.wildcards.extractor, cfg, snakemake.output.features)

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
