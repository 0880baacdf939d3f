# Base diffusion model (stage pretrain_base); recorded sampling lives in rl.smk.
# The model directory contract (unet/, scheduler/, marsdiff_model.json) is documented in
# src/marsdiff/diffusion/pixel.py and docs/base_model.md.


rule pretrain_base:
    """Train the class-conditional pixel-space UNet on the reference train split."""
    input:
        manifest=REFERENCE_DIR / "manifest.csv",
        images=REFERENCE_DIR / "images",
        # Only the modules training imports: a sampler edit must not retrain (and so re-run every
        # RL round downstream of) the base model.
        code=library_sources(
            "diffusion/__init__.py", "diffusion/pixel.py", "diffusion/pretrain.py", "data/__init__.py", "data/images.py",
            "data/manifest.py",
        ),
    output:
        unet=directory(BASE_MODEL_DIR / "unet"),
        scheduler=directory(BASE_MODEL_DIR / "scheduler"),
        meta=BASE_MODEL_DIR / "marsdiff_model.json",
        loss=BASE_MODEL_DIR / "loss.csv",
        samples=report(
            BASE_MODEL_DIR / "samples.png",
            caption="../report/base_samples.rst",
            category="2. Base model",
        ),
    params:
        cfg=stage_params(config, "model"),
    log:
        LOGS / "pretrain_base.log",
    benchmark:
        BENCH / "pretrain_base.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime="30m",
        # Ask the cluster for a GPU only when the config wants one (e.g. preset 'large').
        gpu=1 if config["model"]["pixel"]["device"] == "cuda" else 0,
    conda:
        "../envs/marsdiff.yaml"
    script:
        "../scripts/pretrain_base.py"
