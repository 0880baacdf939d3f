"""Stage update_round: the RL update of one round into policy/ and metrics.json."""

from pathlib import Path

from marsdiff.faults import kill_point
from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        import torch

        from marsdiff.rl.rounds import update_round_stage

        torch.set_num_threads(max(1, int(snakemake.threads)))
        meta = getattr(snakemake.input, "meta", None)
        # the round stage takes the config sections it reads; the experiment arrives resolved
        cfg = params_json(snakemake, "cfg")
        update_round_stage(
            {"experiments": {snakemake.wildcards["exp"]: cfg["experiment"]}, "sampling": cfg["sampling"],
             "model": cfg["model"]},
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
        )
        kill_point("update.done")

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
