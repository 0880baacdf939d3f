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
#: to the job's. Two everywhere, measured on the idle 2-core machine (docs/performance.md,
#: "Threads"): one thread per job for every rule ran the default workflow in 0.82x the time (two
#: 1-thread jobs do more than one 2-thread job: a second thread buys 1.4-1.6x), but the LoRA
#: update's weights depend on the thread count (its gradient sums run in another order), so that
#: change re-baselines the default results (ppo_lora's recall 0.699 -> 0.718 on the same seeds);
#: a mixed table (1 for jobs with siblings, 2 for update_round) kept the results and gained
#: nothing, because a 1-thread job then often runs alone on two cores. A cluster sets its own per
#: rule (profiles/slurm, set-threads); ``--set-threads <rule>=N`` overrides one run.
THREADS = {
    "sample_round": 2, "score_round": 2, "update_round": 2,
    "select_knob": 2, "generate_base_samples": 2, "generate_samples": 2,
    "extract_features": 2, "extract_resized_features": 2, "preview_base": 2, "pretrain_base": 2,
    "extract_sample_features": 2, "evaluate": 2, "plot_evaluation": 2, "export_dataset": 2,
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
