"""Stage extract_sample_features: every evaluated model's image features at the matched resolution."""

from marsdiff.stage import params_json, run_stage, untracked


def main(snakemake):
    def body():
        import torch

        from marsdiff.stages.extract_sample_features import extract_sample_features

        torch.set_num_threads(max(1, int(snakemake.threads)))
        names = params_json(snakemake, "models")
        inputs, outputs = snakemake.input, snakemake.output
        extract_sample_features(
            {name: sets for name, sets in zip(names, zip(inputs.samples, inputs.images, outputs.features))},
            params_json(snakemake, "extractor")["extractor"],
            untracked(snakemake, "features"),
            int(snakemake.params.resolution),
        )

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
