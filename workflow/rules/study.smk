# The multi-seed study (config/study.yaml, docs/rl.md "Study"): arms and controls are experiments
# named <arm>_s<k> (marsdiff.study.pairing), evaluated on every evaluation stream against the
# frozen knob and the base (evaluate.smk: comparisons.csv). study_summary aggregates the paired
# differences over training seeds. Not in `all`: run the target `study` (docs/rl.md).
# Also the helpers of plot_experiment (rl.smk): each experiment's paired base on the same seeds.
STUDY_DIR = RESULTS / "study"


def paired_base_of(exp):
    from marsdiff.study.pairing import paired_base

    return paired_base(config["experiments"], exp, config["sampling"])


def experiment_control(exp):
    from marsdiff.study.pairing import control_of
    from marsdiff.rl.experiments import experiment_settings

    return control_of(experiment_settings(config["experiments"], exp, config["sampling"]))


def curve_inputs(exp):
    """plot_experiment's inputs: every round's metrics.json and, with a paired base, both
    experiments' rewards.csv and the base's reward_summary.json of the same rounds."""
    rounds = experiment_rounds(config, exp)
    inputs = {"metrics": [str(RUNS_DIR / exp / f"round_{r}" / "metrics.json") for r in rounds]}
    base = paired_base_of(exp)
    if base:
        inputs["rewards"] = [str(RUNS_DIR / exp / f"round_{r}" / "rewards.csv") for r in rounds]
        inputs["base_rewards"] = [str(RUNS_DIR / base / f"round_{r}" / "rewards.csv") for r in rounds]
        inputs["base_summaries"] = [str(RUNS_DIR / base / f"round_{r}" / "reward_summary.json") for r in rounds]
    return inputs


def study_params(cfg):
    """What the summary reads of the config: the design (arm, seed, control of each experiment)
    and the evaluation's declared alpha and non-inferiority margins."""
    from marsdiff.study.pairing import study_design

    endpoints = (cfg.get("evaluation") or {}).get("endpoints") or {}
    return param_text({
        "design": study_design(cfg["experiments"], cfg["sampling"]),
        "alpha": endpoints.get("alpha", 0.05),
        "margins": endpoints.get("non_inferiority", {"precision": 0.03}),
    })


rule study:
    """The study's summary (markdown + CSV) and everything it needs: every experiment's rounds
    and curves, the evaluation streams and their comparisons."""
    localrule: True
    input:
        STUDY_DIR / "summary.md",


rule study_summary:
    """Paired differences over training seeds per arm and primary endpoint, Holm, non-inferiority,
    one verdict line per arm, and the controls (A/A vs base, arm vs shuffled, reward drift)."""
    # seconds of pandas on small tables: on the head node, no cluster job
    localrule: True
    input:
        comparisons=EVAL_DIR / "comparisons.csv",
        metrics=[RUNS_DIR / exp / "metrics.csv" for exp in experiment_names(config)],
    output:
        summary=STUDY_DIR / "summary.csv",
        seeds=STUDY_DIR / "seeds.csv",
        markdown=STUDY_DIR / "summary.md",
    params:
        cfg=study_params(config),
        experiments=experiment_names(config),
        code=code_version("study/summary.py", "scripts/study_summary.py"),
    log:
        LOGS / "study" / "study_summary.log",
    benchmark:
        BENCH / "study" / "study_summary.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime="5m",
        gpu=0,
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/study_summary.py"
