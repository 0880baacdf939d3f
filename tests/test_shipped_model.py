"""The shipped base model: it matches the committed training code and default config, and
pretrain_base installs it only when it is what training would produce."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from marsdiff.config import filled_section, load_config
from marsdiff.diffusion import shipped, shipping
from marsdiff.diffusion.pixel import MODEL_META_NAME, load_pixel_model
from marsdiff.diffusion.pretrain import pretrain_base
from marsdiff.errors import MarsdiffError
from test_pixel_model import TINY, write_reference

STALE = "the shipped base model no longer matches: retrain it with `make base-checkpoint` (docs/base_model.md)"


def with_hashes(manifest: Path) -> Path:
    """images.csv as prepare_reference writes it: the manifest plus each image's sha256."""
    table = pd.read_csv(manifest)
    table["sha256"] = [hashlib.sha256((manifest.parent / p).read_bytes()).hexdigest() for p in table["path"]]
    index = manifest.parent / "images.csv"
    table.to_csv(index, index=False)
    return index


@pytest.fixture()
def tiny_shipped(tmp_path, one_torch_thread):
    """A tiny model trained by pretrain_base and shipped into a scratch folder."""
    index = with_hashes(write_reference(tmp_path / "reference"))
    trained = tmp_path / "trained"
    pretrain_base(index, trained, filled_section("model.pixel", TINY), threads=1,
                  code_version=shipping.training_code_version())
    folder = tmp_path / "shipped"
    log = tmp_path / "pretrain.log"
    log.write_text("step 4/4 loss 0.5\n")
    shipping.ship(trained, index, {**TINY, "shipped_checkpoint": "never"}, {"rows": [{"set": "x", "precision": 0.9}]},
                 log, "a test", folder=folder)
    return index, trained, folder


def test_the_shipped_model_matches_the_committed_code_and_default_config():
    provenance = shipped.read_provenance()
    assert shipping.training_code_version() == provenance["training_code_version"], STALE
    default = load_config(None)["model"]["pixel"]
    assert shipped.training_config(default) == provenance["train_config"], STALE
    weights = shipped.SHIPPED_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    assert shipped.file_digest(weights) == provenance["weights_sha256"], STALE
    meta = json.loads((shipped.SHIPPED_DIR / MODEL_META_NAME).read_text())
    assert meta["train_config"]["train_steps"] == provenance["train_config"]["train_steps"] == meta["training"]["steps"]
    # The provenance carries the issue-11 measurement, the training log and the loss curve.
    assert (shipped.SHIPPED_DIR / shipped.TRAINING_LOG_NAME).stat().st_size > 0
    assert len((shipped.SHIPPED_DIR / "loss.csv").read_text().splitlines()) == meta["training"]["steps"] + 1
    assert {row["set"] for row in provenance["assessment"]["rows"]} >= {"held-out crops (the target)"}


def test_the_shipped_model_was_trained_on_the_default_train_split(default_reference):
    out, _ = default_reference
    digest, images = shipped.train_split_digest(out / "images.csv")
    provenance = shipped.read_provenance()
    assert (digest, images) == (provenance["train_split_digest"], provenance["train_images"]), STALE


def test_install_when_everything_matches(tiny_shipped, tmp_path):
    index, trained, folder = tiny_shipped
    code = shipping.training_code_version()
    assert shipped.mismatches({**TINY, "device": "cuda"}, index, code, folder) == []  # the device trains nothing
    meta = shipped.install(tmp_path / "models" / "base", folder)
    unet, _, loaded_meta = load_pixel_model(tmp_path / "models" / "base")
    original, _, _ = load_pixel_model(trained)
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([5, 900]), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(unet(x, t, class_labels=c).sample, original(x, t, class_labels=c).sample)
    assert loaded_meta == meta and meta["installed_from"]["weights_sha256"] == shipped.read_provenance(folder)["weights_sha256"]
    assert (folder / shipped.TRAINING_LOG_NAME).read_text().startswith("step 4/4")


def test_every_difference_is_a_reason_to_train(tiny_shipped, tmp_path):
    index, _, folder = tiny_shipped
    code = shipping.training_code_version()
    reasons = shipped.mismatches({**TINY, "train_steps": 5}, index, code, folder)
    assert len(reasons) == 1 and "train_steps (4 shipped, 5 here)" in reasons[0]
    # other reference data: one image's content differs
    table = pd.read_csv(index)
    table.loc[0, "sha256"] = "0" * 64
    other = tmp_path / "other.csv"
    table.to_csv(other, index=False)
    assert any("train split" in r for r in shipped.mismatches(TINY, other, code, folder))
    assert any("training code differs" in r for r in shipped.mismatches(TINY, index, "0123456789abcdef", folder))
    # a corrupted weights file
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert any("not the file the provenance lists" in r for r in shipped.mismatches(TINY, index, code, folder))


