"""Stage sample_round: recorded sampling of one round into trajectories.h5, images/, samples.csv."""

from pathlib import Path

from marsdiff.stage import params_json, run_stage


def main(snakemake):
    def body():
        # Imported inside the body so a missing package is reported like any other user error.
        import torch

        from marsdiff.diffusion.sampler import sample_round_from_config

        torch.set_num_threads(max(1, int(snakemake.threads)))
        meta = getattr(snakemake.input, "meta", None)
        sample_round_from_config(
            params_json(snakemake, "cfg"),
            model_dir=Path(meta).parent if meta else None,
            trajectories_path=snakemake.output.trajectories,
            images_dir=snakemake.output.images,
            samples_csv=snakemake.output.samples,
            round_index=int(snakemake.wildcards["round"]),
        )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
