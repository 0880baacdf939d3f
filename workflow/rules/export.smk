# Labelled synthetic datasets (README "Exporting a dataset"): the optional target
# `export_datasets` draws export.images images of each model in export.models into
# results/datasets/<model>/, as `marsdiff sample` does. Not in `all`: a dataset is a product a
# user asks for, not a step of the study. The models are the evaluation's (EVAL_MODEL), so each
# card can quote its model's evaluation figures (marsdiff.workflow.plan checks export.models).


rule export_datasets:
    """Every dataset export.models names."""
    localrule: True
    input:
        targets.datasets(LAYOUT, PLAN),


rule export_dataset:
    """One model's labelled images: images/, metadata.csv (imagefolder) and a dataset card."""
    input:
        unpack(evaluation_sample_inputs),
        reference=REFERENCE_DIR / "images.csv",
        metrics=EVAL_DIR / "metrics.csv",
    output:
        directory(LAYOUT.datasets / "{model}"),
    params:
        # the dataset's labels carry the whole config's digest; the batch size is read untracked
        cfg=param_text(params.export_dataset(config)),
        code=code_version("export_dataset"),
    log:
        LOGS / "export" / "{model}.log",
    benchmark:
        BENCH / "export" / "{model}.tsv"
    threads: resources.THREADS["export_dataset"]
    resources:
        mem_mb=4000,
        runtime="60m",
        gpu=gpus("export_dataset"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/export_dataset.py"
