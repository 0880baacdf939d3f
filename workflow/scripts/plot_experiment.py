"""Stage plot_experiment: an experiment's per-round metrics.json files (and, with a paired base,
both experiments' rewards.csv and the base's reward_summary.json per round) -> metrics.csv with
the paired improvement + the reward-curve figure."""

from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        from marsdiff.stages.plot_experiment import write_experiment_curves

        inputs = snakemake.input
        cfg = params_json(snakemake, "cfg")
        paired = cfg["paired_base"] or None
        write_experiment_curves(
            list(inputs.metrics), snakemake.output.table, snakemake.output.curve, paired_base=paired,
            arm_rewards=list(inputs.rewards) if paired else [],
            base_rewards=list(inputs.base_rewards) if paired else [],
            base_summaries=list(inputs.base_summaries) if paired else [],
            control=cfg["control"],
        )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
