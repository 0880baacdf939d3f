"""Stage evaluate: every model against the held-out reference split (marsdiff.stages.evaluate)."""

from pathlib import Path

from marsdiff.faults import kill_point
from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        from threadpoolctl import threadpool_limits

        from marsdiff.stages.evaluate import run_evaluation

        cfg = params_json(snakemake, "cfg")
        names = [m["name"] for m in cfg["models"]]
        kill_point("evaluate.start")
        with threadpool_limits(limits=max(1, int(snakemake.threads))):
            run_evaluation(
                manifest=snakemake.input.manifest,
                reference_features=snakemake.input.reference,
                generated=dict(zip(names, snakemake.input.features)),
                samples=dict(zip(names, snakemake.input.samples)),
                extractor=cfg["extractor"],
                metrics_cfg=cfg["metrics"],
                out_dir=Path(snakemake.output.metrics).parent,
            )
        kill_point("evaluate.done")

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
