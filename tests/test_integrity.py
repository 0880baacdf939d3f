"""Nothing corrupt is read (issue 23, items 2, 3 and 6): every file a later stage reads is refused
with one line naming it and the rule to re-run when it is truncated, garbled or changed; weights
and features carry a sha256 in their sidecar; weights files are byte-stable and follow the umask.

One finished "round" is written once per module (tiny models, in-process); each test copies it
and damages one file.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from marsdiff.diffusion.loading import UNET_WEIGHTS, load_backend
from marsdiff.diffusion.shipped import record_weights_hash
from marsdiff.errors import MarsdiffError
from marsdiff.io import reading
from marsdiff.io.feature_files import read_feature_set, write_feature_set
from marsdiff.io.weights import canonical_safetensors_bytes, save_safetensors
from marsdiff.rewards.round_scoring import _image_side
from marsdiff.rl.checkpoint import load_trainer_state, save_trainer_state
from marsdiff.rl.policy import RoundPolicy
from marsdiff.rl.round_update import make_optimiser
from marsdiff.stages.plot_experiment import read_round_metrics
from marsdiff.stages.score_round import read_round_samples
from marsdiff.stages.update_round import read_credit
from rl_helpers import experiment
from tiny_models import CLASS_NAMES, ddpm_config, tiny_pixel_backend, tiny_unet

EXTRACTOR = SimpleNamespace(name="mobilenet_v2", dim=8, cache_key=lambda: "k")
IMAGES = 4


def lora_policy(seed: int = 0) -> tuple[RoundPolicy, dict]:
    """A LoRA policy whose adapter has moved away from its zero start (B != 0)."""
    exp = experiment("lora_unet")
    policy = RoundPolicy.initial("lora_unet", tiny_pixel_backend(), exp)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.backend.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return policy, exp


def trained_optimiser(policy: RoundPolicy, exp: dict) -> torch.optim.Optimizer:
    """An optimiser with state tensors (one step on a fixed gradient)."""
    optimiser = make_optimiser(policy, exp)
    for p in policy.trainable_parameters():
        p.grad = torch.ones_like(p)
    optimiser.step()
    return optimiser


def write_pixel_model(model_dir: Path) -> Path:
    from diffusers import DDPMScheduler

    from marsdiff.diffusion.pixel import save_pixel_model

    meta = {"backend": "pixel", "image_size": 16, "channels": 1, "class_names": CLASS_NAMES}
    save_pixel_model(model_dir, tiny_unet(), DDPMScheduler.from_config(ddpm_config()), meta)
    record_weights_hash(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return write_finished(tmp_path_factory.mktemp("finished"))


def write_finished(root: Path) -> Path:
    """Every kind of artefact a later stage reads, as the stages write them (also the bad-input
    battery's, tests/bad_inputs.py)."""
    policy, exp = lora_policy()
    policy.save(root / "lora_policy", round_index=0)
    save_trainer_state(root / "lora_policy", trained_optimiser(policy, exp))
    knobs = RoundPolicy.initial("scheduler_policy", tiny_pixel_backend(), experiment("scheduler_policy"))
    knobs.value_table = np.arange(12, dtype=np.float64).reshape(3, 4)
    knobs.save(root / "knob_policy", round_index=0)
    features = np.random.default_rng(0).normal(size=(6, 8))
    write_feature_set(features, [f"c{i}" for i in range(6)], root / "features" / "reference" / "mobilenet_v2.npy", EXTRACTOR)
    pd.DataFrame({"image_index": range(IMAGES), "credit": [0.1, -0.2, 0.3, 0.0]}).to_csv(root / "rewards.csv", index=False)
    (root / "reward_summary.json").write_text(json.dumps({"set_reward": 0.5, "terms": {"kid": 0.1}}))
    (root / "metrics.json").write_text(json.dumps({"experiment": "e", "round": 0, "set_reward": 0.5}))
    images = root / "images"
    images.mkdir()
    for i in range(IMAGES):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(images / f"img_{i}.png")
    pd.DataFrame({"image_id": [f"img_{i}" for i in range(IMAGES)], "file": [f"img_{i}.png" for i in range(IMAGES)],
                  "image_index": range(IMAGES)}).to_csv(root / "samples.csv", index=False)
    write_pixel_model(root / "base")
    return root


@pytest.fixture()
def run(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


# ------------------------------------------------------------------------------------------------
# How each file is read by the stage that consumes it


def load_lora_policy(run: Path) -> None:
    RoundPolicy.load(run / "lora_policy", tiny_pixel_backend())


def load_knob_policy(run: Path) -> None:
    RoundPolicy.load(run / "knob_policy", tiny_pixel_backend())


def load_state(run: Path) -> None:
    policy, exp = lora_policy()
    load_trainer_state(run / "lora_policy", make_optimiser(policy, exp))


LOADERS = {
    "lora_policy/lora/pytorch_lora_weights.safetensors": (load_lora_policy, "update_round"),
    "lora_policy/lora/adapter_model.safetensors": (load_lora_policy, "update_round"),
    "lora_policy/lora/adapter_config.json": (load_lora_policy, "update_round"),
    "lora_policy/lora/marsdiff_adapter.json": (load_lora_policy, "update_round"),
    "lora_policy/policy.json": (load_lora_policy, "update_round"),
    "knob_policy/generation.safetensors": (load_knob_policy, "update_round"),
    "knob_policy/value.safetensors": (load_knob_policy, "update_round"),
    "knob_policy/policy.json": (load_knob_policy, "update_round"),
    "lora_policy/trainer_state.safetensors": (load_state, "update_round"),
    "lora_policy/trainer_state.json": (load_state, "update_round"),
    "features/reference/mobilenet_v2.npy": (lambda run: read_feature_set(run / "features/reference/mobilenet_v2.npy"),
                                            "extract_features"),
    "features/reference/mobilenet_v2.json": (lambda run: read_feature_set(run / "features/reference/mobilenet_v2.npy"),
                                             "extract_features"),
    "rewards.csv": (lambda run: read_credit(run / "rewards.csv", IMAGES), "score_round"),
    # update_round reads the summary with exactly this call (stages/update_round.py)
    "reward_summary.json": (lambda run: reading.read_json(run / "reward_summary.json", "reward summary", "score_round"),
                            "score_round"),
    "metrics.json": (lambda run: read_round_metrics([run / "metrics.json"]), "update_round"),
    "samples.csv": (lambda run: read_round_samples(run / "samples.csv", run / "images"), "sample_round"),
    "images/img_2.png": (lambda run: _image_side(run / "images" / "img_2.png"), "sample_round"),
    "base/unet/diffusion_pytorch_model.safetensors": (
        lambda run: load_backend({"backend": "pixel"}, run / "base", device="cpu"), "pretrain_base"),
    "base/marsdiff_model.json": (lambda run: load_backend({"backend": "pixel"}, run / "base", device="cpu"),
                                 "pretrain_base"),
}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(path: Path) -> None:
    """Flip one bit in the second half (the data, past any header)."""
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x10
    path.write_bytes(bytes(data))


def garble(path: Path) -> None:
    """Bytes that are no text in any encoding a reader expects, in the middle of the file."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4] = b"\xff\xfe\x00\x9c"
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    path.write_bytes(b"")


DAMAGE = {"truncated": truncate, "flipped": flip, "garbled": garble, "empty": empty}
# A text file with one flipped bit can still parse (a digit changes): text files are garbled
# instead; binary files are flipped (what the hashes must catch).
CASES = [(name, kind) for name in LOADERS for kind in ("truncated", "empty")
         + (("garbled",) if name.endswith((".json", ".csv")) else ("flipped",))]


def assert_one_line_naming(err: MarsdiffError, path: Path, rule: str) -> None:
    message = str(err)
    assert "\n" not in message and str(path) in message, message
    assert "Traceback" not in message and f"snakemake --forcerun {rule}" in message, message


def test_the_finished_round_reads_back(run):
    for load, _ in LOADERS.values():
        load(run)


@pytest.mark.parametrize("name,kind", CASES, ids=[f"{kind}-{name}" for name, kind in CASES])
def test_a_damaged_file_is_one_line_naming_it_and_its_rule(run, name, kind):
    load, rule = LOADERS[name]
    DAMAGE[kind](run / name)
    with pytest.raises(MarsdiffError) as info:
        load(run)
    assert_one_line_naming(info.value, run / name, rule)


# ------------------------------------------------------------------------------------------------
# Hashes in the sidecars


SIDECAR_HASHES = {
    "lora_policy/lora/marsdiff_adapter.json": (["files_sha256"], load_lora_policy, "update_round"),
    "knob_policy/policy.json": (["files_sha256"], load_knob_policy, "update_round"),
    "lora_policy/trainer_state.json": (["tensors_sha256"], load_state, "update_round"),
    "features/reference/mobilenet_v2.json": (
        ["sha256"], LOADERS["features/reference/mobilenet_v2.npy"][0], "extract_features"),
    "base/marsdiff_model.json": (["weights_sha256"], LOADERS["base/marsdiff_model.json"][0], "pretrain_base"),
}


@pytest.mark.parametrize("sidecar", SIDECAR_HASHES)
def test_a_sidecar_without_its_hash_is_refused(run, sidecar):
    keys, load, rule = SIDECAR_HASHES[sidecar]
    info = json.loads((run / sidecar).read_text())
    for key in keys:
        assert key in info, f"{sidecar} records no {key}"
        del info[key]
    (run / sidecar).write_text(json.dumps(info))
    with pytest.raises(MarsdiffError, match=r"records no sha256 .*older marsdiff.*snakemake --forcerun " + rule) as err:
        load(run)
    assert "\n" not in str(err.value) and sidecar.rsplit("/", 1)[-1] in str(err.value)


def test_flipped_bytes_in_weights_that_still_parse_are_caught(run):
    """The cases the issue found read silently: one changed weight, a file that loads fine."""
    from safetensors.torch import load_file

    weights = run / "lora_policy/lora/pytorch_lora_weights.safetensors"
    (length,) = struct.unpack("<Q", weights.read_bytes()[:8])
    data = bytearray(weights.read_bytes())
    data[8 + length + 5] ^= 0x01  # a low mantissa bit of the first tensor
    weights.write_bytes(bytes(data))
    assert load_file(str(weights)), "still a valid safetensors file"
    with pytest.raises(MarsdiffError, match="does not match the sha256 in marsdiff_adapter.json"):
        load_lora_policy(run)

    unet = run / "base" / UNET_WEIGHTS
    data = bytearray(unet.read_bytes())
    data[-3] ^= 0x01
    unet.write_bytes(bytes(data))
    assert load_file(str(unet))
    with pytest.raises(MarsdiffError, match=r"diffusion_pytorch_model.safetensors: content does not match.*pretrain_base"):
        load_backend({"backend": "pixel"}, run / "base", device="cpu")

    npy = run / "features/reference/mobilenet_v2.npy"
    array = np.load(npy)
    array[2, 3] += 1e-3
    np.save(npy, array)
    with pytest.raises(MarsdiffError, match=r"mobilenet_v2.npy: content does not match.*extract_features"):
        read_feature_set(npy)


# ------------------------------------------------------------------------------------------------
# The translation layer itself: a corrupt file whose recorded hash matches (a writer's bug) or
# that has no sidecar is still one line, whatever the library raises.


def _write(path: Path, kind: str) -> None:
    if kind == "safetensors":
        save_safetensors({"w": torch.arange(64, dtype=torch.float32)}, path)
    elif kind == "npy":
        np.save(path, np.arange(64, dtype=np.float32))
    elif kind == "json":
        path.write_text(json.dumps({"a": [1, 2, 3], "b": "text"}))
    elif kind == "csv":
        pd.DataFrame({"a": range(20), "b": range(20)}).to_csv(path, index=False)
    elif kind == "png":
        Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(path)


READERS = {
    "safetensors": lambda p: reading.load_safetensors(p, "weights", "update_round"),
    "npy": lambda p: reading.load_npy(p, "feature array", "extract_features"),
    "json": lambda p: reading.read_json(p, "summary", "score_round"),
    "csv": lambda p: reading.read_csv(p, "table", "score_round", columns=("a", "b")),
    "png": lambda p: reading.open_image(p, "image", "sample_round"),
}


@pytest.mark.parametrize("kind", READERS)
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbled"])
def test_each_loader_error_becomes_one_line(tmp_path, kind, damage):
    path = tmp_path / f"file.{kind}"
    _write(path, kind)
    READERS[kind](path)  # intact: reads
    if damage == "truncated" and kind == "csv":
        # A CSV cut between rows still parses (the row count is the reader's to check: see
        # rewards.csv above); cut inside the header, column b is gone.
        path.write_bytes(path.read_bytes()[:2])
    elif damage == "garbled" and kind in ("safetensors", "npy"):
        path.write_bytes(b"\x00garbage" + path.read_bytes()[9:])  # a header that is no header
    else:
        DAMAGE[damage](path)
    with pytest.raises(MarsdiffError) as info:
        READERS[kind](path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:") and "snakemake --forcerun" in message, message


def test_json_of_the_wrong_shape_names_what_it_holds(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps([{"round": 0, "set_reward": 1.0}]))
    with pytest.raises(MarsdiffError, match=r"metrics.json: round metrics holds a list, expected a JSON object"):
        read_round_metrics([path])
    path.write_text(json.dumps({"round": 0}))
    with pytest.raises(MarsdiffError, match=r"metrics.json: round metrics lacks 'set_reward'"):
        read_round_metrics([path])


def test_a_truncated_samples_file_blames_the_file_not_the_setting(run):
    lines = (run / "samples.csv").read_text().splitlines()
    (run / "samples.csv").write_text("\n".join(lines[:2]) + "\n")  # header + one row; 4 images on disk
    with pytest.raises(MarsdiffError) as info:
        read_round_samples(run / "samples.csv", run / "images")
    assert "truncated" in str(info.value) and "images_per_round" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# Byte-stable files


def test_the_same_weights_give_the_same_bytes(tmp_path):
    """safetensors stores metadata in hash-map order: the same LoRA policy saved repeatedly gave
    different bytes. Saved six times, every file must be identical."""
    policy, exp = lora_policy()
    optimiser = trained_optimiser(policy, exp)
    saved = []
    for i in range(6):
        policy.save(tmp_path / f"p{i}", round_index=0)
        save_trainer_state(tmp_path / f"p{i}", optimiser)
        saved.append({p.relative_to(tmp_path / f"p{i}"): p.read_bytes() for p in (tmp_path / f"p{i}").rglob("*") if p.is_file()})
    assert all(files == saved[0] for files in saved[1:])
    assert Path("lora/pytorch_lora_weights.safetensors") in saved[0]


def test_canonical_header_sorts_metadata_and_keeps_the_tensors(tmp_path):
    from safetensors.torch import load, save

    tensors = {"b": torch.ones(3), "a": torch.arange(4, dtype=torch.float64)}
    metadata = {f"key{i}": str(i) for i in range(8)}
    raw = {save(tensors, metadata=metadata) for _ in range(20)}
    assert len(raw) > 1, "safetensors alone is not byte-stable (what this guards against)"
    canonical = {canonical_safetensors_bytes(data) for data in raw}
    assert len(canonical) == 1
    (data,) = canonical
    (length,) = struct.unpack("<Q", data[:8])
    assert list(json.loads(data[8:8 + length])["__metadata__"]) == sorted(metadata) and length % 8 == 0
    loaded = load(data)
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["b"], tensors["b"])
    path = tmp_path / "w.safetensors"
    save_safetensors(tensors, path, metadata)
    assert path.read_bytes() == data


# ------------------------------------------------------------------------------------------------
# Permissions


@pytest.fixture()
def umask_002():
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def test_every_output_follows_the_umask(tmp_path, umask_002):
    """Under umask 002 every file the writers leave, weights included, is group-writable
    (safetensors and diffusers' save_pretrained create their files 0600)."""
    policy, exp = lora_policy()
    policy.save(tmp_path / "lora_policy", round_index=0)
    save_trainer_state(tmp_path / "lora_policy", trained_optimiser(policy, exp))
    knobs = RoundPolicy.initial("scheduler_policy", tiny_pixel_backend(), experiment("scheduler_policy"))
    knobs.value_table = np.zeros((3, 4))
    knobs.save(tmp_path / "knob_policy", round_index=0)
    write_feature_set(np.zeros((2, 8)), ["a", "b"], tmp_path / "features" / "f.npy", EXTRACTOR)
    write_pixel_model(tmp_path / "base")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert tmp_path / "base" / UNET_WEIGHTS in files and len(files) >= 12
    not_shared = [str(p.relative_to(tmp_path)) for p in files if not p.stat().st_mode & stat.S_IWGRP]
    assert not_shared == []
    # and the umask still removes what it should: nobody else may write
    assert not any(p.stat().st_mode & stat.S_IWOTH for p in files)


def test_sidecars_that_parse_but_describe_something_else_are_one_line(run):
    """Valid JSON with the wrong content: a policy description KnobPolicy cannot take, an adapter
    config whose rank does not fit the (intact) weights."""
    meta_path = run / "knob_policy/policy.json"
    meta = json.loads(meta_path.read_text())
    meta["generation"]["no_such_setting"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(MarsdiffError, match=r"policy.json: 'generation' does not describe a policy.*update_round") as info:
        load_knob_policy(run)
    assert "\n" not in str(info.value)

    config_path = run / "lora_policy/lora/marsdiff_adapter.json"
    config = json.loads(config_path.read_text())
    config["settings"]["rank"] = 2 * config["settings"]["rank"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(MarsdiffError, match=r"pytorch_lora_weights.safetensors: adapter weights do not fit") as info:
        load_lora_policy(run)
    assert "\n" not in str(info.value)


def test_a_listed_value_table_that_is_gone_is_refused(run):
    (run / "knob_policy/value.safetensors").unlink()
    with pytest.raises(MarsdiffError, match=r"value.safetensors: value table not found.*update_round"):
        load_knob_policy(run)
