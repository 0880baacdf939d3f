# Per-round recorded sampling and RL updates. Round 000 samples the base model; round r > 0
# samples the policy written by update_round for round r-1 (stage not built yet).
rule sample_round:
    """Sample one round with the recording DDIM sampler: chains, actions and log-probs."""
    input:
        unpack(round_policy_inputs),
        code=library_sources("diffusion", "io/trajectories.py", "data/images.py"),
    output:
        trajectories=RUNS_DIR / "{exp}" / "round_{round}" / "trajectories.h5",
        images=directory(RUNS_DIR / "{exp}" / "round_{round}" / "images"),
        samples=RUNS_DIR / "{exp}" / "round_{round}" / "samples.csv",
    wildcard_constraints:
        round=r"\d{3}",
        exp=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    params:
        cfg=stage_params(config, "sampling", "model"),
    log:
        LOGS / "runs" / "{exp}" / "round_{round}" / "sample_round.log",
    benchmark:
        BENCH / "runs" / "{exp}" / "round_{round}" / "sample_round.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime="60m",
        gpu=sampling_gpus(config),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/sample_round.py"
