# Scoring a round: the reference set at the generator's output size (matched resolution), its
# features, and per-round rewards. Generated and reference images must meet the encoder at one
# size (docs/rewards.md, "Matched resolution"): min(generator output size, reference crop size),
# resolved from the config alone (no torch) when the Snakefile is parsed.
from marsdiff.data.resolution import matched_size

SCORE_SIZE = matched_size(config)
SCORE_EXTRACTOR = extractor_names(config)[0]  # the reward's extractor, as validate_rewards uses
RESIZED_REFERENCE_DIR = REFERENCE_DIR / f"at_{SCORE_SIZE}px"
RESIZED_FEATURES = FEATURES_DIR / f"reference_{SCORE_SIZE}px" / f"{SCORE_EXTRACTOR}.npy"


# score_round's params: the reward extractor's part of ``features`` (other extractors' options
# are left out so editing them re-runs no round) and the reward section.
SCORE_FEATURES = {
    **{k: v for k, v in config["features"].items() if k in ("batch_size", "device", "cache_dir", SCORE_EXTRACTOR)},
    "extractors": [SCORE_EXTRACTOR],
}


rule resize_reference:
    """The reference set box-downsampled to the matched resolution, as the training set is."""
    input:
        manifest=REFERENCE_DIR / "manifest.csv",
        images=REFERENCE_DIR / "images",
    output:
        manifest=REFERENCE_DIR / "at_{size}px" / "manifest.csv",
        images=directory(REFERENCE_DIR / "at_{size}px" / "images"),
    params:
        code=code_version("data/resolution.py", "data/images.py", "data/manifest.py", "scripts/resize_reference.py"),
    log:
        LOGS / "resize_reference" / "at_{size}px.log",
    benchmark:
        BENCH / "resize_reference" / "at_{size}px.tsv"
    wildcard_constraints:
        size=r"[1-9]\d*",
    threads: 1
    resources:
        mem_mb=1000,
        runtime="10m",
        gpu=0,
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/resize_reference.py"


rule extract_resized_features:
    """Features of the resized reference set for one extractor (same content-keyed cache)."""
    input:
        manifest=REFERENCE_DIR / "at_{size}px" / "manifest.csv",
        images=REFERENCE_DIR / "at_{size}px" / "images",
    output:
        features=FEATURES_DIR / "reference_{size}px" / "{extractor}.npy",
        ids=FEATURES_DIR / "reference_{size}px" / "{extractor}.ids.txt",
        info=FEATURES_DIR / "reference_{size}px" / "{extractor}.json",
    params:
        cfg=stage_params(config, "features"),
        code=code_version(
            "features", "data/images.py", "data/manifest.py", "io/feature_files.py", "scripts/extract_features.py"
        ),
    log:
        LOGS / "extract_features" / "reference_{size}px_{extractor}.log",
    benchmark:
        BENCH / "extract_features" / "reference_{size}px_{extractor}.tsv"
    wildcard_constraints:
        size=r"[1-9]\d*",
        extractor="|".join(EXTRACTOR_CHOICES),
    threads: 2
    resources:
        mem_mb=6000,
        runtime="30m",
        gpu=int(config["features"].get("device") == "cuda"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        # the reference stage's adapter: same cache, same ids file, only the image set differs
        "../scripts/extract_features.py"


rule score_round:
    """One round's set reward and exact per-image credit: rewards.csv and reward_summary.json."""
    input:
        images=RUNS_DIR / "{exp}" / "round_{round}" / "images",
        samples=RUNS_DIR / "{exp}" / "round_{round}" / "samples.csv",
        features=RESIZED_FEATURES,
        ids=RESIZED_FEATURES.with_name(f"{SCORE_EXTRACTOR}.ids.txt"),
        info=RESIZED_FEATURES.with_name(f"{SCORE_EXTRACTOR}.json"),
        manifest=REFERENCE_DIR / "manifest.csv",
        validation=RESULTS / "validation" / "validation.json",
    output:
        rewards=RUNS_DIR / "{exp}" / "round_{round}" / "rewards.csv",
        summary=RUNS_DIR / "{exp}" / "round_{round}" / "reward_summary.json",
    params:
        # the experiment's reward override, once experiments exist, replaces config["reward"] here
        # (a lambda on wildcards.exp); score_round takes whatever reward section it is given
        cfg=stage_params({"features": SCORE_FEATURES, "reward": config["reward"]}, "features", "reward"),
        resolution=SCORE_SIZE,
        extractor=SCORE_EXTRACTOR,
        code=code_version(
            "rewards", "features", "data/images.py", "data/manifest.py", "data/resolution.py",
            "io/feature_files.py", "scripts/score_round.py",
        ),
    log:
        LOGS / "runs" / "{exp}" / "round_{round}" / "score_round.log",
    benchmark:
        BENCH / "runs" / "{exp}" / "round_{round}" / "score_round.tsv"
    wildcard_constraints:
        round=r"\d{3}",
        exp=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    threads: 2
    resources:
        mem_mb=4000,
        runtime="20m",
        gpu=int(config["features"].get("device") == "cuda"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/score_round.py"
