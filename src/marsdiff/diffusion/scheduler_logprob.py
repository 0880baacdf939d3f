"""DDIM (eta > 0) as a stochastic policy: each denoising step is a Gaussian with a log-probability.

This module owns the per-step maths shared by the recording sampler and the RL trainer:

    x_{t-1} ~ N(mu_theta(x_t, t), sigma_t^2 I)
    sigma_t = max(eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)), min_std)
    mu      = sqrt(abar_prev) * x0_hat + sqrt(1 - abar_prev - sigma_raw^2) * eps_hat

The API follows diffusers' schedulers (``from_config``, ``set_timesteps``, ``step``) but ``step``
also returns the Gaussian's mean, standard deviation and the log-probability of the sample.

Log-probability convention (stored in trajectory files, used by PPO clip and TRPO KL):
:data:`LOG_PROB_CONVENTION` = ``"mean_per_dim_nats"``: the Gaussian log-density in nats of one
transition, averaged (not summed) over the latent dimensions C*H*W. True nats of the transition
are ``log_prob * dims`` (:func:`total_nats`). Averaging is the DDPO convention: a PPO clip of 1e-4
and a KL target of 0.01 are meant in these units, and the numbers stay O(1) whatever the latent
size, so float32 storage and re-evaluation agree to ~1e-7.

Per-image schedules: ``eta`` and the previous timestep may be given per row (tensors of shape
(N,)), so one batch can mix images with different noise levels and timestep grids
(:func:`power_timesteps`). Without them the scheduler's own ``eta`` and grid apply.

Why ``min_std``: with ``set_alpha_to_one`` (the default of a DDPM config) the last step has
abar_prev = 1, so sigma_t = 0 and the log-probability is undefined; the step after t = 0 has the
same problem whenever abar_prev = abar_t. The floor keeps every step a proper Gaussian. The mean
keeps DDIM's formula with the unclamped sigma, so the floor only adds a little noise where
DDIM would add none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

# Name of the stored log-prob unit; written into HDF5 attributes and checked on read.
LOG_PROB_CONVENTION = "mean_per_dim_nats"
#: The spacings of diffusers' DDIMScheduler (Lin et al. 2023, table 2).
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-image log N(sample; mean, std^2 I) in the stored convention (mean over dimensions).

    ``std`` has one value per image (shape (N,)); the result has shape (N,).
    """
    std_b = std.reshape(-1, *([1] * (sample.ndim - 1))).to(sample.dtype)
    # (x - mu)^2 / (2 sigma^2) per dimension; log sigma and log sqrt(2 pi) are per-image constants.
    quadratic = ((sample.detach() - mean) / std_b).pow(2).flatten(1).mean(dim=1) * 0.5
    return -quadratic - torch.log(std.to(sample.dtype)) - _HALF_LOG_2PI


def total_nats(log_prob_mean_per_dim: torch.Tensor | float, dims: int):
    """Convert stored (per-dimension mean) log-probs to true nats summed over ``dims`` dimensions."""
    return log_prob_mean_per_dim * dims


@dataclass
class DDIMLogProbStepOutput:
    """One transition x_t -> x_{t-1}: the sample, its Gaussian and its log-probability."""

    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor  # (N,)
    log_prob: torch.Tensor  # (N,), LOG_PROB_CONVENTION units
    pred_original_sample: torch.Tensor


