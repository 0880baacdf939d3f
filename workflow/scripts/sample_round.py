"""Stage sample_round: one round of an experiment into trajectories.h5, images/, samples.csv."""

from pathlib import Path

from marsdiff.faults import kill_point
from marsdiff.stage import params_json, run_stage


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
            params_json(snakemake, "cfg"),
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
