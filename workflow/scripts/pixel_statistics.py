"""Stage pixel_statistics: brightness spread and contrast of every evaluated model against the
held-out crops (marsdiff.stages.pixel_statistics)."""

from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        from marsdiff.stages.pixel_statistics import run_pixel_statistics

        names = params_json(snakemake, "models")
        run_pixel_statistics(
            snakemake.input.manifest,
            {name: pair for name, pair in zip(names, zip(snakemake.input.samples, snakemake.input.images))},
            int(snakemake.params.resolution),
            params_json(snakemake, "cfg"),
            snakemake.output.table,
        )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
