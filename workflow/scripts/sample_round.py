"""Stage sample_round: one round of an experiment into trajectories.h5, images/, samples.csv."""

from pathlib import Path

from marsdiff.faults import kill_point
from marsdiff.stage import params_json, run_stage, untracked


def stage_config(snakemake):
    """The sections the round stage reads: the tracked experiment, sampling setup and backend,
    with the untracked sampling batch size (it changes no image)."""
    cfg = params_json(snakemake, "cfg")
    sampling = {**cfg["sampling"], "batch_size": untracked(snakemake, "sampling.batch_size")}
    return {"experiments": {snakemake.wildcards["exp"]: cfg["experiment"]}, "sampling": sampling, "model": cfg["model"]}


def main(snakemake):
    def body():
        # Imported inside the body so a missing package is reported like any other user error.
        import torch

        from marsdiff.rl.rounds import sample_round_stage

        torch.set_num_threads(max(1, int(snakemake.threads)))
        meta = getattr(snakemake.input, "meta", None)
        policy = getattr(snakemake.input, "policy", None)
        kill_point("sample.start")
        sample_round_stage(
            stage_config(snakemake),
            experiment_name=snakemake.wildcards["exp"],
            round_index=int(snakemake.wildcards["round"]),
            model_dir=str(Path(meta).parent) if meta else None,
            previous_policy=policy,
            out_dir=Path(snakemake.output.trajectories).parent,
        )
        kill_point("sample.done")

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
