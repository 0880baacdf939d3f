"""The RL replay buffer: shuffled minibatches of single transitions (image, step) from round files.

:class:`TransitionBuffer` reads any number of trajectory files (:mod:`marsdiff.io.trajectories`,
the format) while holding only a bounded block of images in memory; each minibatch is a
:class:`TransitionBatch` of numpy arrays that the policy scores (:mod:`marsdiff.rl.actions`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.io.trajectories import open_trajectories


@dataclass
class TransitionBatch:
    """A minibatch of single transitions x_t -> x_{t-1}, as numpy arrays (float32 latents)."""

    latents: np.ndarray  # x_t, (B, C, H, W)
    next_latents: np.ndarray  # x_{t-1}
    timestep: np.ndarray  # (B,) int64
    prev_timestep: np.ndarray
    step_index: np.ndarray  # position in the chain, 0 = first denoising step
    condition: np.ndarray
    eta: np.ndarray  # (B,) the image's noise level (per-image schedules)
    guidance_scale: np.ndarray  # (B,) the image's guidance scale
    log_prob: np.ndarray  # stored (old-policy) log-prob, LOG_PROB_CONVENTION units
    file_index: np.ndarray  # which path of the buffer
    image_index: np.ndarray  # image row inside that file (joins rewards/advantages)

    def __len__(self) -> int:
        return int(self.timestep.shape[0])

    @classmethod
    def concatenate(cls, parts: Sequence["TransitionBatch"]) -> "TransitionBatch":
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.__dataclass_fields__})

    def take(self, rows: np.ndarray | slice) -> "TransitionBatch":
        return TransitionBatch(**{name: getattr(self, name)[rows] for name in self.__dataclass_fields__})


class TransitionBuffer:
    """Replay buffer over round files: shuffled minibatches of (image, step) transitions.

    Images of all files are visited in a random order, ``block_images`` at a time; every
    transition of a block is shuffled and cut into minibatches (a remainder carries over to the
    next block, so all batches but the last have ``batch_size`` rows). Memory is bounded by one
    block whatever the number of files: nothing else is loaded. With ``block_images`` at least
    the total number of images the shuffle is uniform over all transitions.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], block_images: int | None = None, max_block_bytes: int = 256 << 20):
        if not paths:
            raise MarsdiffError("replay buffer needs at least one trajectory file")
        self.files = [open_trajectories(p) for p in paths]
        first = self.files[0]
        for other in self.files[1:]:
            if other.latent_shape != first.latent_shape or other.num_steps != first.num_steps:
                raise MarsdiffError(
                    f"{other.path}: latent shape/steps {other.latent_shape}/{other.num_steps} differ from "
                    f"{first.path} ({first.latent_shape}/{first.num_steps})"
                )
        per_image = (first.num_steps + 1) * int(np.prod(first.latent_shape)) * 4
        self.block_images = int(block_images) if block_images else max(1, max_block_bytes // per_image)
        # Small per-step / per-image vectors are read once (a few bytes per image).
        self._meta = [
            {
                name: f.array(path)
                for name, path in (
                    ("timesteps", "timesteps"), ("prev_timesteps", "prev_timesteps"), ("condition", "condition"),
                    ("log_prob", "log_prob/denoise"), ("eta", "knobs/eta"), ("guidance_scale", "knobs/guidance_scale"),
                )
            }
            for f in self.files
        ]

    @property
    def num_transitions(self) -> int:
        return sum(f.num_images * f.num_steps for f in self.files)

    @property
    def num_steps(self) -> int:
        return self.files[0].num_steps

    def minibatches(
        self,
        batch_size: int,
        *,
        seed: int,
        drop_last: bool = False,
        steps: dict[tuple[int, int], np.ndarray] | None = None,
    ) -> Iterator[TransitionBatch]:
        """Shuffled minibatches; ``steps`` maps (file index, image index) to the step indices to
        use for that image (DDPO's timestep fraction), default every step."""
        rng = np.random.default_rng(seed)
        order = np.concatenate(
            [np.stack([np.full(f.num_images, k), np.arange(f.num_images)], axis=1) for k, f in enumerate(self.files)]
        )
        order = order[rng.permutation(len(order))]
        pending: TransitionBatch | None = None
        for start in range(0, len(order), self.block_images):
            block = self._load_block(order[start : start + self.block_images], steps)
            block = block.take(rng.permutation(len(block)))
            if pending is not None:
                block = TransitionBatch.concatenate([pending, block])
                pending = None
            full = (len(block) // batch_size) * batch_size
            for lo in range(0, full, batch_size):
                yield block.take(slice(lo, lo + batch_size))
            if full < len(block):
                pending = block.take(slice(full, len(block)))
        if pending is not None and len(pending) and not drop_last:
            yield pending

    def _load_block(self, pairs: np.ndarray, steps: dict[tuple[int, int], np.ndarray] | None) -> TransitionBatch:
        parts = []
        # Read in file order (h5py and the OS cache like sequential chunk access).
        for file_index, image_index in sorted(map(tuple, pairs.tolist())):
            f, meta = self.files[file_index], self._meta[file_index]
            chain = f.image_latents(image_index).astype(np.float32, copy=False)
            chosen = np.arange(f.num_steps) if steps is None else np.asarray(steps[(file_index, image_index)], dtype=np.int64)
            count = len(chosen)
            parts.append(
                TransitionBatch(
                    latents=chain[chosen],
                    next_latents=chain[chosen + 1],
                    timestep=meta["timesteps"][image_index][chosen],
                    prev_timestep=meta["prev_timesteps"][image_index][chosen],
                    step_index=chosen,
                    condition=np.full(count, meta["condition"][image_index]),
                    eta=np.full(count, meta["eta"][image_index], dtype=np.float32),
                    guidance_scale=np.full(count, meta["guidance_scale"][image_index], dtype=np.float32),
                    log_prob=meta["log_prob"][image_index][chosen],
                    file_index=np.full(count, file_index),
                    image_index=np.full(count, image_index),
                )
            )
        return TransitionBatch.concatenate(parts)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> "TransitionBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
