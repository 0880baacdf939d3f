"""Stage plot_experiment: an experiment's per-round metrics.json files -> metrics.csv + reward curve."""

from marsdiff.stage import run_stage


def main(snakemake):
    def body():
        from marsdiff.rl.curves import write_experiment_curves

        write_experiment_curves(list(snakemake.input), snakemake.output.table, snakemake.output.curve)

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
