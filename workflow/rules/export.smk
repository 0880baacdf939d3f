# Labelled synthetic datasets (README "Exporting a dataset"): the optional target
# `export_datasets` draws export.images images of each model in export.models into
# results/datasets/<model>/, as `marsdiff sample` does. Not in `all`: a dataset is a product a
# user asks for, not a step of the study. The models are the evaluation's (EVAL_MODEL), so each
# card can quote its model's evaluation figures (common.smk: EXPORT_MODELS).


rule export_datasets:
    """Every dataset export.models names."""
    localrule: True
    input:
        [DATASETS_DIR / name for name in EXPORT_MODELS],


rule export_dataset:
    """One model's labelled images: images/, metadata.csv (imagefolder) and a dataset card."""
    input:
        unpack(evaluation_sample_inputs),
        reference=REFERENCE_DIR / "images.csv",
        metrics=EVAL_DIR / "metrics.csv",
    output:
        directory(DATASETS_DIR / "{model}"),
    params:
        # the dataset's labels carry the whole config's digest
        cfg=param_text(config),
        batch_size=untracked(config["sampling"]["batch_size"]),
        code=code_version("export/dataset.py", "scripts/export_dataset.py"),
    log:
        LOGS / "export" / "{model}.log",
    benchmark:
        BENCH / "export" / "{model}.tsv"
    wildcard_constraints:
        model=EVAL_MODEL_PATTERN,
    threads: 2
    resources:
        mem_mb=4000,
        runtime="60m",
        gpu=sampling_gpus(config),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/export_dataset.py"