class DDIMLogProbScheduler:
    """DDIM with eta > 0 whose steps report mean, std and log-probability.

    Build it from the training scheduler's config (a DDPMScheduler or the SD pipeline's
    scheduler config) so the noise schedule is the one the UNet was trained with. Timesteps may
    be one int for the whole batch or one per image (trainer minibatches mix timesteps).
    """

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        final_alpha_cumprod: float,
        num_train_timesteps: int,
        prediction_type: str = "epsilon",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        *,
        eta: float,
        min_std: float,
    ):
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        if eta <= 0 and min_std <= 0:
            raise ValueError("eta or min_std must be > 0: a deterministic step has no log-probability")
        self.alphas_cumprod = alphas_cumprod.detach().to(torch.float32).cpu()
        self.final_alpha_cumprod = float(final_alpha_cumprod)
        self.num_train_timesteps = int(num_train_timesteps)
        self.prediction_type = prediction_type
        self.clip_sample = bool(clip_sample)
        self.clip_sample_range = float(clip_sample_range)
        self.timestep_spacing = timestep_spacing
        self.steps_offset = int(steps_offset)
        self.eta = float(eta)
        self.min_std = float(min_std)
        self.timesteps: torch.Tensor | None = None
        self._prev_of: torch.Tensor | None = None
        self._device_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, eta: float, min_std: float):
        """Build from a diffusers scheduler config (DDPM, DDIM, PNDM ... share the beta fields)."""
        from diffusers import DDIMScheduler

        # diffusers computes the beta schedule (linear, scaled_linear, squaredcos_cap_v2 ...);
        # reusing it guarantees the same alphas the UNet was trained with.
        ddim = DDIMScheduler.from_config(dict(config))
        return cls(
            alphas_cumprod=ddim.alphas_cumprod,
            final_alpha_cumprod=float(ddim.final_alpha_cumprod),
            num_train_timesteps=ddim.config.num_train_timesteps,
            prediction_type=ddim.config.prediction_type,
            clip_sample=ddim.config.clip_sample,
            clip_sample_range=ddim.config.clip_sample_range,
            timestep_spacing=ddim.config.timestep_spacing,
            steps_offset=ddim.config.steps_offset,
            eta=eta,
            min_std=min_std,
        )

    @property
    def config(self) -> dict[str, Any]:
        """Everything that changes a step (stored with trajectories; ``from_stored_config`` rebuilds)."""
        return {
            "alphas_cumprod_sha": _tensor_digest(self.alphas_cumprod),
            "final_alpha_cumprod": self.final_alpha_cumprod,
            "num_train_timesteps": self.num_train_timesteps,
            "prediction_type": self.prediction_type,
            "clip_sample": self.clip_sample,
            "clip_sample_range": self.clip_sample_range,
            "timestep_spacing": self.timestep_spacing,
            "steps_offset": self.steps_offset,
            "eta": self.eta,
            "min_std": self.min_std,
            "num_inference_steps": None if self.timesteps is None else len(self.timesteps),
        }

    def set_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """Choose the sampling grid (descending): diffusers' DDIMScheduler.set_timesteps itself.

        The grid comes from diffusers, not a re-implementation: a torch copy of its arithmetic
        rounded some half-integers the other way (trailing spacing at 48 of 1000 steps gave 937
        where diffusers gives 936), so the recorded chain was not diffusers' chain."""
        from diffusers import DDIMScheduler

        n, T = int(num_inference_steps), self.num_train_timesteps
        if not 1 <= n <= T:
            raise ValueError(f"num_inference_steps must be in 1..{T}, got {n}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unsupported timestep_spacing {self.timestep_spacing!r}")
        # Only the grid fields matter here; the beta schedule of this throwaway scheduler is unused.
        grid_scheduler = DDIMScheduler(
            num_train_timesteps=T, timestep_spacing=self.timestep_spacing, steps_offset=self.steps_offset
        )
        grid_scheduler.set_timesteps(n)
        grid = grid_scheduler.timesteps.to(torch.int64).cpu()
        self.timesteps = grid
        # The previous timestep of each grid point is the next grid point; -1 after the last one
        # means "the clean image" (final_alpha_cumprod). For leading spacing this equals
        # diffusers' t - T // n.
        prev = torch.full((T + self.steps_offset + 1,), -2, dtype=torch.int64)
        prev[grid[:-1]] = grid[1:]
        prev[grid[-1]] = -1
        self._prev_of = prev
        self._device_tables.clear()
        return grid

    @property
    def prev_timesteps(self) -> torch.Tensor:
        self._require_timesteps()
        return self._prev_of[self.timesteps]

    def previous_timestep(self, timestep: torch.Tensor) -> torch.Tensor:
        self._require_timesteps()
        prev = self._prev_of.to(timestep.device)[timestep.long()]
        if bool((prev == -2).any()):
            raise ValueError("timestep not on the current sampling grid (call set_timesteps with the stored steps)")
        return prev

    def _require_timesteps(self) -> None:
        if self.timesteps is None:
            raise ValueError("call set_timesteps() before stepping")

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._device_tables:
            self._device_tables[device] = (self.alphas_cumprod.to(device), self._prev_of.to(device))
        return self._device_tables[device]

    def std(
        self,
        timestep: torch.Tensor | int,
        batch: int = 1,
        device: torch.device | str = "cpu",
        prev_timestep: torch.Tensor | None = None,
        eta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sigma_t (after the ``min_std`` floor) for each timestep, shape (N,)."""
        t = _as_timesteps(timestep, batch, torch.device(device))
        _, _, std, _ = self._coefficients(t, prev_timestep, eta)
        return std

    def _coefficients(self, t: torch.Tensor, prev: torch.Tensor | None = None, eta: torch.Tensor | None = None):
        alphas = self.alphas_cumprod.to(t.device)
        if prev is None:
            self._require_timesteps()
            alphas, prev_of = self._tables(t.device)
            prev = prev_of[t]
        else:
            prev = prev.to(device=t.device, dtype=torch.long)
        abar_t = alphas[t]
        abar_prev = torch.where(prev >= 0, alphas[prev.clamp(min=0)], torch.full_like(abar_t, self.final_alpha_cumprod))
        variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
        eta_t = self.eta if eta is None else eta.to(device=t.device, dtype=torch.float32)
        raw_std = eta_t * variance.clamp(min=0).sqrt()
        std = raw_std.clamp(min=self.min_std)
        return abar_t, abar_prev, std, raw_std

    def mean_std(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | int,
        sample: torch.Tensor,
        prev_timestep: torch.Tensor | None = None,
        eta: torch.Tensor | None = None,
    ):
        """The step's Gaussian: (mean, std (N,), x0_hat). Differentiable w.r.t. ``model_output``.

        ``prev_timestep`` and ``eta`` (shape (N,)) override the grid's previous timestep and the
        scheduler's eta per row (per-image schedules)."""
        t = _as_timesteps(timestep, sample.shape[0], sample.device)
        abar_t, abar_prev, std, raw_std = self._coefficients(t, prev_timestep, eta)
        view = (-1,) + (1,) * (sample.ndim - 1)
        abar_t, abar_prev, raw_std_b = abar_t.view(view), abar_prev.view(view), raw_std.view(view)
        model_output = model_output.to(sample.dtype)
        beta_t = 1 - abar_t
        if self.prediction_type == "epsilon":
            x0 = (sample - beta_t.sqrt() * model_output) / abar_t.sqrt()
            eps = model_output
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - abar_t.sqrt() * x0) / beta_t.sqrt()
        else:  # v_prediction
            x0 = abar_t.sqrt() * sample - beta_t.sqrt() * model_output
            eps = abar_t.sqrt() * model_output + beta_t.sqrt() * sample
        if self.clip_sample:
            # As diffusers: clip x0_hat only; eps_hat stays the model's.
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        direction = (1 - abar_prev - raw_std_b.pow(2)).clamp(min=0).sqrt()
        mean = abar_prev.sqrt() * x0 + direction * eps
        return mean, std, x0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | int,
        sample: torch.Tensor,
        prev_sample: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sample_dtype: torch.dtype | None = None,
        prev_timestep: torch.Tensor | None = None,
        eta: torch.Tensor | None = None,
    ) -> DDIMLogProbStepOutput:
        """One step x_t -> x_{t-1}.

        With ``prev_sample`` given (trainer re-evaluation) no noise is drawn and the result scores
        that sample. Otherwise x_{t-1} = mean + std * noise (``noise`` or drawn from
        ``generator``); ``sample_dtype`` rounds it to the storage dtype before scoring so the
        stored chain is exactly the chain that was taken.
        """
        mean, std, x0 = self.mean_std(model_output, timestep, sample, prev_timestep, eta)
        if prev_sample is None:
            if noise is None:
                noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device="cpu").to(sample.device)
            prev_sample = mean.detach() + std.view(-1, *([1] * (sample.ndim - 1))) * noise
            if sample_dtype is not None and sample_dtype != prev_sample.dtype:
                prev_sample = prev_sample.to(sample_dtype).to(sample.dtype)
        log_prob = gaussian_log_prob(prev_sample, mean, std)
        return DDIMLogProbStepOutput(prev_sample, mean, std, log_prob, x0)


