rule prepare_reference:
    """Crop every labelled crater (or read an image-folder tree) into the reference set."""
    input:
        code=library_sources("data"),
    output:
        manifest=REFERENCE_DIR / "manifest.csv",
        images=directory(REFERENCE_DIR / "images"),
        contact_sheet=report(
            REFERENCE_DIR / "contact_sheet.png",
            caption="../report/reference_contact_sheet.rst",
            category="1. Reference set",
        ),
    params:
        cfg=stage_params(config, "reference"),
    log:
        LOGS / "prepare_reference.log",
    benchmark:
        BENCH / "prepare_reference.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime="10m",
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/prepare_reference.py"
