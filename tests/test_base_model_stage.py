"""The base model on the workflow's terms: safetensors-only loading, and the preview grid drawn
by its own stage (preview settings never retrain)."""

import json
import shutil

import pytest
import torch
from PIL import Image

from marsdiff.config import filled_section
from marsdiff.diffusion.pixel import MODEL_META_NAME, load_pixel_model
from marsdiff.diffusion.pretrain import pretrain_base
from marsdiff.diffusion.shipped import record_weights_hash
from marsdiff.errors import MarsdiffError
from marsdiff.stages.preview_base import write_preview
from test_pixel_model import TINY, write_reference


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    manifest = write_reference(root / "reference")
    out = root / "models" / "base"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain_base(manifest, out, filled_section("model.pixel", TINY), threads=1)
        record_weights_hash(out)  # what the stage adds after training (diffusion/shipped.py)
    finally:
        torch.set_num_threads(threads)
    return manifest, out


def test_training_without_preview_writes_the_model_only(trained):
    _, out = trained
    assert not (out / "samples.png").exists()
    train_config = json.loads((out / MODEL_META_NAME).read_text())["train_config"]
    assert train_config["train_steps"] == 4
    assert not {"grid_samples_per_class", "grid_reference_per_class", "grid_sampling_steps", "log_every"} & set(train_config), \
        "the metadata records only what the weights depend on"


def test_preview_draws_the_grid_its_settings_ask_for(trained, tmp_path):
    manifest, out = trained
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    write_preview(out, manifest, {"grid_samples_per_class": 1, "grid_reference_per_class": 0, "grid_sampling_steps": 2}, small, device="cpu", threads=1)
    write_preview(out, manifest, {"grid_samples_per_class": 3, "grid_reference_per_class": 1, "grid_sampling_steps": 2}, large, device="cpu", threads=1)
    with Image.open(small) as a, Image.open(large) as b:
        assert a.height == b.height > 3 * 64, "one row per size class"
        assert b.width > a.width, "more samples and real crops per row"


def test_a_model_without_safetensors_weights_is_refused(trained, tmp_path):
    _, out = trained
    model = tmp_path / "model"
    shutil.copytree(out, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    state = {k: v for k, v in load_pixel_model(model)[0].state_dict().items()}
    weights.unlink()
    torch.save(state, model / "unet" / "diffusion_pytorch_model.bin")  # a pickle: never loaded
    with pytest.raises(MarsdiffError, match=r"diffusion_pytorch_model\.safetensors: UNet weights file missing "
                                            r"\(found: config\.json, diffusion_pytorch_model\.bin\); marsdiff loads safetensors only"):
        load_pixel_model(model)
