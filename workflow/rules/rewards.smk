# Diversity rewards validated on ladders of increasing diversity (reference train split only).
# The extractor rewards use is the first of features.extractors; its features are an input
# (path), so switching extractor re-runs this rule, and the reward section is its only param.


rule validate_rewards:
    """Every configured reward on diversity ladders: ladder.csv, one plot per ladder, validation.json."""
    input:
        features=FEATURES_DIR / "reference" / f"{SCORE_EXTRACTOR}.npy",
        ids=FEATURES_DIR / "reference" / f"{SCORE_EXTRACTOR}.ids.txt",
        info=FEATURES_DIR / "reference" / f"{SCORE_EXTRACTOR}.json",
        manifest=REFERENCE_DIR / "manifest.csv",
    output:
        ladder=RESULTS / "validation" / "ladder.csv",
        validation=RESULTS / "validation" / "validation.json",
        rho_plot=report(
            RESULTS / "validation" / "ladder_rho.png",
            caption="../report/reward_ladders.rst",
            category="2. Reward validation",
        ),
        plots=report(
            expand(
                str(RESULTS / "validation" / "ladder_{name}.png"),
                name=config["reward"]["validation"]["ladders"],
            ),
            caption="../report/reward_ladders.rst",
            category="2. Reward validation",
        ),
    params:
        cfg=param_text(params.validate_rewards(config)),
        ladders=list(config["reward"]["validation"]["ladders"]),
        extractor=SCORE_EXTRACTOR,
        code=code_version("validate_rewards"),
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
