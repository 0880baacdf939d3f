# Scoring a round: the reference set at the generator's output size (matched resolution), its
# features, and per-round rewards. Generated and reference images must meet the encoder at one
# size (docs/rewards.md, "Scoring a round ... at matched resolution"): min(generator output size,
# reference crop size), resolved from the config alone (no torch) when the Snakefile is parsed
# (common.smk: SCORE_SIZE; SCORE_EXTRACTOR, the reward's extractor, is the first of features.extractors).


rule resize_reference:
    """The reference images box-downsampled to the matched resolution, as the training set is."""
    input:
        # images.csv (ids, sizes, split, each image's sha256) is what training reads, and it
        # carries the folder's changes; the folder's own time stamp is ignored
        index=REFERENCE_DIR / "images.csv",
        images=directory_input(REFERENCE_DIR / "images"),
    output:
        manifest=REFERENCE_DIR / "at_{size}px" / "manifest.csv",
        images=directory(REFERENCE_DIR / "at_{size}px" / "images"),
    params:
        # the size is the path's wildcard; nothing else in the config changes these pixels
        code=code_version("resize_reference"),
    log:
        LOGS / "resize_reference" / "at_{size}px.log",
    benchmark:
        BENCH / "resize_reference" / "at_{size}px.tsv"
    # small and bounded by the reference set or a few tables: a failure here repeats, so the
    # cluster profile's retry (for jobs killed for memory or time) is off for it
    retries: 0
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
        # the resized manifest lists the sha256 of every resized image: it carries the folder
        manifest=REFERENCE_DIR / "at_{size}px" / "manifest.csv",
        images=directory_input(REFERENCE_DIR / "at_{size}px" / "images"),
    output:
        features=FEATURES_DIR / "reference_{size}px" / "{extractor}.npy",
        ids=FEATURES_DIR / "reference_{size}px" / "{extractor}.ids.txt",
        info=FEATURES_DIR / "reference_{size}px" / "{extractor}.json",
    params:
        # batch size, device and cache folder change no feature value: the script reads them untracked
        extractor=extractor_param,
        code=code_version("extract_resized_features"),
    log:
        LOGS / "extract_features" / "reference_{size}px_{extractor}.log",
    benchmark:
        BENCH / "extract_features" / "reference_{size}px_{extractor}.tsv"
    threads: resources.THREADS["extract_resized_features"]
    resources:
        mem_mb=6000,
        runtime="30m",
        gpu=gpus("extract_resized_features"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        # the reference stage's adapter: same cache, same feature-file contract
        "../scripts/extract_features.py"


rule score_round:
    """One round's set reward and exact per-image credit: rewards.csv and reward_summary.json."""
    input:
        # samples.csv is rewritten with the images (same seeds, same images); the folder's time
        # stamp is ignored
        images=directory_input(RUNS_DIR / "{exp}" / "round_{round}" / "images"),
        samples=RUNS_DIR / "{exp}" / "round_{round}" / "samples.csv",
        features=RESIZED_FEATURES / f"{SCORE_EXTRACTOR}.npy",
        ids=RESIZED_FEATURES / f"{SCORE_EXTRACTOR}.ids.txt",
        info=RESIZED_FEATURES / f"{SCORE_EXTRACTOR}.json",
        # the split column: the reward sees train rows only
        index=REFERENCE_DIR / "images.csv",
        validation=RESULTS / "validation" / "validation.json",
        # earlier rounds' features (the reward pool); their ids/json are written with them
        pool=pool_inputs,
    output:
        rewards=RUNS_DIR / "{exp}" / "round_{round}" / "rewards.csv",
        summary=RUNS_DIR / "{exp}" / "round_{round}" / "reward_summary.json",
        # the round's features through the feature-file contract: the next rounds' pool
        features=RUNS_DIR / "{exp}" / "round_{round}" / "features.npy",
        feature_ids=RUNS_DIR / "{exp}" / "round_{round}" / "features.ids.txt",
        feature_info=RUNS_DIR / "{exp}" / "round_{round}" / "features.json",
    params:
        # batch size, device and cache folder change no reward: the script reads them untracked
        reward=lambda wildcards: param_text(params.score_round(PLAN, wildcards.exp)),
        extractor=EXTRACTOR_PARAMS[SCORE_EXTRACTOR],
        resolution=SCORE_SIZE,
        code=code_version("score_round"),
    log:
        LOGS / "runs" / "{exp}" / "round_{round}" / "score_round.log",
    benchmark:
        BENCH / "runs" / "{exp}" / "round_{round}" / "score_round.tsv"
    group:
        round_group
    threads: resources.THREADS["score_round"]
    resources:
        mem_mb=4000,
        runtime="20m",
        gpu=gpus("score_round"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/score_round.py"
