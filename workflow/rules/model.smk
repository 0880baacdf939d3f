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
        cfg=pretrain_params(config),
        settings=untracked(pretrain_settings(config)),
        # a new shipped checkpoint re-runs the rule where it may be installed
        shipped=shipped_checkpoint_version(config),
        code=code_version("scripts/pretrain_base.py"),
        # the digest the shipped model's provenance records (already covered by `code`)
        training_code=untracked(code_version(*SHIPPED_TRAINING_CODE_ROOTS)),
    log:
        LOGS / "pretrain_base.log",
    benchmark:
        BENCH / "pretrain_base.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime="60m",
        # Ask the cluster for a GPU only when the config wants one (e.g. preset 'large').
        gpu=int(config["model"]["pixel"]["device"] == "cuda"),
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
        cfg=preview_params(config),
        device=untracked(config["model"]["pixel"]["device"]),
        code=code_version("scripts/preview_base.py"),
    log:
        LOGS / "preview_base.log",
    benchmark:
        BENCH / "preview_base.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime="20m",
        gpu=int(config["model"]["pixel"]["device"] == "cuda"),
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/preview_base.py"
