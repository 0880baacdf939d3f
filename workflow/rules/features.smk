rule extract_features:
    """Feature vectors of the reference set for one extractor (content-keyed cache)."""
    input:
        # images.csv lists every image's sha256: it carries changes of the folder, whose own
        # time stamp is ignored (a copied project keeps its features).
        manifest=REFERENCE_DIR / "images.csv",
        images=directory_input(REFERENCE_DIR / "images"),
    output:
        features=FEATURES_DIR / "reference" / "{extractor}.npy",
        ids=FEATURES_DIR / "reference" / "{extractor}.ids.txt",
        info=FEATURES_DIR / "reference" / "{extractor}.json",
    params:
        # batch size, device and cache folder change no feature value: the script reads them untracked
        extractor=extractor_param,
        code=code_version("extract_features"),
    log:
        LOGS / "extract_features" / "reference_{extractor}.log",
    benchmark:
        BENCH / "extract_features" / "reference_{extractor}.tsv"
    threads: resources.THREADS["extract_features"]
    resources:
        mem_mb=6000,
        runtime="30m",
        gpu=gpus("extract_features"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/extract_features.py"
