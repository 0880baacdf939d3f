# The RL round loop (docs/rl.md): round r samples with the policy of round r-1 (round 000: the
# experiment's initial policy on the base model), score_round (score.smk) rewards it, and
# update_round turns it into policy r. Only configured experiment names match {exp}.
EXPERIMENT_PATTERN = experiment_pattern(config)
RL_CODE = ("rl", "diffusion", "io/trajectories.py")


def round_processes(cfg):
    """sampling.processes: the processes of a sample_round / update_round job (docs/rl.md,
    "Multi-GPU"). A resource, not a param: the results do not depend on it, so it re-runs nothing."""
    return int(cfg["sampling"].get("processes", 1))


def round_gpus(cfg):
    """One GPU per process where the rounds run on CUDA, none on the CPU."""
    return sampling_gpus(cfg) * round_processes(cfg)


rule sample_round:
    """Sample one round with the recording sampler: chains, plan actions and every log-prob."""
    input:
        unpack(round_policy_inputs),
    output:
        trajectories=RUNS_DIR / "{exp}" / "round_{round}" / "trajectories.h5",
        images=directory(RUNS_DIR / "{exp}" / "round_{round}" / "images"),
        samples=RUNS_DIR / "{exp}" / "round_{round}" / "samples.csv",
    wildcard_constraints:
        round=r"\d{3}",
        exp=EXPERIMENT_PATTERN,
    params:
        cfg=lambda wildcards: rl_params(config, wildcards.exp, "sample"),
        code=code_version(*RL_CODE, "scripts/sample_round.py"),
    log:
        LOGS / "runs" / "{exp}" / "round_{round}" / "sample_round.log",
    benchmark:
        BENCH / "runs" / "{exp}" / "round_{round}" / "sample_round.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime="60m",
        gpu=round_gpus(config),
        processes=round_processes(config),
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
    wildcard_constraints:
        round=r"\d{3}",
        exp=EXPERIMENT_PATTERN,
    params:
        cfg=lambda wildcards: rl_params(config, wildcards.exp, "update"),
        code=code_version(*RL_CODE, "scripts/update_round.py"),
    log:
        LOGS / "runs" / "{exp}" / "round_{round}" / "update_round.log",
    benchmark:
        BENCH / "runs" / "{exp}" / "round_{round}" / "update_round.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime="2h",
        gpu=round_gpus(config),
        processes=round_processes(config),
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
    wildcard_constraints:
        exp=EXPERIMENT_PATTERN,
    params:
        paired_base=lambda wildcards: paired_base(config["experiments"], wildcards.exp, config["sampling"]) or "",
        control=lambda wildcards: experiment_control(config, wildcards.exp),
        code=code_version("rl/curves.py", "scripts/plot_experiment.py"),
    log:
        LOGS / "runs" / "{exp}" / "plot_experiment.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime="5m",
        gpu=0,
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/plot_experiment.py"
