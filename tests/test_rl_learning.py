"""PPO learns: a few rounds on a tiny model raise a simple known reward (mean brightness of the
final images) well beyond the base policy's seed-to-seed spread, in every mode."""

from __future__ import annotations

import numpy as np
import pytest

from rl_helpers import experiment, mean_reward_of, run_rounds

# Per mode: the experiment overrides that make a short CPU test learn. The LoRA clip is wider
# than DDPO's 1e-4 so a few rounds move it; the plan policies have a handful of free parameters.
# The KL penalty to the base is off for LoRA: at this toy's step sizes (a KL of ~0.03 per dimension
# per round, thousands of times the default run's) its default weight binds at once. Brightness
# depends strongly on the class, which neither of these two policies chooses: the per-class
# baseline (normalisation: class, as before batch became the default) keeps that class effect,
# which no update can change, out of the advantages (with batch statistics the LoRA run lost
# reward: -0.02).
CLASS_BASELINE = {"normalisation": "class", "min_count": 4}
SETTINGS = {
    "lora_unet": dict(rounds=5, optimiser={"lr": 1e-2}, ppo={"epochs": 2, "minibatch_size": 32, "clip_denoise": 0.05},
                      kl_to_base=0.0, advantages=CLASS_BASELINE),
    "diversity_policy": dict(rounds=6, images_per_round=32, optimiser={"lr": 0.3}, ppo={"epochs": 2}),
    "scheduler_policy": dict(rounds=8, images_per_round=48, optimiser={"lr": 0.2}, ppo={"epochs": 2, "minibatch_size": 32},
                             policy={"init_std": 1.0}, advantages=CLASS_BASELINE),
}


@pytest.mark.parametrize("mode", list(SETTINGS))
def test_ppo_raises_a_known_reward_beyond_seed_spread(tmp_path, mode):
    exp = experiment(mode, **SETTINGS[mode])
    base_policy, _ = run_rounds(exp, tmp_path / "base", rounds=0)
    # Seed-to-seed spread of the round mean under the untrained policy (fresh seeds per round index).
    base = [mean_reward_of(base_policy, exp, tmp_path / f"base_{k}", 100 + k) for k in range(4)]
    policy, history = run_rounds(exp, tmp_path / "run")
    tuned = np.mean([mean_reward_of(policy, exp, tmp_path / f"tuned_{k}", 200 + k) for k in range(2)])
    spread = np.std(base, ddof=1)
    assert tuned - np.mean(base) > 3 * spread, (mode, base, tuned, [h["reward_mean"] for h in history])
