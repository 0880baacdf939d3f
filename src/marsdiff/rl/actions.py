"""The actions an update learns from, one class per family, behind one small interface.

* :class:`DenoiseActions` (LoRA mode): the denoising transitions x_t -> x_{t-1} of a round,
  re-scored through the adapted UNet (unit: mean_per_dim_nats);
* :class:`PlanActions` (scheduler and diversity modes): one plan action per image (knobs, and
  the condition when it is learnt), re-scored by the generation policy (unit: nats).

Both give ``minibatches(epoch)``, ``subsample(count, seed)``, ``evaluate(batch)`` (new
log-probs with gradient, stored log-probs, advantages), ``entropy(batch)`` and
``kl_to_base(batch, scored)``: what PPO (:mod:`marsdiff.rl.ppo`) and TRPO
(:mod:`marsdiff.rl.trpo`) need, and nothing mode-specific.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from marsdiff.diffusion.rescoring import scheduler_for_trajectories, transition_log_prob
from marsdiff.errors import MarsdiffError
from marsdiff.io.trajectories import LOG_PROB_CONVENTION, open_trajectories
from marsdiff.rl.lora import set_adapter_enabled
from marsdiff.rl.replay import TransitionBatch, TransitionBuffer


@dataclass
class Scored:
    """One minibatch scored under the current parameters."""

    new_log_prob: torch.Tensor  # with gradient
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    mean: torch.Tensor | None = None  # denoising steps: the Gaussian's mean (for KL / FVP)
    std: torch.Tensor | None = None


def parameters_state(parameters) -> tuple[int, ...]:
    """The state of the parameters' values: each one's autograd version counter, which every
    in-place change (an optimiser step, a line-search move, a copy back) advances. The same state
    means the same values, bit for bit."""
    return tuple(p._version for p in parameters)


def trainable_steps(std: np.ndarray, min_std: float, fraction: float, seed: int) -> dict[tuple[int, int], np.ndarray]:
    """The steps each image trains on: those whose sigma is above the ``min_std`` floor, then
    DDPO's timestep fraction of them (a seeded random subset).

    A floored step's sample is x_{t-1} = mu + min_std * noise: the "action" is the floor's noise,
    not a choice of the policy, and its score (x - mu) / sigma^2 carries that noise with weight
    1 / min_std^2. Trained on, it drowns the other steps' signal (measured on the tiny test
    model: no learning at all until these steps were left out).
    """
    std = np.asarray(std)
    rng = np.random.default_rng(seed)
    steps = {}
    for i in range(std.shape[0]):
        candidates = np.flatnonzero(std[i] > min_std * (1 + 1e-4))
        if len(candidates) == 0:
            raise MarsdiffError(f"image {i}: every step sits at the sigma floor (min_std {min_std}); raise eta or steps")
        count = max(1, int(round(fraction * len(candidates))))
        steps[(0, i)] = np.sort(rng.choice(candidates, size=count, replace=False))
    return steps


class DenoiseActions:
    unit = LOG_PROB_CONVENTION

    def __init__(self, policy, trajectories_path, advantages: np.ndarray, minibatch_size: int,
                 timestep_fraction: float, seed: int):
        self.policy = policy
        self.buffer = TransitionBuffer([trajectories_path])
        self.file = self.buffer.files[0]
        self.scheduler = scheduler_for_trajectories(self.file)
        self.advantages = np.asarray(advantages, dtype=np.float32)
        n, steps = self.file.num_images, self.file.num_steps
        if self.advantages.shape != (n, steps):
            raise MarsdiffError(f"advantages shape {self.advantages.shape} != (images, steps) {(n, steps)}")
        if not 0.0 < timestep_fraction <= 1.0:
            raise MarsdiffError(f"timestep_fraction must be in (0, 1], got {timestep_fraction}")
        self.minibatch_size = int(minibatch_size)
        self.steps = trainable_steps(self.file.array("std"), self.scheduler.min_std, timestep_fraction, seed)
        self.seed = seed
        self._base_means: dict[tuple[int, int], torch.Tensor] = {}
        self._base_stds: dict[tuple[int, int], torch.Tensor] = {}
        # Evaluations kept for reuse (keep_evaluations), by the batch's rows: those at the state
        # keeping started in (the pre-update policy), and the latest at any other state.
        self._keep_from: tuple[int, ...] | None = None
        self._kept_start: dict[bytes, Scored] = {}
        self._kept_latest: dict[bytes, tuple[tuple[int, ...], Scored]] = {}

    @property
    def num_actions(self) -> int:
        return sum(len(v) for v in self.steps.values())

    def minibatches(self, epoch: int) -> Iterator[TransitionBatch]:
        yield from self.buffer.minibatches(self.minibatch_size, seed=self.seed * 1000 + epoch, steps=self.steps)

    def subsample(self, count: int, seed: int) -> TransitionBatch:
        """``count`` transitions drawn uniformly (TRPO's Fisher-vector-product subsample)."""
        batch = next(self.buffer.minibatches(self.num_actions, seed=seed, steps=self.steps))
        rows = np.random.default_rng(seed).permutation(len(batch))[: max(1, min(count, len(batch)))]
        return batch.take(np.sort(rows))

    def _gaussian(self, batch: TransitionBatch):
        tensor = torch.as_tensor
        return transition_log_prob(
            self.policy.backend, self.scheduler, tensor(batch.latents), tensor(batch.next_latents), tensor(batch.timestep),
            tensor(batch.condition), prev_timestep=tensor(batch.prev_timestep), eta=tensor(batch.eta),
            guidance_scale=tensor(batch.guidance_scale) if self.policy.backend.kind == "stable_diffusion" else None,
        )

    def evaluate(self, batch: TransitionBatch) -> Scored:
        out = self._gaussian(batch)
        device = out.log_prob.device
        advantages = torch.as_tensor(self.advantages[batch.image_index, batch.step_index], device=device)
        scored = Scored(out.log_prob, torch.as_tensor(batch.log_prob, device=device), advantages, out.mean, out.std)
        if self._keep_from is not None:
            self._keep(batch, scored)
        return scored

    # --- reuse of the update's own evaluations (marsdiff.rl.movement) ----------------------------
    def keep_evaluations(self) -> tuple[int, ...]:
        """From now on keep (detached) what :meth:`evaluate` scores, so that the statistics after
        the update reuse the update's own passes: its evaluations at the current (pre-update)
        parameters, and the latest at the parameters it ends with. Returns the current state."""
        self._keep_from = parameters_state(self.policy.trainable_parameters())
        self._kept_start.clear()
        self._kept_latest.clear()
        return self._keep_from

    def kept_evaluation(self, batch: TransitionBatch, state: tuple[int, ...]) -> Scored | None:
        """The batch's evaluation kept at parameter ``state`` (None if there is none)."""
        key = _rows_key(batch)
        if state == self._keep_from:
            return self._kept_start.get(key)
        kept = self._kept_latest.get(key)
        return kept[1] if kept is not None and kept[0] == state else None

    def stop_keeping(self) -> None:
        self._keep_from = None
        self._kept_start.clear()
        self._kept_latest.clear()

    def _keep(self, batch: TransitionBatch, scored: Scored) -> None:
        # The first evaluation at a state is kept, not a later one: TRPO's Fisher-vector products
        # re-evaluate the subsample at theta_old with the classic attention kernels (whose last
        # bits differ), after its gradient pass has scored every batch with the model's own.
        state, key = parameters_state(self.policy.trainable_parameters()), _rows_key(batch)
        detached = Scored(scored.new_log_prob.detach(), scored.old_log_prob, scored.advantages,
                          scored.mean.detach(), scored.std.detach())
        if state == self._keep_from:
            self._kept_start.setdefault(key, detached)
        elif key not in self._kept_latest or self._kept_latest[key][0] != state:
            self._kept_latest[key] = (state, detached)

    def adapter_adds_nothing(self) -> bool:
        """Whether the LoRA adapter's contribution is exactly zero (every B matrix zero: a fresh
        adapter, round 000, or a zero_lr control): the policy's step means are then the base
        model's, bit for bit (peft adds B(A(x)) * scale = 0 to the base layer's output)."""
        lora_b = [p for name, p in self.policy.backend.unet.named_parameters() if "lora_B" in name]
        return bool(lora_b) and all(not bool(p.detach().any()) for p in lora_b)

    def entropy(self, batch: TransitionBatch) -> torch.Tensor | None:
        return None  # sigma is fixed by the schedule: no learnable spread

    def base_step(self, batch: TransitionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's step Gaussian (mean, std) of the batch, kept like :meth:`base_mean`."""
        mean = self.base_mean(batch)
        keys = zip(batch.image_index.tolist(), batch.step_index.tolist())
        return mean, torch.stack([self._base_stds[key] for key in keys])

    def base_mean(self, batch: TransitionBatch) -> torch.Tensor:
        """The base model's step mean (the same UNet with the adapter disabled), without gradient.

        It does not depend on the adapter, so each action's mean is computed once per update and
        kept (keyed by image and step): PPO's later epochs and the post-update statistics reuse it.
        """
        keys = list(zip(batch.image_index.tolist(), batch.step_index.tolist()))
        missing = [i for i, key in enumerate(keys) if key not in self._base_means]
        if missing:
            unet = self.policy.backend.unet
            set_adapter_enabled(unet, False)
            try:
                with torch.no_grad():
                    fresh = self._gaussian(batch.take(np.asarray(missing)))
            finally:
                set_adapter_enabled(unet, True)
            for i, row, std in zip(missing, fresh.mean, fresh.std):
                self._base_means[keys[i]] = row
                self._base_stds[keys[i]] = std
        return torch.stack([self._base_means[key] for key in keys])

    def kl_to_base(self, batch: TransitionBatch, scored: Scored, base_mean: torch.Tensor | None = None) -> torch.Tensor:
        """KL(pi_theta || pi_base) per transition, mean over dimensions: ||mu - mu_base||^2 / (2 sigma^2).
        ``base_mean``: :meth:`base_mean` of the batch when the caller keeps it (it does not depend on theta)."""
        if base_mean is None:
            base_mean = self.base_mean(batch)
        return gaussian_mean_kl(scored.mean, base_mean, scored.std)

    def close(self) -> None:
        self.stop_keeping()
        self.buffer.close()


def _rows_key(batch: TransitionBatch) -> bytes:
    """The identity of a batch: which transitions it holds, in order."""
    return b"".join(np.ascontiguousarray(a, dtype=np.int64).tobytes()
                    for a in (batch.file_index, batch.image_index, batch.step_index))


def gaussian_mean_kl(mean: torch.Tensor, other_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-row KL between N(mean, std^2 I) and N(other_mean, std^2 I), averaged over dimensions."""
    view = (-1,) + (1,) * (mean.ndim - 1)
    return ((mean - other_mean) / std.view(view)).pow(2).flatten(1).mean(dim=1) * 0.5


class PlanActions:
    unit = "nats"

    def __init__(self, policy, trajectories_path, advantages: np.ndarray, minibatch_size: int, seed: int):
        self.policy = policy
        self.generation = policy.generation
        with open_trajectories(trajectories_path) as f:
            if tuple(f.action_names) != tuple(self.generation.action_names):
                raise MarsdiffError(
                    f"{trajectories_path}: actions {f.action_names} were not drawn by this policy ({self.generation.action_names})"
                )
            self.condition = torch.as_tensor(f.array("condition")).long()
            self.actions = torch.as_tensor(f.array("actions")).float()
            old = torch.as_tensor(f.array("log_prob/knobs")).float()
            if self.generation.learn_conditions:
                old = old + torch.as_tensor(f.array("log_prob/condition")).float()
            self.old_log_prob = old
        self.advantages = torch.as_tensor(np.asarray(advantages, dtype=np.float32))
        if self.advantages.shape != self.condition.shape:
            raise MarsdiffError(f"advantages shape {tuple(self.advantages.shape)} != images {tuple(self.condition.shape)}")
        self.minibatch_size = int(minibatch_size)
        self.seed = seed

    @property
    def num_actions(self) -> int:
        return int(self.condition.shape[0])

    def minibatches(self, epoch: int) -> Iterator[np.ndarray]:
        order = np.random.default_rng(self.seed * 1000 + epoch).permutation(self.num_actions)
        for lo in range(0, len(order), self.minibatch_size):
            yield order[lo : lo + self.minibatch_size]

    def subsample(self, count: int, seed: int) -> np.ndarray:
        return np.sort(np.random.default_rng(seed).permutation(self.num_actions)[: max(1, min(count, self.num_actions))])

    def evaluate(self, rows: np.ndarray) -> Scored:
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        new = self.generation.trainable_log_prob(self.condition[rows_t], self.actions[rows_t])
        return Scored(new, self.old_log_prob[rows_t], self.advantages[rows_t])

    def entropy(self, rows: np.ndarray) -> torch.Tensor:
        return self.generation.entropy(self.condition[torch.as_tensor(rows, dtype=torch.long)])

    def kl_to_base(self, rows: np.ndarray, scored: Scored, base_mean: Any = None) -> torch.Tensor | None:
        return None  # the base model has no plan distribution to stay close to

    def distributions(self, rows: np.ndarray) -> tuple[Any, torch.Tensor | None]:
        """The current knob distribution of the rows and the condition log-probs (if learnt)."""
        condition = self.condition[torch.as_tensor(rows, dtype=torch.long)]
        knob_dist = self.generation.head.dist(condition)
        cond = self.generation.condition_log_probs() if self.generation.learn_conditions else None
        return knob_dist, cond

    def close(self) -> None:
        pass
