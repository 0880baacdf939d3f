"""Stage report_summary: summary.md (+ HTML for the report) and comparison.csv (marsdiff.stages.report_summary)."""

from pathlib import Path

from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        from marsdiff.stages.report_summary import write_report_summary

        cfg = params_json(snakemake, "cfg")
        write_report_summary(
            eval_dir=Path(snakemake.input.metrics).parent,
            models=cfg["models"],
            metrics_cfg=cfg["metrics"],
            n_images=cfg["images"],
            steps=cfg["steps"],
            summary_md=snakemake.output.summary,
            summary_html=snakemake.output.html,
            comparison_csv=snakemake.output.comparison,
            pixel_csv=snakemake.input.pixels,
            landing_rst=snakemake.output.landing,
            intro=Path(snakemake.input.intro).read_text(),
            stream_dirs={s: Path(m).parent for s, m in zip(cfg["streams"], snakemake.input.stream_metrics)},
            selection_json=snakemake.input.selection,
            endpoints=cfg["endpoints"],
            comparisons_csv=snakemake.output.comparisons,
        )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
