# Per-round recorded sampling and RL updates. Round 000 samples the base model; round r > 0
# samples the policy written by update_round for round r-1 (stage not built yet).
RUNS_DIR = RESULTS / "runs"
SAMPLING_BASE_MODEL = RESULTS / "models" / "base"


SAMPLING_BACKEND = (config.get("model") or {}).get("backend", "pixel")
# Round 000 samples the base model: the pixel model's files, or nothing for Stable Diffusion
# (its weights come from the HF cache or a local directory, outside the workflow).
BASE_POLICY_INPUTS = (
    {
        "meta": str(SAMPLING_BASE_MODEL / "marsdiff_model.json"),
        "unet": str(SAMPLING_BASE_MODEL / "unet"),
        "scheduler": str(SAMPLING_BASE_MODEL / "scheduler"),
    }
    if SAMPLING_BACKEND == "pixel"
    else {}
)


rule sample_round:
    """Sample one round with the recording DDIM sampler: chains, actions and log-probs."""
    input:
        # Round r > 0 samples the policy update_round wrote for round r-1.
        unpack(
            lambda wc: BASE_POLICY_INPUTS
            if wc.round == "000"
            else {"policy": str(RUNS_DIR / wc.exp / f"round_{int(wc.round) - 1:03d}" / "policy")}
        ),
        code=library_sources("diffusion"),
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
        # Stable Diffusion wants a GPU; the pixel model only when the config asks for CUDA.
        gpu=1 if SAMPLING_BACKEND == "stable_diffusion" or config["sampling"].get("device") == "cuda" else 0,
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/sample_round.py"
