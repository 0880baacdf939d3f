"""The HDF5 trajectory store: round trip, atomic writes, foreign/truncated file detection, and a
replay buffer whose memory stays flat as round files accumulate."""

from __future__ import annotations

import os
import tracemalloc

import h5py
import numpy as np
import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.io.trajectories import (
    FORMAT_VERSION,
    LOG_PROB_CONVENTION,
    TrajectoryHeader,
    open_trajectories,
    write_trajectories,
)
from marsdiff.rl.replay import TransitionBuffer

SHAPE = (1, 8, 8)
STEPS = 5


GRID = np.arange(STEPS)[::-1] * 200
PREV = np.r_[np.arange(STEPS - 1)[::-1] * 200, -1]


def header(n: int, **overrides) -> TrajectoryHeader:
    fields = dict(
        num_images=n,
        num_steps=STEPS,
        latent_shape=SHAPE,
        action_names=("eta", "timestep_power"),
        condition_names=["small", "large"],
        config_hash="cfg123",
        model_hash="model456",
        backend="pixel",
        scheduler_config={"num_train_timesteps": 1000},
        compression="gzip",
        compression_level=4,
    )
    fields.update(overrides)
    return TrajectoryHeader(**fields)


def fake_round(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "latents": rng.standard_normal((n, STEPS + 1, *SHAPE)).astype(np.float32),
        "log_prob": rng.standard_normal((n, STEPS)).astype(np.float32),
        "timesteps": np.tile(GRID, (n, 1)),
        "prev_timesteps": np.tile(PREV, (n, 1)),
        "std": rng.uniform(0.01, 1.0, (n, STEPS)).astype(np.float32),
        "condition": rng.integers(0, 2, n),
        "seed": rng.integers(0, 2**62, n),
        "eta": rng.uniform(0.1, 1.5, n).astype(np.float32),
        "guidance_scale": np.ones(n, dtype=np.float32),
        "noise_scale": np.ones(n, dtype=np.float32),
        "actions": rng.standard_normal((n, 2)).astype(np.float32),
        "plan_log_prob": {"condition": np.full(n, np.log(0.5), dtype=np.float32),
                          "knobs": rng.standard_normal(n).astype(np.float32)},
    }


def _sliced(data: dict, rows) -> dict:
    return {k: ({kk: vv[rows] for kk, vv in v.items()} if isinstance(v, dict) else v[rows]) for k, v in data.items()}


def write_round(path, n: int, seed: int = 0, batch: int = 3, **overrides) -> dict[str, np.ndarray]:
    data = fake_round(n, seed)
    with write_trajectories(path, header(n, **overrides)) as writer:
        for lo in range(0, n, batch):
            writer.write(**_sliced(data, slice(lo, lo + batch)))
    return data


def test_round_trip(tmp_path):
    path = tmp_path / "trajectories.h5"
    data = write_round(path, 7)
    with open_trajectories(path) as f:
        assert f.num_images == 7 and f.num_steps == STEPS and f.latent_shape == SHAPE
        attrs = f.attrs
        assert attrs["format_version"] == FORMAT_VERSION
        assert attrs["log_prob_convention"] == LOG_PROB_CONVENTION == "mean_per_dim_nats"
        assert attrs["log_prob_dims"] == 64 and attrs["latent_dtype"] == "float32"
        assert attrs["config_hash"] == "cfg123" and attrs["model_hash"] == "model456"
        assert f.condition_names == ["small", "large"]
        for i in range(7):
            np.testing.assert_array_equal(f.image_latents(i), data["latents"][i])
        np.testing.assert_array_equal(f.array("log_prob/denoise"), data["log_prob"])
        for name in ("condition", "knobs"):
            np.testing.assert_array_equal(f.array(f"log_prob/{name}"), data["plan_log_prob"][name])
        for name in ("condition", "seed", "timesteps", "prev_timesteps", "std", "actions"):
            np.testing.assert_array_equal(f.array(name), data[name])
        for name in ("eta", "guidance_scale", "noise_scale"):
            np.testing.assert_array_equal(f.array(f"knobs/{name}"), data[name])
        np.testing.assert_array_equal(f.array("image_index"), np.arange(7))
        assert f.action_names == ["eta", "timestep_power"]
        units = {name: f.handle[f"log_prob/{name}"].attrs["unit"] for name in ("denoise", "condition", "knobs")}
        assert units == {"denoise": "mean_per_dim_nats", "condition": "nats", "knobs": "nats"}
        assert f.handle["latents"].fletcher32 and f.handle["log_prob/denoise"].fletcher32
        chunks = f.handle["latents"].chunks
        assert chunks == (1, STEPS + 1, *SHAPE), "one chunk per image"
        assert f.handle["latents"].compression == "gzip"


