"""Stage sample_round: one round of an experiment into trajectories.h5, images/, samples.csv."""

import logging
from pathlib import Path

from marsdiff.faults import kill_point
from marsdiff.stage import params_json, run_stage, untracked


def stage_config(snakemake):
    """The sections the round stage reads: the tracked experiment, sampling setup and backend,
    with the untracked sampling batch size (it changes no image)."""
    cfg = params_json(snakemake, "cfg")
    sampling = {**cfg["sampling"], "batch_size": untracked(snakemake, "sampling.batch_size")}
    return {"experiments": {snakemake.wildcards["exp"]: cfg["experiment"]}, "sampling": sampling, "model": cfg["model"]}


def main(snakemake):
    def body():
        # Imported inside the body so a missing package is reported like any other user error.
        import torch

        from marsdiff.rl.distributed import launch, round_device
        from marsdiff.stages.sample_round import sample_round_stage

        # torch runs with the job's threads (the rule's, marsdiff.workflow.resources.THREADS,
        # or --set-threads): what Snakemake schedules is what the job uses
        threads = max(1, int(snakemake.threads))
        torch.set_num_threads(threads)
        logging.getLogger(__name__).info("torch threads: %d", torch.get_num_threads())
        cfg = stage_config(snakemake)
        meta = getattr(snakemake.input, "meta", None)
        policy = getattr(snakemake.input, "policy", None)
        kill_point("sample.start")
        # sampling.processes > 1: the stage runs in that many processes (one GPU each on CUDA),
        # rank 0 writing the outputs (marsdiff.rl.distributed, docs/rl.md "Multi-GPU").
        launch(
            sample_round_stage, getattr(snakemake.resources, "processes", 1), device=round_device(cfg), threads=threads,
            args=(cfg,),
            kwargs=dict(
                experiment_name=snakemake.wildcards["exp"],
                round_index=int(snakemake.wildcards["round"]),
                model_dir=str(Path(meta).parent) if meta else None,
                previous_policy=policy,
                out_dir=Path(snakemake.output.trajectories).parent,
            ),
        )
        kill_point("sample.done")

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
