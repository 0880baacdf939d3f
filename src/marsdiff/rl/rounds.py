"""The RL round loop, and the one thing its two stages share: the policy of round r-1.

    round 000: sample with the experiment's initial policy (base model + the mode's initial
               plan or a zero LoRA adapter); score; update -> round_000/policy
    round r:   sample with round_{r-1}/policy; score; update -> round_r/policy

Each stage has its own modules, so that each rule's code digest covers the code of its own stage
and no other (docs/workflow.md, "Re-run policy"): :mod:`marsdiff.rl.round_sampling` (stage
sample_round, :mod:`marsdiff.stages.sample_round`) and :mod:`marsdiff.rl.round_update` (stage
update_round, :mod:`marsdiff.stages.update_round`, which writes the round's metrics row).
Editing the update re-runs no sampling. This module holds what both stages must do the same
way: build the policy that sampled the round (the update checks the hash stored in the
trajectory file against it), so an edit here re-runs both.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from marsdiff.diffusion.loading import load_backend
from marsdiff.diffusion.pixel_backend import BASE_MODEL_DIR
from marsdiff.errors import MarsdiffError
from marsdiff.rl.policy import RoundPolicy


def build_policy(model_cfg: Mapping[str, Any], experiment: Mapping[str, Any], model_dir: str | os.PathLike | None,
                 previous_policy: str | os.PathLike | None, *, device: str) -> RoundPolicy:
    """The policy that samples the next round: the initial one, or the saved policy of round r-1."""
    backend = load_backend(model_cfg, model_dir=model_dir or BASE_MODEL_DIR, device=device)
    if previous_policy is None:
        return RoundPolicy.initial(experiment["mode"], backend, experiment)
    policy = RoundPolicy.load(previous_policy, backend)
    if policy.mode != experiment["mode"]:
        raise MarsdiffError(f"{previous_policy}: a {policy.mode} policy, but the experiment's mode is {experiment['mode']}")
    return policy
