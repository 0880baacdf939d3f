"""The recording sampler: one DDIM (eta > 0) chain per image, every action and log-prob kept.

Owns the sampling policy of a round, identical for every backend:
  1. the conditioning action: a class index (pixel) or prompt index (Stable Diffusion) drawn from
     ``sampling.class_distribution`` (uniform or given weights), with its log-probability;
  2. x_T ~ N(0, I), then T Gaussian denoising actions x_t -> x_{t-1}
     (:class:`~marsdiff.diffusion.scheduler_logprob.DDIMLogProbScheduler`).
Each image has its own seed (derived from ``sampling.seed``, the round and the image index) and
its own random stream, so an image does not depend on the batch it was drawn in.

:func:`transition_log_prob` is the single function that scores a stored transition; the sampler
uses the same scheduler step, so re-evaluating with unchanged weights reproduces the stored
log-probs (the PPO ratio is exactly 1 before the first update).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from marsdiff.diffusion.backends import DiffusionBackend
from marsdiff.diffusion.scheduler_logprob import (
    DEFAULT_MIN_STD,
    LOG_PROB_CONVENTION,
    DDIMLogProbScheduler,
    DDIMLogProbStepOutput,
)
from marsdiff.errors import MarsdiffError

log = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class SamplingSettings:
    """The ``sampling:`` config section that shapes the chain (see the schema for meanings)."""

    steps: int = 50
    eta: float = 1.0
    min_std: float = DEFAULT_MIN_STD
    batch_size: int = 16
    seed: int = 0
    class_distribution: Any = "uniform"
    store_dtype: str = "float32"
    device: str = "auto"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SamplingSettings":
        store = cfg.get("store") or {}
        return cls(
            steps=int(cfg.get("steps", cls.steps)),
            eta=float(cfg.get("eta", cls.eta)),
            min_std=float(cfg.get("min_std", cls.min_std)),
            batch_size=int(cfg.get("batch_size", cls.batch_size)),
            seed=int(cfg.get("seed", cls.seed)),
            class_distribution=cfg.get("class_distribution", "uniform"),
            store_dtype=str(store.get("dtype", cls.store_dtype)),
            device=str(cfg.get("device", cls.device)),
        )


def condition_probabilities(spec: Any, names: Sequence[str]) -> torch.Tensor:
    """The conditioning policy: 'uniform', a list of weights, or a {name: weight} mapping."""
    k = len(names)
    if k == 0:
        raise MarsdiffError("the model offers no conditions (no class names / prompts)")
    if spec in (None, "uniform"):
        weights = np.ones(k)
    elif isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise MarsdiffError(f"sampling.class_distribution: unknown classes {unknown} (model has {list(names)})")
        weights = np.array([float(spec.get(name, 0.0)) for name in names])
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) != k:
            raise MarsdiffError(f"sampling.class_distribution: {len(spec)} weights for {k} conditions")
        weights = np.asarray(spec, dtype=np.float64)
    else:
        raise MarsdiffError(f"sampling.class_distribution: expected 'uniform', a list or a mapping, got {spec!r}")
    if np.any(weights < 0) or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise MarsdiffError("sampling.class_distribution: weights must be finite, >= 0 and not all zero")
    return torch.as_tensor(weights / weights.sum(), dtype=torch.float64)


def image_seeds(seed: int, round_index: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-image seeds (int63) from (seed, round, image index): stable under any batching."""
    indices = np.asarray(indices, dtype=np.int64)
    out = np.empty(len(indices), dtype=np.int64)
    for j, index in enumerate(indices):
        state = np.random.SeedSequence([int(seed), int(round_index), int(index)]).generate_state(1, dtype=np.uint64)
        out[j] = int(state[0] >> np.uint64(1))
    return out


@dataclass
class TrajectoryBatch:
    """A batch of recorded chains (numpy, CPU)."""

    image_index: np.ndarray  # (B,)
    seed: np.ndarray  # (B,)
    condition: np.ndarray  # (B,) the conditioning action
    condition_log_prob: np.ndarray  # (B,) log pi(condition), nats
    latents: np.ndarray  # (B, T+1, C, H, W) x_T .. x_0, store dtype
    log_prob: np.ndarray  # (B, T) per-step log-probs, LOG_PROB_CONVENTION
    images: np.ndarray  # (B, H, W) or (B, H, W, 3) uint8


