"""Stage plot_evaluation: t-SNE, sample grid, category coverage, metric intervals, reward curves,
most novel / most redundant images (marsdiff.stages.plot_evaluation)."""

from pathlib import Path

from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        from threadpoolctl import threadpool_limits

        from marsdiff.stages.plot_evaluation import draw_evaluation_figures

        cfg = params_json(snakemake, "cfg")
        names = [m["name"] for m in cfg["models"]]
        inputs = snakemake.input
        with threadpool_limits(limits=max(1, int(snakemake.threads))):
            draw_evaluation_figures(
                eval_dir=Path(inputs.metrics).parent,
                models=cfg["models"],
                features=dict(zip(names, inputs.features)),
                samples={name: (csv, folder) for name, csv, folder in zip(names, inputs.samples, inputs.images)},
                reference_features=inputs.reference,
                manifest=inputs.manifest,
                extractor=cfg["extractor"],
                rewards=cfg["rewards"],
                run_metrics=list(inputs.run_metrics),
                plot_cfg=cfg["plots"],
                outputs=dict(snakemake.output.items()),
                resized_manifest=inputs.resized_manifest,
            )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
