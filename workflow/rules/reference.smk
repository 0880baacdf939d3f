# The reference set in two stages (src/marsdiff/data/reference.py; their file handling in
# src/marsdiff/stages/prepare_reference.py and categorize_reference.py): prepare_reference writes the
# images and images.csv (sizes and split: all that training reads); categorize_reference adds
# the lighting and contrast categories into manifest.csv, so changing those retrains nothing.
#
# The user's data (tile + labels, or folder + metadata CSV) is checked and digested when the
# Snakefile is parsed: bad input stops the run with one line before Snakemake deletes any old
# output, and prepare_reference re-runs when the data's content changes, never because files
# were touched, copied or moved (docs/workflow.md, "Re-run policy").
REFERENCE_DATA = stop_on_user_error(reference_data_version, config)


rule prepare_reference:
    """Crop every labelled crater (or read an image-folder tree) into the reference images."""
    output:
        images=directory(REFERENCE_DIR / "images"),
        index=REFERENCE_DIR / "images.csv",
        contact_sheet=report(
            REFERENCE_DIR / "contact_sheet.png",
            caption="../report/reference_contact_sheet.rst",
            category="1. Reference set",
        ),
    params:
        # the data's locations reach the script untracked (its content is `data`)
        cfg=param_text(params.prepare_reference(config)),
        data=REFERENCE_DATA,
        code=code_version("prepare_reference"),
    log:
        LOGS / "prepare_reference.log",
    benchmark:
        BENCH / "prepare_reference.tsv"
    # small and bounded by the reference set or a few tables: a failure here repeats, so the
    # cluster profile's retry (for jobs killed for memory or time) is off for it
    retries: 0
    threads: 1
    resources:
        mem_mb=2000,
        runtime="10m",
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/prepare_reference.py"


rule categorize_reference:
    """manifest.csv: images.csv plus lighting and contrast categories (seconds; runs locally)."""
    localrule: True
    input:
        index=REFERENCE_DIR / "images.csv",
    output:
        manifest=REFERENCE_DIR / "manifest.csv",
    params:
        cfg=param_text(params.categorize_reference(config)),
        code=code_version("categorize_reference"),
    log:
        LOGS / "categorize_reference.log",
    benchmark:
        BENCH / "categorize_reference.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime="5m",
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/categorize_reference.py"