@dataclass
class RecordingSampler:
    """Samples and records chains of one backend with one set of settings."""

    backend: DiffusionBackend
    settings: SamplingSettings = field(default_factory=SamplingSettings)

    def __post_init__(self):
        if self.settings.store_dtype not in _TORCH_DTYPES:
            raise MarsdiffError(f"sampling.store.dtype: {self.settings.store_dtype!r} is not one of {sorted(_TORCH_DTYPES)}")
        self.scheduler = self.backend.make_scheduler(eta=self.settings.eta, min_std=self.settings.min_std)
        self.timesteps = self.scheduler.set_timesteps(self.settings.steps)
        self.probabilities = condition_probabilities(self.settings.class_distribution, self.backend.conditions())

    @property
    def step_std(self) -> torch.Tensor:
        return self.scheduler.std(self.timesteps, device="cpu")

    def sample(
        self,
        num_images: int,
        round_index: int = 0,
        start_index: int = 0,
        conditions: Sequence[int] | None = None,
    ) -> Iterator[TrajectoryBatch]:
        """Yield recorded batches for images ``start_index .. start_index + num_images - 1``.

        ``conditions`` fixes the conditioning action per image (its log-prob is still scored
        under the configured distribution).
        """
        if conditions is not None and len(conditions) != num_images:
            raise ValueError("conditions must give one index per image")
        bs = max(1, self.settings.batch_size)
        for lo in range(0, num_images, bs):
            hi = min(num_images, lo + bs)
            indices = np.arange(start_index + lo, start_index + hi)
            fixed = None if conditions is None else np.asarray(conditions[lo:hi], dtype=np.int64)
            yield self._sample_batch(indices, round_index, fixed)

    @torch.no_grad()
    def _sample_batch(self, indices: np.ndarray, round_index: int, fixed: np.ndarray | None) -> TrajectoryBatch:
        device, shape = self.backend.device, self.backend.latent_shape
        store = _TORCH_DTYPES[self.settings.store_dtype]
        seeds = image_seeds(self.settings.seed, round_index, indices)
        # One CPU generator per image: the same image comes out whatever the batch or device.
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        drawn = torch.stack([torch.multinomial(self.probabilities, 1, generator=g)[0] for g in generators])
        condition = torch.as_tensor(fixed) if fixed is not None else drawn
        if int(condition.max()) >= len(self.probabilities) or int(condition.min()) < 0:
            raise MarsdiffError(f"condition index out of range 0..{len(self.probabilities) - 1}")
        condition_log_prob = torch.log(self.probabilities[condition]).float()

        def noise() -> torch.Tensor:
            return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)

        x = noise().to(store).float()
        cond_dev = condition.to(device)
        chain = [x.to(store)]
        log_probs = []
        for t in self.timesteps.tolist():
            t_batch = torch.full((len(indices),), t, dtype=torch.long, device=device)
            model_output = self.backend.predict(x, t_batch, cond_dev)
            out = self.scheduler.step(model_output, t_batch, x, noise=noise(), sample_dtype=store)
            x = out.prev_sample
            chain.append(x.to(store))
            log_probs.append(out.log_prob)
        images = self.backend.decode(x)
        return TrajectoryBatch(
            image_index=indices,
            seed=seeds,
            condition=condition.numpy().astype(np.int64),
            condition_log_prob=condition_log_prob.numpy(),
            latents=torch.stack(chain, dim=1).cpu().numpy(),
            log_prob=torch.stack(log_probs, dim=1).float().cpu().numpy(),
            images=images,
        )


def transition_log_prob(
    backend: DiffusionBackend,
    scheduler: DDIMLogProbScheduler,
    latents_t: torch.Tensor,
    latents_prev: torch.Tensor,
    timestep: torch.Tensor,
    condition: torch.Tensor,
) -> DDIMLogProbStepOutput:
    """Score stored transitions x_t -> x_{t-1} under the backend's current weights.

    ``timestep`` and ``condition`` have one entry per row. The scheduler must have the stored
    grid (``set_timesteps(steps)``) and the stored eta/min_std. Gradients flow to the backend's
    policy when called outside ``torch.no_grad``. Returns mean, std and ``log_prob``
    (:data:`LOG_PROB_CONVENTION` units).
    """
    device = backend.device
    latents_t = latents_t.to(device=device, dtype=torch.float32)
    latents_prev = latents_prev.to(device=device, dtype=torch.float32)
    timestep = timestep.to(device=device, dtype=torch.long)
    model_output = backend.predict(latents_t, timestep, condition.to(device=device, dtype=torch.long))
    return scheduler.step(model_output, timestep, latents_t, prev_sample=latents_prev)


def scheduler_for_trajectories(trajectories: Any) -> DDIMLogProbScheduler:
    """The exact step distribution a round file was sampled with (for the trainer's re-evaluation).

    ``trajectories`` is an open :class:`marsdiff.io.trajectories.TrajectoryFile`. The scheduler
    is rebuilt from the stored training config, eta and min_std, its grid set to the stored
    number of steps and checked against the stored timesteps and sigmas.
    """
    stored = dict(trajectories.scheduler_config)
    ours = stored.pop("marsdiff", None)
    if not ours:
        raise MarsdiffError(f"{trajectories.path}: no marsdiff scheduler settings stored")
    scheduler = DDIMLogProbScheduler.from_config(stored, eta=float(ours["eta"]), min_std=float(ours["min_std"]))
    timesteps = scheduler.set_timesteps(trajectories.num_steps)
    if scheduler.config["alphas_cumprod_sha"] != ours["alphas_cumprod_sha"] or not np.array_equal(
        timesteps.numpy(), trajectories.array("timesteps")
    ):
        raise MarsdiffError(f"{trajectories.path}: stored noise schedule cannot be rebuilt (different diffusers version?)")
    if not np.allclose(scheduler.std(timesteps).numpy(), trajectories.array("std"), rtol=1e-6, atol=0):
        raise MarsdiffError(f"{trajectories.path}: stored step sigmas differ from the rebuilt scheduler")
    return scheduler


