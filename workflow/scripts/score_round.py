"""Stage score_round: one round's rewards.csv and reward_summary.json (marsdiff.stages.score_round)."""

from marsdiff.faults import kill_point
from marsdiff.stage import params_json, run_stage, untracked


def main(snakemake):
    def body():
        # Imported inside the body so a missing package is reported like any other user error.
        import torch

        from marsdiff.stages.score_round import score_round

        torch.set_num_threads(max(1, int(snakemake.threads)))
        kill_point("score.start")
        score_round(
            images_dir=snakemake.input.images,
            samples_csv=snakemake.input.samples,
            reference_features=snakemake.input.features,
            manifest=snakemake.input.index,
            validation_json=snakemake.input.validation,
            reward_section=params_json(snakemake, "reward"),
            features_cfg=untracked(snakemake, "features"),
            resolution=int(snakemake.params.resolution),
            rewards_csv=snakemake.output.rewards,
            summary_json=snakemake.output.summary,
            extractor=params_json(snakemake, "extractor")["extractor"],
            features_npy=snakemake.output.features,
            # the previous rounds' features, most recent first (score.smk's pool_inputs)
            pool_features=list(snakemake.input.pool),
        )
        kill_point("score.done")

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
