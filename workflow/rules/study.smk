# The multi-seed study (config/study.yaml, docs/rl.md "Study"): arms and controls are experiments
# named <arm>_s<k> (marsdiff.study.pairing), evaluated on every evaluation stream against the
# frozen knob and the base (evaluate.smk: comparisons.csv). study_summary aggregates the paired
# differences over training seeds. Not in `all`: run the target `study` (docs/rl.md).
# The import below also serves plot_experiment (rl.smk): its inputs, with the paired base's.
from marsdiff.study.pairing import curve_inputs

STUDY_DIR = LAYOUT.study


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
        metrics=[RUNS_DIR / exp / "metrics.csv" for exp in PLAN.experiments],
    output:
        summary=STUDY_DIR / "summary.csv",
        seeds=STUDY_DIR / "seeds.csv",
        markdown=STUDY_DIR / "summary.md",
    params:
        cfg=param_text(params.study_summary(config)),
        experiments=list(PLAN.experiments),
        code=code_version("study_summary"),
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
