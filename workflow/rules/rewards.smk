# Diversity rewards validated on ladders of increasing diversity (reference train split only).
# The extractor rewards use is the first of features.extractors; its features are an input
# (path), so switching extractor re-runs this rule, and the reward section is its only param.


def reward_extractor():
    return extractor_names(config)[0]


def validation_ladders():
    return list(config["reward"]["validation"]["ladders"])


rule validate_rewards:
    """Every configured reward on diversity ladders: ladder.csv, one plot per ladder, validation.json."""
    input:
        features=lambda wc: FEATURES_DIR / "reference" / f"{reward_extractor()}.npy",
        ids=lambda wc: FEATURES_DIR / "reference" / f"{reward_extractor()}.ids.txt",
        manifest=REFERENCE_DIR / "manifest.csv",
        code=library_sources("rewards"),
    output:
        ladder=RESULTS / "validation" / "ladder.csv",
        validation=RESULTS / "validation" / "validation.json",
        plots=report(
            expand(str(RESULTS / "validation" / "ladder_{name}.png"), name=validation_ladders()),
            category="Reward validation",
        ),
    params:
        cfg=stage_params(config, "reward"),
        ladders=validation_ladders(),
        extractor=reward_extractor(),
    log:
        LOGS / "validate_rewards.log",
    benchmark:
        BENCH / "validate_rewards.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime="20m",
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/validate_rewards.py"
