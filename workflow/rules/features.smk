rule extract_features:
    """Feature vectors of the reference set for one extractor (content-keyed cache)."""
    input:
        manifest=REFERENCE_DIR / "manifest.csv",
        images=REFERENCE_DIR / "images",
        code=library_sources("features", "data"),
    output:
        features=FEATURES_DIR / "reference" / "{extractor}.npy",
        ids=FEATURES_DIR / "reference" / "{extractor}.ids.txt",
    params:
        cfg=stage_params(config, "features"),
    log:
        LOGS / "extract_features" / "reference_{extractor}.log",
    benchmark:
        BENCH / "extract_features" / "reference_{extractor}.tsv"
    wildcard_constraints:
        extractor="|".join(EXTRACTOR_CHOICES),
    threads: 2
    resources:
        mem_mb=6000,
        runtime="30m",
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/extract_features.py"