def test_float16_storage(tmp_path):
    path = tmp_path / "t.h5"
    data = write_round(path, 2, latent_dtype="float16")
    with open_trajectories(path) as f:
        assert f.image_latents(0).dtype == np.float16
        np.testing.assert_allclose(f.image_latents(1), data["latents"][1], atol=2e-3)


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "trajectories.h5"
    with pytest.raises(RuntimeError):
        with write_trajectories(path, header(4)) as writer:
            writer.write(**_sliced(fake_round(4), slice(0, 2)))
            raise RuntimeError("sampler crashed")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_write_is_refused_and_leaves_no_file(tmp_path):
    path = tmp_path / "trajectories.h5"
    with pytest.raises(MarsdiffError, match="2 of 4"):
        with write_trajectories(path, header(4)) as writer:
            writer.write(**_sliced(fake_round(4), slice(0, 2)))
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_detected(tmp_path):
    path = tmp_path / "trajectories.h5"
    write_round(path, 6)
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(MarsdiffError, match="truncated or corrupt"):
        open_trajectories(path)


def test_flipped_byte_in_a_chunk_is_a_checksum_error(tmp_path):
    path = tmp_path / "trajectories.h5"
    write_round(path, 3, compression="none")
    with h5py.File(path, "r") as f:
        offset = f["latents"].id.get_chunk_info(1).byte_offset
    with open(path, "r+b") as handle:
        handle.seek(offset + 40)
        byte = handle.read(1)
        handle.seek(offset + 40)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with open_trajectories(path) as f:
        np.testing.assert_array_equal(f.image_latents(0).shape, (STEPS + 1, *SHAPE))  # other chunks still read
        with pytest.raises(MarsdiffError, match="checksum") as info:
            f.image_latents(1)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["foreign_hdf5", "not_hdf5", "empty", "incomplete", "old_version", "future_version"])
