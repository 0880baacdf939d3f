"""The RL update of one scored round into policy r (stage update_round:
:mod:`marsdiff.stages.update_round`).

The update restores the optimiser and RNG state saved beside policy r-1
(:mod:`marsdiff.rl.checkpoint`) and checks that the round's trajectories were sampled by
exactly that policy (its hash is stored in the trajectory file), so a round killed anywhere
re-runs from its inputs and ends where an uninterrupted run would. The algorithms (PPO, TRPO)
are imported inside :func:`_run_update`, by the experiment's algorithm: update_round's code
digest follows only that algorithm's entry module (marsdiff.workflow.code.ALGORITHM_ENTRIES).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Mapping

import numpy as np
import torch

from marsdiff.errors import MarsdiffError
from marsdiff.faults import kill_point
from marsdiff.io.atomic import atomic_dir
from marsdiff.rl.actions import DenoiseActions, PlanActions
from marsdiff.rl.advantages import AdvantageSettings, ValueTable, group_advantages, step_advantages
from marsdiff.rl.checkpoint import load_trainer_state, save_trainer_state
from marsdiff.rl.distributed import SINGLE, RankGroup
from marsdiff.rl.generation_policies import KnobPolicy
from marsdiff.rl.movement import UpdateMovement, plan_values
from marsdiff.rl.policy import LORA_UNET, RoundPolicy
from marsdiff.rl.skips import (
    REASON, SKIPPED, STREAK, NonFiniteUpdate, max_skipped_updates, require_finite, stop_if_too_many,
)

log = logging.getLogger(__name__)


def make_optimiser(policy: RoundPolicy, experiment: Mapping[str, Any]) -> torch.optim.Optimizer:
    opt = dict(experiment["optimiser"])
    return torch.optim.AdamW(
        policy.trainable_parameters(), lr=learning_rate(experiment), weight_decay=float(opt["weight_decay"]),
        betas=tuple(float(b) for b in opt["betas"]),
    )


def learning_rate(experiment: Mapping[str, Any]) -> float:
    """optimiser.lr, or exactly 0 for the A/A control (``control: zero_lr``): AdamW then runs every
    step (moments, weight decay factor 1 - 0 * wd = 1) and leaves the weights bit for bit."""
    if experiment["control"] == "zero_lr":
        return 0.0
    return float(experiment["optimiser"]["lr"])


def shuffled_credit(credit: np.ndarray, experiment: Mapping[str, Any], round_index: int) -> np.ndarray:
    """The shuffled-credit control: the round's credits permuted among its images by a permutation
    seeded by (experiment seed, round), so the same arm re-run permutes the same way."""
    rng = np.random.default_rng([int(experiment["seed"]), int(round_index), 0x5C0])
    return np.asarray(credit)[rng.permutation(len(credit))]


def update_policy_round(policy: RoundPolicy, experiment: Mapping[str, Any], round_index: int,
                        trajectories: str | os.PathLike, credit: np.ndarray,
                        previous_policy: str | os.PathLike | None, out_policy: str | os.PathLike,
                        progress: bool = True, skipped_before: int = 0,
                        reward_fault: str | None = None, group: RankGroup = SINGLE) -> dict[str, Any]:
    """One RL update of ``policy`` on a scored round; writes policy r (+ trainer state) atomically.

    A NaN or inf in the credit, the loss, a gradient or the updated weights (or ``reward_fault``,
    a non-finite set reward found by the caller) skips the update (:mod:`marsdiff.rl.skips`):
    policy r is policy r-1 with the same weights and trainer state, and the metrics say why.
    ``skipped_before`` skips in a row before this round count toward the experiment's limit.
    With several processes (``group``) every rank starts from the same policy r-1 and trainer
    state, the update reduces across them (every rank ends with the same weights), and rank 0
    alone writes policy r.
    """
    from marsdiff.io.trajectories import open_trajectories

    started = time.perf_counter()
    with open_trajectories(trajectories) as f:
        stored_hash, num_images, num_steps = str(f.attrs.get("policy_hash", "")), f.num_images, f.num_steps
        condition = f.array("condition")
        num_conditions = len(f.condition_names)
    if stored_hash != policy.policy_hash():
        raise MarsdiffError(
            f"{trajectories}: sampled by policy {stored_hash or '?'}, but the policy to update is {policy.policy_hash()}; "
            "re-run sample_round for this round"
        )
    if len(credit) != num_images:
        raise MarsdiffError(f"{len(credit)} credits for {num_images} images in {trajectories}")
    # The limit is checked before any work: a bad setting must not cost an update.
    max_skipped_updates(dict(experiment))

    def fresh_optimiser() -> torch.optim.Optimizer:
        torch.manual_seed(int(experiment["seed"]) * 1000 + round_index)
        optimiser = make_optimiser(policy, experiment)
        if previous_policy is not None:
            load_trainer_state(previous_policy, optimiser)
        # The saved state carries its own lr: the experiment's (a zero_lr control's 0) wins.
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(experiment)
        return optimiser

    optimiser = fresh_optimiser()
    # What a skipped update puts back: the weights bit for bit (copies, no arithmetic) and the value table.
    saved_parameters = [p.detach().clone() for p in policy.trainable_parameters()]
    saved_value_table = None if policy.value_table is None else np.array(policy.value_table, dtype=np.float64, copy=True)
    metrics: dict[str, Any] = {}
    advantages = np.zeros(0)
    try:
        if reward_fault is not None:
            raise NonFiniteUpdate(reward_fault)
        require_finite(f"the credit of round {round_index:03d}", credit)
        metrics, advantages = _run_update(policy, experiment, round_index, trajectories, credit, condition,
                                          num_steps, num_conditions, optimiser, progress, group)
        require_finite("the updated policy weights", list(policy.trainable_parameters()))
        if policy.value_table is not None:
            require_finite("the updated value table", policy.value_table)
    except NonFiniteUpdate as fault:
        with torch.no_grad():
            for p, p0 in zip(policy.trainable_parameters(), saved_parameters):
                p.copy_(p0)
        policy.value_table = saved_value_table
        optimiser = fresh_optimiser()
        streak = skipped_before + 1
        log.warning("%s round %03d: update skipped, %s; %s is written unchanged (%d skipped in a row)",
                    experiment["name"], round_index, fault,
                    f"policy {round_index - 1:03d}" if previous_policy is not None else "the initial policy", streak)
        stop_if_too_many(dict(experiment), round_index, streak, str(fault))
        metrics = {SKIPPED: 1.0, REASON: str(fault), STREAK: streak}
        if isinstance(policy.generation, KnobPolicy):
            metrics.update(plan_values(policy.generation))
    else:
        metrics.update({"advantage_mean": float(np.mean(advantages)), "advantage_std": float(np.std(advantages)),
                        SKIPPED: 0.0, STREAK: 0})
    if group.is_writer:
        with atomic_dir(out_policy) as tmp:
            policy.save(tmp, round_index, extra={"experiment": experiment["name"], "algorithm": experiment["algorithm"]})
            kill_point(f"update.{experiment['algorithm']}.policy_folder")
            save_trainer_state(tmp, optimiser)
    metrics["update_seconds"] = time.perf_counter() - started
    return metrics


def _run_update(policy: RoundPolicy, experiment: Mapping[str, Any], round_index: int, trajectories: str | os.PathLike,
                credit: np.ndarray, condition: np.ndarray, num_steps: int, num_conditions: int,
                optimiser: torch.optim.Optimizer, progress: bool,
                group: RankGroup = SINGLE) -> tuple[dict[str, Any], np.ndarray]:
    """Advantages and the PPO/TRPO update itself; returns its metrics and the advantages."""
    adv_settings = AdvantageSettings.from_config(experiment["advantages"])
    metrics: dict[str, Any] = {}
    seed = int(experiment["seed"]) * 1000 + round_index
    if experiment["control"] == "shuffled_credit":
        credit = shuffled_credit(credit, experiment, round_index)
    algorithm = experiment["algorithm"]
    minibatch = int(experiment[algorithm]["minibatch_size"])
    if policy.mode == LORA_UNET:
        value_table = None
        if adv_settings.value_head:
            value_table = ValueTable(num_conditions, num_steps, policy.value_table)
        advantages, extra = step_advantages(credit, condition, num_steps, adv_settings, value_table)
        metrics.update(extra)
        if value_table is not None:
            policy.value_table = value_table.table
        fraction = float(experiment[algorithm]["timestep_fraction"])
        actions = DenoiseActions(policy, trajectories, advantages, minibatch, fraction, seed)
    else:
        # When the condition is itself an action (diversity policy), normalising within condition
        # groups would erase exactly the signal of which condition pays: batch statistics always.
        groups = np.zeros_like(condition) if policy.generation.learn_conditions else condition
        advantages = group_advantages(credit, groups, adv_settings)
        actions = PlanActions(policy, trajectories, advantages, minibatch, seed)
    try:
        if isinstance(actions, PlanActions):
            # torch's distributions refuse a NaN sample with a ValueError: name the file instead.
            require_finite(f"the plan actions stored in {trajectories}", actions.actions)
        kl_to_base = float(experiment["kl_to_base"])
        zero_lr = experiment["control"] == "zero_lr"
        movement = UpdateMovement(actions, policy.trainable_parameters(), group)  # read after the update
        if algorithm == "ppo":
            from marsdiff.rl.ppo import PPOSettings, ppo_update, summarise_updates

            rows = ppo_update(actions, policy.trainable_parameters(), optimiser, PPOSettings.from_config(experiment["ppo"]),
                              progress, kl_to_base=kl_to_base, group=group)
            metrics.update(summarise_updates(rows))
        else:
            from marsdiff.rl.trpo import TRPOSettings, trpo_update

            settings = TRPOSettings.from_config(experiment["trpo"])
            metrics.update(trpo_update(actions, policy.trainable_parameters(), settings, progress,
                                       kl_to_base=kl_to_base, apply_step=not zero_lr, group=group))
        metrics.update(movement.stats())
        metrics["kl_to_base_coef"] = kl_to_base
    finally:
        actions.close()
    if isinstance(policy.generation, KnobPolicy):
        metrics.update(plan_values(policy.generation))
    return metrics, advantages