#: The modules of the training path the digest covers, each reviewed as able to change the trained
#: weights. A module the training path newly imports fails the test below until it is reviewed:
#: listed here (it changes weights: the digest changes, retrain with `make base-checkpoint`) or
#: in shipped.WEIGHT_NEUTRAL_MODULES with its reason.
TRAINING_MODULES = {
    "data/__init__.py", "data/images.py", "data/manifest.py", "diffusion/__init__.py", "diffusion/augmentation.py",
    "diffusion/ema.py", "diffusion/lr_schedule.py", "diffusion/pixel.py", "diffusion/pixel_keys.py",
    "diffusion/pretrain.py", "diffusion/training_loss.py",
}


def _closure(*roots):
    from marsdiff.provenance import resolve_parts

    return {name for name, _ in resolve_parts(shipped.LIBRARY, shipped.LIBRARY.parent / "workflow" / "scripts", roots)}


def test_the_training_code_version_follows_the_training_modules():
    from marsdiff.provenance import REGISTRY

    files = set(REGISTRY[shipping.training_code_version()])
    assert files == TRAINING_MODULES
    # the install logic is not training code: editing it must not invalidate the shipped model
    assert "diffusion/shipped.py" not in files and "diffusion/shipping.py" not in files
    assert shipped.TRAINING_CODE_ROOTS == ("diffusion/pretrain.py",)


def test_every_module_of_the_training_path_is_reviewed():
    """Everything training imports is either covered by the digest or declared weight-neutral, and
    a weight-neutral module imports only weight-neutral ones (else the digest would stop short of
    code that changes weights)."""
    every = _closure(*shipped.TRAINING_CODE_ROOTS)
    unreviewed = every - TRAINING_MODULES - set(shipped.WEIGHT_NEUTRAL_MODULES)
    assert not unreviewed, f"the training path imports {sorted(unreviewed)}: review them (TRAINING_MODULES above)"
    assert every == TRAINING_MODULES | set(shipped.WEIGHT_NEUTRAL_MODULES), "a declaration training no longer needs"
    for module, reason in shipped.WEIGHT_NEUTRAL_MODULES.items():
        assert reason
        reached = _closure(module) - set(shipped.WEIGHT_NEUTRAL_MODULES)
        assert not reached, f"weight-neutral {module} imports {sorted(reached)}"


def test_ship_refuses_an_installed_model_and_other_settings_or_code(tiny_shipped, tmp_path):
    index, trained, folder = tiny_shipped
    installed = tmp_path / "installed"
    shipped.install(installed, folder)
    with pytest.raises(MarsdiffError, match="installed from the shipped checkpoint"):
        shipping.ship(installed, index, TINY, {}, None, "test", folder=tmp_path / "again")
    with pytest.raises(MarsdiffError, match="train_steps"):
        shipping.ship(trained, index, {**TINY, "train_steps": 9}, {}, None, "test", folder=tmp_path / "again")
    meta_path = trained / MODEL_META_NAME
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "training_code_version": "0123456789abcdef"}))
    with pytest.raises(MarsdiffError, match="trained by training code 0123456789abcdef"):
        shipping.ship(trained, index, TINY, {}, None, "test", folder=tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_the_default_workflow_installs_the_shipped_model_and_trains_on_other_settings(tmp_path):
    from conftest import make_workdir, run_snakemake
    from test_workflow import planned_jobs

    workdir = make_workdir(tmp_path / "project")
    target = "results/models/base/marsdiff_model.json"
    run_snakemake(workdir, target)
    provenance = shipped.read_provenance()
    model = workdir / "results" / "models" / "base"
    assert shipped.file_digest(model / "unet" / "diffusion_pytorch_model.safetensors") == provenance["weights_sha256"]
    meta = json.loads((model / MODEL_META_NAME).read_text())
    assert meta["installed_from"]["weights_sha256"] == provenance["weights_sha256"] == meta["weights_sha256"]
    assert "installed the shipped base model" in (workdir / "logs" / "pretrain_base.log").read_text()
    assert planned_jobs(run_snakemake(workdir, "-n", target)) == {}, "an installed model is up to date"

    # Another recipe: the rule trains, and its log names the difference.
    overlay = workdir / "config" / "short.yaml"
    overlay.write_text("model:\n  pixel:\n    train_steps: 2\n    warmup_steps: 1\n")
    run_snakemake(workdir, target, "--configfile", str(overlay))
    meta = json.loads((model / MODEL_META_NAME).read_text())
    assert "installed_from" not in meta and meta["training"]["steps"] == 2
    assert meta["training_code_version"] == shipping.training_code_version()
    # The hash loaders check (the frozen training code writes none: the stage adds it), and the
    # weights readable by the group like any output (diffusers writes them 0600).
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    assert meta["weights_sha256"] == shipped.file_digest(weights)
    from marsdiff.io.atomic import current_umask

    assert weights.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    log = (workdir / "logs" / "pretrain_base.log").read_text()
    shipped_steps = shipped.read_provenance()["train_config"]["train_steps"]
    assert "training instead of installing the shipped base model" in log and f"train_steps ({shipped_steps} shipped, 2 here)" in log
