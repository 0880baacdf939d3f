"""Stage resize_reference: the reference set at the matched resolution (results/reference/at_{size}px/)."""

from pathlib import Path

from marsdiff.stage import run_stage
from marsdiff.stages.resize_reference import write_resized_reference


def main(snakemake):
    def body():
        # The size is the path's wildcard: the output names what it holds, so no param is needed.
        write_resized_reference(
            snakemake.input.index, Path(snakemake.output.manifest).parent, int(snakemake.wildcards["size"])
        )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
