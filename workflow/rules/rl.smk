# The RL round loop (docs/rl.md): round r samples with the policy of round r-1 (round 000: the
# experiment's initial policy on the base model), score_round (score.smk) rewards it, and
# update_round turns it into policy r. Only configured experiment names match {exp} (the
# Snakefile's wildcard_constraints).


rule sample_round:
    """Sample one round with the recording sampler: chains, plan actions and every log-prob."""
    input:
        unpack(round_policy_inputs),
    output:
        trajectories=RUNS_DIR / "{exp}" / "round_{round}" / "trajectories.h5",
        images=directory(RUNS_DIR / "{exp}" / "round_{round}" / "images"),
        samples=RUNS_DIR / "{exp}" / "round_{round}" / "samples.csv",
    params:
        # the batch size changes no image: the script reads it untracked
        cfg=lambda wildcards: param_text(params.sample_round(config, wildcards.exp)),
        code=code_version("sample_round"),
    log:
        LOGS / "runs" / "{exp}" / "round_{round}" / "sample_round.log",
    benchmark:
        BENCH / "runs" / "{exp}" / "round_{round}" / "sample_round.tsv"
    group:
        round_group
    threads: resources.THREADS["sample_round"]
    resources:
        mem_mb=4000,
        runtime="60m",
        gpu=gpus("sample_round"),
        processes=resources.round_processes(config),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/sample_round.py"


rule update_round:
    """One PPO/TRPO update on a scored round: policy r, optimiser + RNG state, metrics.json."""
    input:
        unpack(round_policy_inputs),
        trajectories=RUNS_DIR / "{exp}" / "round_{round}" / "trajectories.h5",
        rewards=RUNS_DIR / "{exp}" / "round_{round}" / "rewards.csv",
        summary=RUNS_DIR / "{exp}" / "round_{round}" / "reward_summary.json",
    output:
        policy=directory(RUNS_DIR / "{exp}" / "round_{round}" / "policy"),
        metrics=RUNS_DIR / "{exp}" / "round_{round}" / "metrics.json",
    params:
        cfg=lambda wildcards: param_text(params.update_round(config, wildcards.exp)),
        code=update_round_code,
    log:
        LOGS / "runs" / "{exp}" / "round_{round}" / "update_round.log",
    benchmark:
        BENCH / "runs" / "{exp}" / "round_{round}" / "update_round.tsv"
    group:
        round_group
    threads: resources.THREADS["update_round"]
    resources:
        mem_mb=6000,
        runtime="2h",
        gpu=gpus("update_round"),
        processes=resources.round_processes(config),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/update_round.py"


rule plot_experiment:
    """An experiment's metrics across rounds: metrics.csv (with the paired improvement over the
    A/A base on the same seeds, when there is one) and the reward curve."""
    input:
        # curve_inputs, paired_base, experiment_control: marsdiff.study.pairing (imported in study.smk)
        unpack(lambda wildcards: curve_inputs(config, wildcards.exp, RUNS_DIR)),
    output:
        table=RUNS_DIR / "{exp}" / "metrics.csv",
        curve=report(
            RUNS_DIR / "{exp}" / "reward_curve.png",
            caption="../report/reward_curve.rst",
            category="4. RL",
            labels={"experiment": "{exp}", "figure": "reward curve"},
        ),
    params:
        cfg=lambda wildcards: param_text(params.plot_experiment(config, wildcards.exp)),
        code=code_version("plot_experiment"),
    log:
        LOGS / "runs" / "{exp}" / "plot_experiment.log",
    benchmark:
        BENCH / "runs" / "{exp}" / "plot_experiment.tsv"
    # small and bounded by the reference set or a few tables: a failure here repeats, so the
    # cluster profile's retry (for jobs killed for memory or time) is off for it
    retries: 0
    threads: 1
    resources:
        mem_mb=1000,
        runtime="5m",
        gpu=0,
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/plot_experiment.py"
