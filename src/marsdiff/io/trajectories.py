"""The HDF5 trajectory store: one file per sampling round (the RL replay buffer that reads it is
:mod:`marsdiff.rl.replay`).

A file holds, per image, the whole denoising chain x_T .. x_0 on the image's own timestep grid,
one log-probability dataset per action type (denoising steps in
:data:`~marsdiff.diffusion.scheduler_logprob.LOG_PROB_CONVENTION`, the generation plan's
condition and knobs in nats), the plan's raw actions and knob values, and the seed. The layout and attributes are
documented in ``docs/trajectories.md``; :data:`FORMAT_VERSION` changes whenever they change.

Writing goes through :func:`write_trajectories` (a temporary file renamed on success, so a
crash never leaves a file at the target; every dataset carries a fletcher32 checksum).
:func:`open_trajectories` detects foreign, truncated
and incomplete files with a one-line :class:`~marsdiff.errors.MarsdiffError`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from marsdiff.errors import MarsdiffError
from marsdiff.faults import kill_point
from marsdiff.io.atomic import atomic_path

FORMAT_NAME = "marsdiff-trajectories"
# 2: per-image timestep grids, sigmas and knobs; one log-prob dataset per action type with its
# unit; the generation policy's raw actions; fletcher32 checksums on every dataset.
FORMAT_VERSION = 2
# Must equal marsdiff.diffusion.scheduler_logprob.LOG_PROB_CONVENTION; repeated here so that
# reading a file never imports torch.
LOG_PROB_CONVENTION = "mean_per_dim_nats"
LATENT_DTYPES = ("float32", "float16")
COMPRESSIONS = ("gzip", "lzf", "none")
# Log-prob datasets (group log_prob/) and their units. denoise: one value per step; the others
# one per image (the generation plan of marsdiff.diffusion.plan).
LOG_PROB_UNITS = {"denoise": LOG_PROB_CONVENTION, "condition": "nats", "knobs": "nats"}
# Per-image generation knobs stored in group knobs/ (see marsdiff.diffusion.plan.KNOB_NAMES).
STORED_KNOBS = ("eta", "guidance_scale", "noise_scale")

# Datasets every complete file has (per image: first dimension N).
_PER_IMAGE = (
    "latents", "condition", "seed", "image_index", "timesteps", "prev_timesteps", "std", "actions",
    *(f"log_prob/{name}" for name in LOG_PROB_UNITS), *(f"knobs/{name}" for name in STORED_KNOBS),
)


@dataclass
class TrajectoryHeader:
    """Everything fixed for a round file before the first image is written."""

    num_images: int
    num_steps: int
    latent_shape: tuple[int, int, int]
    condition_names: Sequence[str]
    config_hash: str
    model_hash: str
    backend: str
    scheduler_config: dict[str, Any]
    # sampling.store.compression and compression_level (the schema's defaults; no copy here)
    compression: str
    compression_level: int
    action_names: Sequence[str] = ()
    mode: str = "base"
    policy_hash: str = ""
    round_index: int = 0
    latent_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)


class TrajectoryWriter:
    """Fills an open file image by image (in any batch sizes); see :func:`write_trajectories`."""

    def __init__(self, handle: h5py.File, header: TrajectoryHeader):
        if header.latent_dtype not in LATENT_DTYPES:
            raise MarsdiffError(f"sampling.store.dtype: {header.latent_dtype!r} is not one of {LATENT_DTYPES}")
        if header.compression not in COMPRESSIONS:
            raise MarsdiffError(f"sampling.store.compression: {header.compression!r} is not one of {COMPRESSIONS}")
        self.handle, self.header = handle, header
        self.written = 0
        n, steps, shape = header.num_images, header.num_steps, tuple(header.latent_shape)
        # Fletcher32 on every dataset: a flipped byte in a chunk fails the read instead of
        # feeding the trainer silently wrong numbers.
        filters: dict[str, Any] = {"fletcher32": True}
        if header.compression == "gzip":
            # Byte-shuffle groups exponent bytes together: floats compress noticeably better.
            filters.update(compression="gzip", compression_opts=int(header.compression_level), shuffle=True)
        elif header.compression == "lzf":
            filters.update(compression="lzf", shuffle=True)
        # One chunk = one image's whole chain: the replay buffer reads whole images.
        handle.create_dataset(
            "latents", shape=(n, steps + 1, *shape), dtype=header.latent_dtype, chunks=(1, steps + 1, *shape), **filters
        )
        rows = max(1, min(n, 4096))
        per_step = {"timesteps": "int64", "prev_timesteps": "int64", "std": "float32", "log_prob/denoise": "float32"}
        for name, dtype in per_step.items():
            handle.create_dataset(name, shape=(n, steps), dtype=dtype, chunks=(rows, steps), **filters)
        per_image = {"condition": "int64", "seed": "int64", "image_index": "int64", "log_prob/condition": "float32",
                     "log_prob/knobs": "float32", **{f"knobs/{k}": "float32" for k in STORED_KNOBS}}
        for name, dtype in per_image.items():
            handle.create_dataset(name, shape=(n,), dtype=dtype, chunks=(rows,), fletcher32=True)
        k = len(header.action_names)
        if k:
            handle.create_dataset("actions", shape=(n, k), dtype="float32", chunks=(rows, k), fletcher32=True)
        else:  # no plan actions (base / LoRA modes): an empty dataset has no chunk to checksum
            handle.create_dataset("actions", shape=(n, 0), dtype="float32")
        handle["actions"].attrs["names"] = json.dumps(list(header.action_names))
        for name, unit in LOG_PROB_UNITS.items():
            handle[f"log_prob/{name}"].attrs["unit"] = unit
        handle.create_dataset(
            "condition_names", data=np.array(list(header.condition_names), dtype=object), dtype=h5py.string_dtype()
        )
        dims = int(np.prod(shape))
        attrs = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "log_prob_convention": LOG_PROB_CONVENTION,
            "log_prob_dims": dims,
            "latent_dtype": header.latent_dtype,
            "latent_shape": json.dumps(list(shape)),
            "num_images": n,
            "num_steps": steps,
            "round": int(header.round_index),
            "mode": header.mode,
            "policy_hash": header.policy_hash,
            "config_hash": header.config_hash,
            "model_hash": header.model_hash,
            "backend": header.backend,
            "scheduler_config": json.dumps(header.scheduler_config, sort_keys=True, default=str),
            "extra": json.dumps(header.extra, sort_keys=True, default=str),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "complete": False,
        }
        for key, value in attrs.items():
            handle.attrs[key] = value

    def write(self, **arrays: np.ndarray) -> None:
        """Append a batch of B images. Keyword arrays (numpy):

        latents (B, T+1, C, H, W); timesteps, prev_timesteps, std, log_prob (B, T) (log_prob:
        denoising, LOG_PROB_CONVENTION); condition, seed, image_index (B,); actions (B, K);
        plan_log_prob {"condition", "knobs"} -> (B,) nats; eta, guidance_scale, noise_scale (B,).
        """
        latents = np.asarray(arrays["latents"])
        batch = int(latents.shape[0])
        start, stop = self.written, self.written + batch
        if stop > self.header.num_images:
            raise ValueError(f"writing images {start}..{stop} into a file declared for {self.header.num_images}")
        expected = (self.header.num_steps + 1, *self.header.latent_shape)
        if tuple(latents.shape[1:]) != expected:
            raise ValueError(f"latents shape {latents.shape[1:]} != {expected}")
        plan_log_prob = arrays.get("plan_log_prob") or {}
        h = self.handle
        h["latents"][start:stop] = latents.astype(self.header.latent_dtype, copy=False)
        for name in ("timesteps", "prev_timesteps", "std"):
            h[name][start:stop] = np.asarray(arrays[name]).reshape(batch, self.header.num_steps)
        h["log_prob/denoise"][start:stop] = np.asarray(arrays["log_prob"], dtype=np.float32)
        for name in ("condition", "knobs"):
            h[f"log_prob/{name}"][start:stop] = np.asarray(plan_log_prob.get(name, np.zeros(batch)), dtype=np.float32)
        for name in ("condition", "seed"):
            h[name][start:stop] = np.asarray(arrays[name], dtype=np.int64)
        index = arrays.get("image_index")
        h["image_index"][start:stop] = np.arange(start, stop) if index is None else np.asarray(index, dtype=np.int64)
        for name in STORED_KNOBS:
            h[f"knobs/{name}"][start:stop] = np.asarray(arrays[name], dtype=np.float32)
        actions = np.asarray(arrays.get("actions", np.zeros((batch, 0))), dtype=np.float32).reshape(batch, -1)
        if actions.shape[1] != len(self.header.action_names):
            raise ValueError(f"{actions.shape[1]} actions per image, header names {len(self.header.action_names)}")
        h["actions"][start:stop] = actions
        self.written = stop
        kill_point("trajectories.batch")  # the kill tests' "killed while writing the .h5"

    def finish(self) -> None:
        if self.written != self.header.num_images:
            raise MarsdiffError(
                f"trajectory file got {self.written} of {self.header.num_images} declared images; not saved"
            )
        self.handle.attrs["complete"] = True


@contextlib.contextmanager
def write_trajectories(path: str | os.PathLike, header: TrajectoryHeader) -> Iterator[TrajectoryWriter]:
    """Open a writer; the file appears at ``path`` only after every declared image is written."""
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as handle:
            writer = TrajectoryWriter(handle, header)
            yield writer
            writer.finish()


class TrajectoryFile:
    """A validated, read-only round file. Arrays are read lazily (only what is asked for)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise MarsdiffError(f"{self.path}: trajectory file not found")
        try:
            self.handle = h5py.File(self.path, "r")
        except OSError as err:
            reason = str(err).split("(")[0].strip() or type(err).__name__
            raise MarsdiffError(f"{self.path}: not a readable HDF5 file, truncated or corrupt ({reason})") from None
        try:
            self._validate()
        except BaseException:
            self.handle.close()
            raise
        # Sizes stay known after close() (the buffer reports them once files are closed).
        self._num_images, self._num_steps = int(self.handle.attrs["num_images"]), int(self.handle.attrs["num_steps"])

    def _validate(self) -> None:
        attrs = self.handle.attrs
        if attrs.get("format") != FORMAT_NAME:
            raise MarsdiffError(f"{self.path}: not a marsdiff trajectory file (HDF5 attribute format != {FORMAT_NAME!r})")
        version = int(attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            age = "an older" if 0 <= version < FORMAT_VERSION else "an unknown"
            raise MarsdiffError(
                f"{self.path}: {age} trajectory format (version {version}; this marsdiff reads {FORMAT_VERSION}); "
                "re-run sample_round for this round"
            )
        if attrs.get("log_prob_convention") != LOG_PROB_CONVENTION:
            raise MarsdiffError(f"{self.path}: log-prob convention {attrs.get('log_prob_convention')!r} != {LOG_PROB_CONVENTION!r}")
        if not bool(attrs.get("complete", False)):
            raise MarsdiffError(f"{self.path}: incomplete trajectory file (the writer did not finish); re-run sampling")
        missing = [name for name in (*_PER_IMAGE, "condition_names") if name not in self.handle]
        if missing:
            raise MarsdiffError(f"{self.path}: trajectory file lacks datasets {missing}")
        n, steps = int(attrs["num_images"]), int(attrs["num_steps"])
        for name in _PER_IMAGE:
            if self.handle[name].shape[0] != n:
                raise MarsdiffError(f"{self.path}: dataset {name} has {self.handle[name].shape[0]} rows, expected {n}")
        if self.handle["latents"].shape[1] != steps + 1 or self.handle["log_prob/denoise"].shape[1] != steps:
            raise MarsdiffError(f"{self.path}: latents/log_prob do not match num_steps={steps}")
        for name, unit in LOG_PROB_UNITS.items():
            stored = _plain(self.handle[f"log_prob/{name}"].attrs.get("unit"))
            if stored != unit:
                raise MarsdiffError(f"{self.path}: log_prob/{name} is in {stored!r}, expected {unit!r}")

    # --- metadata ---------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return {key: _plain(value) for key, value in self.handle.attrs.items()}

    @property
    def num_images(self) -> int:
        return self._num_images

    @property
    def num_steps(self) -> int:
        return self._num_steps

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(json.loads(self.handle.attrs["latent_shape"]))

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return json.loads(self.handle.attrs["scheduler_config"])

    @property
    def action_names(self) -> list[str]:
        return list(json.loads(_plain(self.handle["actions"].attrs["names"])))

    @property
    def mode(self) -> str:
        return str(_plain(self.handle.attrs["mode"]))

    @property
    def condition_names(self) -> list[str]:
        return [s.decode() if isinstance(s, bytes) else str(s) for s in self.handle["condition_names"][()]]

    def array(self, name: str) -> np.ndarray:
        """A whole small dataset (per-image or per-step vectors, log_prob)."""
        return self._read(name, ())

    def image_latents(self, index: int) -> np.ndarray:
        """One image's chain x_T .. x_0, shape (T+1, C, H, W), in the stored dtype."""
        return self._read("latents", index)

    def _read(self, name: str, selection: Any) -> np.ndarray:
        try:
            return self.handle[name][selection]
        except (OSError, KeyError) as err:
            reason = " ".join(str(err).split())
            if "fletcher32" in reason.lower() or "checksum" in reason.lower() or "filter" in reason.lower():
                reason = f"checksum mismatch: the file is corrupt ({reason})"
            raise MarsdiffError(f"{self.path}: cannot read {name} ({reason})") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.handle.close()

    def __enter__(self) -> "TrajectoryFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_trajectories(path: str | os.PathLike) -> TrajectoryFile:
    """Open and validate a round file (raises MarsdiffError for foreign/truncated/incomplete files)."""
    return TrajectoryFile(path)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def bytes_per_trajectory(path: str | os.PathLike) -> float:
    """File size divided by the number of images (the benchmark's storage figure)."""
    with open_trajectories(path) as f:
        return os.path.getsize(path) / max(1, f.num_images)


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LOG_PROB_CONVENTION",
    "TrajectoryHeader",
    "TrajectoryWriter",
    "TrajectoryFile",
    "write_trajectories",
    "open_trajectories",
    "bytes_per_trajectory",
]
