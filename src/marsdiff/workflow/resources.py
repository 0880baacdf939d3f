"""Cluster resources per rule: the ``gpu`` count the SLURM profile turns into ``--gpus=<n>``, the
processes of a round job, and the group that puts a round's jobs in one allocation.

A stage asks for a GPU only where the config runs it on CUDA: feature extraction by
``features.device``, pixel training and preview by ``model.pixel.device``, and every sampling
stage when the backend is Stable Diffusion (which wants a GPU) or ``sampling.device`` is cuda.
The round stages run ``sampling.processes`` data-parallel processes, one GPU each on CUDA
(docs/rl.md, "Multi-GPU").
"""

from __future__ import annotations

from typing import Any, Mapping

FEATURE_RULES = ("extract_features", "extract_resized_features", "score_round", "extract_sample_features")
PIXEL_RULES = ("pretrain_base", "preview_base")
SAMPLING_RULES = ("sample_round", "update_round", "select_knob", "generate_base_samples",
                  "generate_base_stream_samples", "generate_samples", "generate_stream_samples", "export_dataset")
#: The stages that run sampling.processes data-parallel processes.
ROUND_RULES = ("sample_round", "update_round")
#: The ``threads`` of each rule that sizes its thread pools (torch's, BLAS'): the scripts set them
#: to the job's. One per job, measured on the idle 2-core machine (docs/performance.md,
#: "Threads"): a second thread buys a job only 1.4-1.6x, so two 1-thread jobs side by side do more
#: than one 2-thread job, and the default workflow ran in 0.82x the time of 2 threads everywhere.
#: The LoRA update's weights depend on the thread count (its gradient sums run in another order),
#: so the default results are those of this table (the sampling, scoring and evaluation outputs
#: are the same with 1 or 2). pretrain_base keeps 2: it trains alone when it trains at all, and the
#: shipped model was trained with 2. A cluster sets its own per rule (profiles/slurm,
#: set-threads); ``--set-threads <rule>=N`` overrides one run.
THREADS = {
    "sample_round": 1, "score_round": 1, "update_round": 1,
    "select_knob": 1, "generate_base_samples": 1, "generate_samples": 1,
    "extract_features": 1, "extract_resized_features": 1, "preview_base": 1, "pretrain_base": 2,
    "extract_sample_features": 1, "evaluate": 1, "plot_evaluation": 1, "export_dataset": 1,
}


def sampling_gpus(config: Mapping[str, Any]) -> int:
    """Stable Diffusion wants a GPU; the pixel model only when the config asks for CUDA."""
    return int(config["model"]["backend"] == "stable_diffusion" or config["sampling"].get("device") == "cuda")


def gpus(config: Mapping[str, Any], rule: str) -> int:
    """The GPUs one job of ``rule`` asks for (0 for the CPU-only rules)."""
    if rule in FEATURE_RULES:
        return int(config["features"].get("device") == "cuda")
    if rule in PIXEL_RULES:
        return int(config["model"]["pixel"]["device"] == "cuda")
    if rule in ROUND_RULES:
        return sampling_gpus(config) * round_processes(config)
    if rule in SAMPLING_RULES:
        return sampling_gpus(config)
    return 0


def round_processes(config: Mapping[str, Any]) -> int:
    """``sampling.processes``: the processes of a sample_round / update_round job. A resource, not
    a param: the results do not depend on it, so changing it re-runs nothing."""
    return int(config["sampling"]["processes"])


def round_group(config: Mapping[str, Any], exp: str, round_index: int) -> str:
    """The Snakemake group of one round's sample_round, score_round and update_round: one SLURM
    job per round, or per ``cluster.rounds_per_job`` consecutive rounds of an experiment (local
    runs ignore groups). The id names the experiment and the block's first round because
    Snakemake merges every connected job of one group id: a single id for all rounds would make
    the whole chain of an experiment one job."""
    block = int(config["cluster"]["rounds_per_job"])
    first = int(round_index) // block * block
    return f"rounds-{exp}-{first:03d}"
