"""Shared by the RL tests: run a few rounds of an experiment on a tiny model in-process, with a
simple known per-image reward computed from the final images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from marsdiff.config import filled_section
from marsdiff.io.trajectories import open_trajectories
from marsdiff.rl.advantages import AdvantageSettings
from marsdiff.rl.experiments import experiment_settings
from marsdiff.rl.policy import RoundPolicy
from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round
from marsdiff.rl.round_update import update_policy_round
from tiny_models import tiny_pixel_backend


def final_images(trajectories: Path) -> np.ndarray:
    with open_trajectories(trajectories) as f:
        return np.stack([f.image_latents(i)[-1] for i in range(f.num_images)]).astype(np.float64)


def brightness(trajectories: Path) -> np.ndarray:
    """Mean pixel value of each final image: a reward the model can visibly learn."""
    return final_images(trajectories).mean(axis=(1, 2, 3))


def _filled(section: str, mode: str, values: dict[str, Any]) -> dict[str, Any]:
    """One settings section of an experiment of ``mode``, the schema's defaults filled, ``values`` set."""
    return filled_section("experiments.*", {"mode": mode, section: values})[section]


def ppo_settings(mode: str = "lora_unet", **values: Any):
    from marsdiff.rl.ppo import PPOSettings

    return PPOSettings.from_config(_filled("ppo", mode, values))


def trpo_settings(mode: str = "lora_unet", **values: Any):
    from marsdiff.rl.trpo import TRPOSettings

    return TRPOSettings.from_config(_filled("trpo", mode, values))


def advantage_settings(**values: Any) -> AdvantageSettings:
    return AdvantageSettings.from_config(_filled("advantages", "lora_unet", values))


def round_store() -> dict[str, Any]:
    """The round file's compression, the schema's (the filled ``sampling.store`` the stage passes)."""
    return filled_section("sampling", {})["store"]


def experiment(mode: str, **overrides: Any) -> dict[str, Any]:
    settings = {"mode": mode, "images_per_round": 16, "steps": 4, "rounds": 4, **overrides}
    return experiment_settings({"test": settings}, "test", {"batch_size": 64})


def run_rounds(exp: dict[str, Any], out: Path, reward: Callable[[Path], np.ndarray] = brightness,
               rounds: int | None = None, start_policy: RoundPolicy | None = None) -> tuple[RoundPolicy, list[dict]]:
    """Sample, reward and update ``rounds`` rounds; returns the final policy and each round's metrics."""
    policy = start_policy or RoundPolicy.initial(exp["mode"], tiny_pixel_backend(), exp)
    settings = round_sampling_settings({"batch_size": 64}, exp)
    previous, history = None, []
    for r in range(exp["rounds"] if rounds is None else rounds):
        round_dir = out / f"round_{r:03d}"
        sample_policy_round(policy, settings, exp, r, round_dir, store=round_store())
        credit = reward(round_dir / "trajectories.h5")
        metrics = update_policy_round(policy, exp, r, round_dir / "trajectories.h5", credit, previous,
                                      round_dir / "policy", progress=False)
        history.append({"reward_mean": float(np.mean(credit)), **metrics})
        previous = round_dir / "policy"
    return policy, history


def mean_reward_of(policy: RoundPolicy, exp: dict[str, Any], out: Path, round_index: int,
                   reward: Callable[[Path], np.ndarray] = brightness) -> float:
    """Mean reward of a fresh round (new seeds: the round index changes every image's seed)."""
    settings = round_sampling_settings({"batch_size": 64}, exp)
    sample_policy_round(policy, settings, exp, round_index, out, store=round_store())
    return float(np.mean(reward(out / "trajectories.h5")))
