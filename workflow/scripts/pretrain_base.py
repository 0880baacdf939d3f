"""Stage pretrain_base: train the embedded pixel-space base model into results/models/base/,
or install the shipped one when it was trained from exactly this config, train split and code."""

from pathlib import Path

from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        # Imported inside the body so a missing package is reported like any other user error.
        import logging

        from marsdiff.diffusion import shipped
        from marsdiff.diffusion.pretrain import pretrain_base

        log = logging.getLogger("marsdiff.pretrain_base")
        # Tracked training keys plus the untracked preset name and log cadence.
        section = {**params_json(snakemake, "cfg")["model"]["pixel"], **params_json(snakemake, "settings")}
        use_shipped = section.pop("shipped_checkpoint", "auto")
        out_dir = Path(snakemake.output.meta).parent
        if use_shipped == "auto":
            reasons = shipped.mismatches(section, snakemake.input.index) if shipped.SHIPPED_DIR.is_dir() else [
                f"no shipped model at {shipped.SHIPPED_DIR}"]
            if not reasons:
                meta = shipped.install(out_dir)
                log.info("installed the shipped base model (%s, trained %s steps; weights sha256 %s): it was "
                         "trained from this config, train split and code. Set model.pixel.shipped_checkpoint: "
                         "never to train anyway.", shipped.SHIPPED_DIR, meta["training"]["steps"],
                         meta["installed_from"]["weights_sha256"][:12])
                return
            log.info("training instead of installing the shipped base model: %s", "; ".join(reasons))
        # stage preview_base draws samples.png
        pretrain_base(snakemake.input.index, out_dir, section, threads=snakemake.threads,
                      code_version=shipped.training_code_version())

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