def config_hash(cfg: Mapping[str, Any]) -> str:
    """SHA-256 (16 hex) of a config mapping as sorted-key JSON (the stage's params text)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_name(round_index: int, index: int) -> str:
    return f"r{round_index:03d}_{index:05d}.png"


def sample_round(
    backend: DiffusionBackend,
    settings: SamplingSettings,
    num_images: int,
    trajectories_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    samples_csv: str | os.PathLike,
    round_index: int = 0,
    stage_config: Mapping[str, Any] | None = None,
    compression: str = "gzip",
    compression_level: int = 4,
) -> dict[str, Any]:
    """Sample one round: trajectories.h5, images/*.png and samples.csv, all written atomically."""
    from marsdiff.data.images import save_png
    from marsdiff.io.atomic import atomic_dir, atomic_path
    from marsdiff.io.trajectories import TrajectoryHeader, write_trajectories

    if num_images < 1:
        raise MarsdiffError("sampling.images_per_round must be >= 1")
    sampler = RecordingSampler(backend, settings)
    names = backend.conditions()
    header = TrajectoryHeader(
        num_images=num_images,
        timesteps=sampler.timesteps.numpy(),
        prev_timesteps=sampler.scheduler.prev_timesteps.numpy(),
        std=sampler.step_std.numpy(),
        latent_shape=tuple(backend.latent_shape),
        condition_names=names,
        config_hash=config_hash(stage_config or {}),
        model_hash=backend.model_hash(),
        backend=backend.kind,
        scheduler_config={**backend.scheduler_config, "marsdiff": sampler.scheduler.config},
        round_index=round_index,
        latent_dtype=settings.store_dtype,
        compression=compression,
        compression_level=compression_level,
        extra={"sampling": asdict(settings), "backend": backend.describe()},
    )
    rows = []
    with write_trajectories(trajectories_path, header) as writer, atomic_dir(images_dir) as tmp_images:
        for batch in sampler.sample(num_images, round_index=round_index):
            writer.write(batch.latents, batch.log_prob, batch.condition, batch.condition_log_prob, batch.seed, batch.image_index)
            for j, index in enumerate(batch.image_index.tolist()):
                name = image_name(round_index, index)
                save_png(Path(tmp_images) / name, batch.images[j])
                rows.append(
                    {
                        "image_id": name[:-4],
                        "file": name,
                        "image_index": index,
                        "condition": int(batch.condition[j]),
                        "condition_name": names[int(batch.condition[j])],
                        "condition_log_prob": f"{float(batch.condition_log_prob[j]):.6f}",
                        "seed": int(batch.seed[j]),
                        "chain_log_prob": f"{float(batch.log_prob[j].sum()):.6f}",
                    }
                )
            log.info("round %03d: %d/%d images", round_index, len(rows), num_images)
    with atomic_path(samples_csv) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer_csv = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer_csv.writeheader()
            writer_csv.writerows(rows)
    return {"images": num_images, "steps": settings.steps, "log_prob_convention": LOG_PROB_CONVENTION}


__all__ = [
    "SamplingSettings",
    "RecordingSampler",
    "TrajectoryBatch",
    "condition_probabilities",
    "image_seeds",
    "transition_log_prob",
    "scheduler_for_trajectories",
    "sample_round",
    "config_hash",
]


def sample_round_from_config(
    stage_config: Mapping[str, Any],
    model_dir: str | os.PathLike | None,
    trajectories_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    samples_csv: str | os.PathLike,
    round_index: int = 0,
) -> dict[str, Any]:
    """The ``sample_round`` stage: ``stage_config`` holds the ``sampling`` and ``model`` sections."""
    from marsdiff.diffusion.backends import BASE_MODEL_DIR, load_backend

    if round_index != 0:
        raise MarsdiffError(
            f"round {round_index:03d}: sampling from a tuned policy needs the update_round stage, not built yet; "
            "only round 000 (the base model) can be sampled"
        )
    sampling = dict(stage_config.get("sampling") or {})
    model_cfg = dict(stage_config.get("model") or {})
    backend = load_backend(model_cfg, model_dir=model_dir or BASE_MODEL_DIR, device=sampling.get("device", "auto"))
    store = sampling.get("store") or {}
    return sample_round(
        backend,
        SamplingSettings.from_config(sampling),
        num_images=int(sampling.get("images_per_round", 64)),
        trajectories_path=trajectories_path,
        images_dir=images_dir,
        samples_csv=samples_csv,
        round_index=round_index,
        stage_config=stage_config,
        compression=str(store.get("compression", "gzip")),
        compression_level=int(store.get("compression_level", 4)),
    )
