"""Stage study_summary: comparisons.csv + every experiment's metrics.csv -> the study summary."""

from marsdiff.stage import run_stage


def main(snakemake):
    def body():
        from marsdiff.stage import params_json
        from marsdiff.study.summary import StudySettings, write_study_summary

        cfg = params_json(snakemake, "cfg")
        metrics = dict(zip(snakemake.params.experiments, snakemake.input.metrics))
        settings = StudySettings.declared(cfg["alpha"], cfg["margins"])
        write_study_summary(snakemake.input.comparisons, cfg["design"], metrics, snakemake.output.summary,
                            snakemake.output.seeds, snakemake.output.markdown, settings)

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
