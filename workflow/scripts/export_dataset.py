"""Stage export_dataset: one evaluated model's labelled synthetic dataset (marsdiff.export.dataset)."""

from pathlib import Path

from marsdiff.stage import params_json, run_stage, untracked


def main(snakemake):
    def body():
        import torch

        from marsdiff.evalset.models import evaluation_models
        from marsdiff.export.dataset import DrawOptions, draw_dataset, source_of_evaluated_model

        torch.set_num_threads(max(1, int(snakemake.threads)))
        config = params_json(snakemake, "cfg")
        results = Path(snakemake.input.reference).parent.parent
        spec = next(m for m in evaluation_models(config) if m["name"] == snakemake.wildcards.model)
        # seed and device: the config's (DrawOptions' None); the batch size changes no image: untracked
        options = DrawOptions(batch_size=int(untracked(snakemake, "sampling.batch_size")), results=results, progress=False)
        draw_dataset(config, source_of_evaluated_model(spec, results), snakemake.output[0], config["export"]["images"],
                     options)

    run_stage(snakemake, body)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
