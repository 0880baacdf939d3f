"""Stage validate_rewards: ladder.csv, the ladder figures and validation.json (marsdiff.stages.validate_rewards)."""

from marsdiff.stage import params_json, run_stage
from marsdiff.stages.validate_rewards import validate_rewards


def main(snakemake):
    def body():
        section = params_json(snakemake, "cfg")
        ladders = list(snakemake.params.ladders)
        validate_rewards(
            features_path=snakemake.input.features,
            manifest_path=snakemake.input.manifest,
            reward_section=section,
            ladder_csv=snakemake.output.ladder,
            validation_json=snakemake.output.validation,
            plot_paths=dict(zip(ladders, snakemake.output.plots)),
            extractor=snakemake.params.extractor,
            rho_plot=snakemake.output.rho_plot,
        )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
