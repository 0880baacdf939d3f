# Base diffusion model: pretrain_base trains it, preview_base draws its sample grid (so grid
# settings never retrain it); recorded sampling lives in rl.smk. The model directory contract
# (unet/, scheduler/, marsdiff_model.json) is documented in src/marsdiff/diffusion/pixel.py and
# docs/base_model.md.


rule pretrain_base:
    """Train the class-conditional pixel-space UNet on the reference train split (or install the
    shipped model when it was trained from this very config, train split and code)."""
    input:
        # training reads ids, paths, size categories and the split: images.csv, not manifest.csv
        index=REFERENCE_DIR / "images.csv",
        images=directory_input(REFERENCE_DIR / "images"),
    output:
        unet=directory(BASE_MODEL_DIR / "unet"),
        scheduler=directory(BASE_MODEL_DIR / "scheduler"),
        meta=BASE_MODEL_DIR / "marsdiff_model.json",
        loss=BASE_MODEL_DIR / "loss.csv",
    params:
        # the preset's name and the log cadence change no weight: the script reads them untracked
        cfg=param_text(params.pretrain_base(config)),
        # a new shipped checkpoint re-runs the rule where it may be installed
        shipped=params.shipped_checkpoint(config, LAYOUT.shipped_provenance),
        code=code_version("pretrain_base"),
        # the digest the shipped model's provenance records (covered by `code` already)
        training_code=code.shipped_training_code(LAYOUT),
    log:
        LOGS / "pretrain_base.log",
    benchmark:
        BENCH / "pretrain_base.tsv"
    threads: resources.THREADS["pretrain_base"]
    resources:
        mem_mb=4000,
        runtime="60m",
        # Ask the cluster for a GPU only when the config wants one (e.g. preset 'large').
        gpu=gpus("pretrain_base"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/pretrain_base.py"


rule preview_base:
    """samples.png: generated samples per size class beside real train crops."""
    input:
        # marsdiff_model.json is rewritten by every training: it carries changes of the weights
        meta=BASE_MODEL_DIR / "marsdiff_model.json",
        unet=directory_input(BASE_MODEL_DIR / "unet"),
        scheduler=directory_input(BASE_MODEL_DIR / "scheduler"),
        index=REFERENCE_DIR / "images.csv",
        images=directory_input(REFERENCE_DIR / "images"),
    output:
        samples=report(
            BASE_MODEL_DIR / "samples.png",
            caption="../report/base_samples.rst",
            category="3. Base model",
        ),
    params:
        # the device reaches the script untracked
        cfg=param_text(params.preview_base(config)),
        code=code_version("preview_base"),
    log:
        LOGS / "preview_base.log",
    benchmark:
        BENCH / "preview_base.tsv"
    threads: resources.THREADS["preview_base"]
    resources:
        mem_mb=4000,
        runtime="20m",
        gpu=gpus("preview_base"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/preview_base.py"
