"""Stage update_round: the RL update of one round into policy/ and metrics.json."""

import logging
from pathlib import Path

from marsdiff.faults import kill_point
from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        import torch

        from marsdiff.rl.distributed import launch, round_device
        from marsdiff.stages.update_round import update_round_stage

        # torch runs with the job's threads (the rule's, marsdiff.workflow.resources.THREADS,
        # or --set-threads): what Snakemake schedules is what the job uses
        threads = max(1, int(snakemake.threads))
        torch.set_num_threads(threads)
        logging.getLogger(__name__).info("torch threads: %d", torch.get_num_threads())
        # the round stage takes the config sections it reads; the experiment arrives resolved
        params = params_json(snakemake, "cfg")
        cfg = {"experiments": {snakemake.wildcards["exp"]: params["experiment"]}, "sampling": params["sampling"],
               "model": params["model"]}
        meta = getattr(snakemake.input, "meta", None)
        # sampling.processes > 1: data-parallel over that many processes (one GPU each on CUDA),
        # rank 0 writing the policy and metrics (marsdiff.rl.distributed, docs/rl.md "Multi-GPU").
        launch(
            update_round_stage, getattr(snakemake.resources, "processes", 1), device=round_device(cfg), threads=threads,
            args=(cfg,),
            kwargs=dict(
                experiment_name=snakemake.wildcards["exp"],
                round_index=int(snakemake.wildcards["round"]),
                model_dir=str(Path(meta).parent) if meta else None,
                previous_policy=getattr(snakemake.input, "policy", None),
                trajectories=snakemake.input.trajectories,
                rewards_csv=snakemake.input.rewards,
                reward_summary=snakemake.input.summary,
                out_policy=snakemake.output.policy,
                metrics_json=snakemake.output.metrics,
                previous_metrics=getattr(snakemake.input, "policy_metrics", None),
            ),
        )
        kill_point("update.done")

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