def power_timesteps(num_train_timesteps: int, num_steps: int, power: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image timestep grids t_k = T * ((n - k) / n) ** power - 1, k = 0 .. n-1.

    Written here, not taken from diffusers: its schedulers have one grid per scheduler, not one
    per image, and no power spacing.

    ``power`` (shape (B,)) is the schedule knob: 1 is diffusers' "trailing" spacing, > 1 spends
    more steps at low noise (fine detail), < 1 more at high noise (layout). Grids are made
    strictly decreasing integers (rounding can collide near t = 0) and end above -1.
    Returns (timesteps, prev_timesteps), both (B, n) int64; the last previous timestep is -1.
    """
    T, n = int(num_train_timesteps), int(num_steps)
    if not 1 <= n <= T:
        raise ValueError(f"num_steps must be in 1..{T}, got {n}")
    power = torch.as_tensor(power, dtype=torch.float64).reshape(-1, 1)
    if bool((power <= 0).any()) or not bool(torch.isfinite(power).all()):
        raise ValueError("timestep power must be finite and > 0")
    fraction = (n - torch.arange(n, dtype=torch.float64)) / n
    grid = (torch.floor(T * fraction.pow(power)).long() - 1).clamp(min=0)
    # Strictly decreasing: t_k - (n-1-k) must be non-increasing in k; take a reverse running max.
    slack = grid - (n - 1 - torch.arange(n))
    slack = torch.flip(torch.cummax(torch.flip(slack, [1]), dim=1).values, [1])
    grid = (slack + (n - 1 - torch.arange(n))).clamp(max=T - 1)
    prev = torch.cat([grid[:, 1:], torch.full((grid.shape[0], 1), -1, dtype=torch.long)], dim=1)
    return grid, prev


def _as_timesteps(timestep: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(timestep, device=device).long()
    if t.ndim == 0:
        t = t.expand(batch)
    return t


def _tensor_digest(tensor: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