def test_foreign_or_broken_files_are_detected(tmp_path, kind):
    path = tmp_path / "trajectories.h5"
    if kind == "foreign_hdf5":
        with h5py.File(path, "w") as f:
            f["data"] = np.zeros(3)
        pattern = "not a marsdiff trajectory file"
    elif kind == "not_hdf5":
        path.write_text("image_id,file\n")
        pattern = "not a readable HDF5 file"
    elif kind == "empty":
        path.write_bytes(b"")
        pattern = "not a readable HDF5 file"
    else:
        write_round(path, 2)
        with h5py.File(path, "r+") as f:
            if kind == "incomplete":
                f.attrs["complete"] = False
            elif kind == "old_version":
                f.attrs["format_version"] = FORMAT_VERSION - 1
            else:
                f.attrs["format_version"] = FORMAT_VERSION + 1
        pattern = {"incomplete": "incomplete", "old_version": "an older trajectory format",
                   "future_version": "an unknown trajectory format"}[kind]
    with pytest.raises(MarsdiffError, match=pattern) as info:
        open_trajectories(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(MarsdiffError, match="not found"):
        open_trajectories(tmp_path / "nope.h5")


def test_buffer_yields_every_transition_once_shuffled(tmp_path):
    paths = [tmp_path / f"round_{r:03d}.h5" for r in range(3)]
    rounds = [write_round(p, 4 + r, seed=r) for r, p in enumerate(paths)]
    with TransitionBuffer(paths, block_images=3) as buffer:
        assert buffer.num_transitions == (4 + 5 + 6) * STEPS
        batches = list(buffer.minibatches(batch_size=8, seed=1))
    assert all(len(b) == 8 for b in batches[:-1])
    seen = set()
    steps_in_order = []
    for b in batches:
        for j in range(len(b)):
            key = (int(b.file_index[j]), int(b.image_index[j]), int(b.step_index[j]))
            assert key not in seen
            seen.add(key)
            data = rounds[key[0]]
            np.testing.assert_array_equal(b.latents[j], data["latents"][key[1], key[2]])
            np.testing.assert_array_equal(b.next_latents[j], data["latents"][key[1], key[2] + 1])
            assert b.log_prob[j] == data["log_prob"][key[1], key[2]]
            assert b.condition[j] == data["condition"][key[1]]
            assert b.eta[j] == data["eta"][key[1]]
            assert b.timestep[j] == (STEPS - 1 - key[2]) * 200
            steps_in_order.append(key[2])
    assert len(seen) == buffer.num_transitions
    assert steps_in_order != sorted(steps_in_order), "transitions are shuffled"


def test_buffer_step_subsets_select_each_images_steps(tmp_path):
    """DDPO's timestep fraction: only the chosen steps of each image come out, with their grid."""
    path = tmp_path / "r.h5"
    data = fake_round(3)
    data["timesteps"] = np.array([[900, 700, 500, 300, 100], [800, 600, 400, 200, 0], [999, 750, 500, 250, 1]])
    with write_trajectories(path, header(3)) as writer:
        writer.write(**data)
    chosen = {(0, 0): np.array([1, 3]), (0, 1): np.array([0]), (0, 2): np.array([2, 3, 4])}
    with TransitionBuffer([path]) as buffer:
        batch = next(buffer.minibatches(batch_size=100, seed=0, steps=chosen))
    got = sorted(zip(batch.image_index.tolist(), batch.step_index.tolist(), batch.timestep.tolist()))
    expected = sorted((i, k, int(data["timesteps"][i, k])) for (_, i), ks in chosen.items() for k in ks)
    assert got == expected


def test_buffer_rejects_mismatched_rounds(tmp_path):
    write_round(tmp_path / "a.h5", 2)
    data = fake_round(2)
    data["latents"] = data["latents"][:, :, :, :4, :4]
    with write_trajectories(tmp_path / "b.h5", header(2, latent_shape=(1, 4, 4))) as writer:
        writer.write(**data)
    with pytest.raises(MarsdiffError, match="differ"):
        TransitionBuffer([tmp_path / "a.h5", tmp_path / "b.h5"])


def _peak_bytes_iterating(paths) -> int:
    tracemalloc.start()
    try:
        with TransitionBuffer(paths, block_images=4) as buffer:
            for _ in buffer.minibatches(batch_size=16, seed=0):
                pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_buffer_memory_stays_flat_as_rounds_accumulate(tmp_path):
    """Peak memory depends on the block size, not on how many round files there are."""
    paths = []
    for r in range(8):
        path = tmp_path / f"round_{r:03d}.h5"
        write_round(path, 24, seed=r)
        paths.append(path)
    two = _peak_bytes_iterating(paths[:2])
    eight = _peak_bytes_iterating(paths)
    all_latents = 8 * 24 * (STEPS + 1) * int(np.prod(SHAPE)) * 4
    assert eight < 1.5 * two + 64_000, (two, eight)
    assert eight < all_latents / 2, "the buffer must not load every file"
