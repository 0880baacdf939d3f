"""Standard-format models: the LoRA folder loads with peft and with diffusers, ``marsdiff
export-model`` writes merged diffusers models and knobs.json, and the README's "Using the
fine-tuned model" snippets run as written (extracted from README.md, executed in a folder laid out
as a finished run) on a tiny pixel model and a tiny Stable Diffusion pipeline."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from marsdiff import cli
from marsdiff.config import filled_section
from marsdiff.diffusion.loading import load_backend
from marsdiff.diffusion.scheduler_logprob import power_timesteps
from marsdiff.diffusion.stable_diffusion import load_stable_diffusion
from marsdiff.rl.policy import RoundPolicy
from rl_helpers import experiment
from test_integrity import write_pixel_model
from test_stable_diffusion import PROMPTS, build_tiny_pipeline

# Tiny models run many small kernels: one torch thread (conftest) keeps them fast on a busy CPU.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

README = Path(__file__).resolve().parents[1] / "README.md"
POLICY = Path("results/runs/ppo_lora/round_003/policy")
SD_BASE = Path("models/stable-diffusion-v1-5")


def snippets(kind: str) -> list[tuple[str, str]]:
    """(language, code) of the README blocks marked ``<!-- snippet: kind -->``, in order."""
    text = README.read_text()
    section = text.split("## Using the fine-tuned model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"<!-- snippet: " + kind + r" -->\n```(\w+)\n(.*?)```", section, flags=re.S)


def run_snippet(language: str, code: str, namespace: dict) -> None:
    if language == "python":
        exec(compile(code, f"README snippet ({language})", "exec"), namespace)
        return
    assert language == "bash", language
    for line in code.strip().splitlines():
        words = shlex.split(line)
        assert words[0] == "marsdiff", line
        assert cli.main(words[1:]) == 0, line


def trained_lora(backend, rank: int = 2) -> RoundPolicy:
    """A LoRA policy whose adapter has moved away from its zero start (B != 0)."""
    policy = RoundPolicy.initial("lora_unet", backend, experiment("lora_unet", lora={"rank": rank, "alpha": 4.0}))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in backend.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return policy


def pixel_run(root: Path) -> RoundPolicy:
    """``root`` laid out as a finished pixel run: base model and ppo_lora's final policy."""
    model_dir = write_pixel_model(root / "results/models/base")
    policy = trained_lora(load_backend({"backend": "pixel"}, model_dir, device="cpu"))
    policy.save(root / POLICY, round_index=3)
    return policy


def test_readme_snippets_run_on_the_pixel_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = pixel_run(tmp_path)
    blocks = snippets("pixel")
    assert [language for language, _ in blocks] == ["python", "bash", "python", "python"]
    ns: dict = {}

    def ours(x, label):
        with torch.no_grad():
            return policy.backend.unet(x, torch.tensor([500]), class_labels=torch.tensor([label])).sample

    run_snippet(*blocks[0], ns)  # peft
    expected = ours(ns["x"], 2)
    torch.testing.assert_close(ns["prediction"], expected, rtol=1e-5, atol=1e-6)
    base = load_backend({"backend": "pixel"}, "results/models/base", device="cpu")
    with torch.no_grad():
        plain = base.unet(ns["x"], torch.tensor([500]), class_labels=torch.tensor([2])).sample
    assert not torch.allclose(plain, expected, atol=1e-4), "the adapter changes the prediction"

    run_snippet(*blocks[1], ns)  # export-model
    assert sorted(p.name for p in Path("exported_model").iterdir()) == ["knobs.json", "scheduler", "unet"]
    run_snippet(*blocks[2], ns)  # the merged model, no peft
    assert not any("lora" in name for name, _ in ns["unet"].named_parameters())
    with torch.no_grad():
        merged = ns["unet"](ns["x"], torch.tensor([500]), class_labels=torch.tensor([2])).sample
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)
    assert dict(ns["scheduler"].config)["prediction_type"] == policy.backend.scheduler_config["prediction_type"]

    run_snippet(*blocks[3], ns)  # knobs.json applied by a plain DDIM loop
    images = ns["images"]
    assert images.shape == (4, 1, 16, 16) and images.dtype == torch.uint8
    assert len(set(images.flatten().tolist())) > 10, "a real image, not a constant"
    knobs = ns["knobs"]
    assert knobs["mode"] == "lora_unet" and knobs["provenance"]["lora_merged"] is True
    assert knobs["conditions"] == ["small", "medium", "large"]
    sampling = filled_section("sampling", {})
    scheduler = policy.backend.make_scheduler(eta=sampling["eta"], min_std=sampling["min_std"])
    assert knobs["per_condition"]["large"]["timesteps"] == scheduler.set_timesteps(knobs["steps"]).tolist()


def test_readme_snippets_run_on_stable_diffusion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_tiny_pipeline(tmp_path / SD_BASE)
    Path("prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    sd_cfg = {"pretrained": str(SD_BASE), "prompt_file": "prompts.txt", "resolution": 64, "device": "cpu"}
    Path("config").mkdir()
    Path("config/sd15.yaml").write_text(json.dumps({"model": {"backend": "stable_diffusion", "stable_diffusion": sd_cfg},
                                                    "sampling": {"steps": 4}}))
    backend = load_stable_diffusion(sd_cfg)
    policy = trained_lora(backend)
    policy.save(POLICY, round_index=3)
    x = torch.randn(2, *backend.latent_shape)
    t = torch.tensor([900, 300])
    text = backend.prompt_embeds[:2]
    with torch.no_grad():
        expected = backend.unet(x, t, encoder_hidden_states=text).sample

    blocks = snippets("sd")
    assert [language for language, _ in blocks] == ["python", "bash", "python", "python"]
    ns: dict = {}
    run_snippet(*blocks[0], ns)  # pipe.load_lora_weights
    with torch.no_grad():
        loaded = ns["pipe"].unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(loaded, expected, rtol=1e-4, atol=1e-5)
    assert ns["image"].size == (16, 16)

    run_snippet(*blocks[1], ns)  # export-model
    assert (Path("exported_sd") / "model_index.json").is_file()
    run_snippet(*blocks[2], ns)  # DiffusionPipeline.from_pretrained
    with torch.no_grad():
        merged = ns["pipe"].unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)
    assert type(ns["pipe"].scheduler).__name__ == "DDIMScheduler"

    run_snippet(*blocks[3], ns)  # knobs.json through the pipeline call
    knobs = ns["knobs"]
    assert knobs["conditions"] == PROMPTS and knobs["steps"] == 4
    assert knobs["per_condition"][PROMPTS[0]]["guidance_scale"] == backend.guidance_scale
    assert knobs["resolution"] == 64 and knobs["sample_shape"] == [4, 32, 32]
    assert ns["image"].size == (64, 64)


def test_lora_folder_is_a_plain_peft_adapter_and_byte_stable(tmp_path):
    model_dir = write_pixel_model(tmp_path / "base")
    policy = trained_lora(load_backend({"backend": "pixel"}, model_dir, device="cpu"))
    policy.save(tmp_path / "a", round_index=0)
    policy.save(tmp_path / "b", round_index=0)
    lora = tmp_path / "a" / "lora"
    names = sorted(p.name for p in lora.iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors", "marsdiff_adapter.json",
                     "pytorch_lora_weights.safetensors"]
    for name in names:
        assert (lora / name).read_bytes() == (tmp_path / "b" / "lora" / name).read_bytes(), name
    config = json.loads((lora / "adapter_config.json").read_text())
    # Top-level peft fields only: the wrapped {"peft": ..., "marsdiff": ...} layout gave KeyError 'peft_type'.
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 4.0
    assert "marsdiff" not in config and "weights_sha256" not in config
    own = json.loads((lora / "marsdiff_adapter.json").read_text())
    assert own["settings"]["rank"] == 2 and set(own["files_sha256"]) == {
        "adapter_config.json", "adapter_model.safetensors", "pytorch_lora_weights.safetensors"}


def test_the_two_weights_copies_must_agree(tmp_path):
    """A folder whose peft copy was replaced (and re-hashed) is refused: peft users would get
    other weights than marsdiff samples with."""
    from marsdiff.errors import MarsdiffError
    from marsdiff.io.digests import file_digest
    from marsdiff.io.weights import save_safetensors
    from safetensors.torch import load_file

    model_dir = write_pixel_model(tmp_path / "base")
    policy = trained_lora(load_backend({"backend": "pixel"}, model_dir, device="cpu"))
    policy.save(tmp_path / "p", round_index=0)
    lora = tmp_path / "p" / "lora"
    tensors = load_file(str(lora / "adapter_model.safetensors"))
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key] = tensors[key] + 1.0
    save_safetensors(tensors, lora / "adapter_model.safetensors", {"format": "pt"})
    own = json.loads((lora / "marsdiff_adapter.json").read_text())
    own["files_sha256"]["adapter_model.safetensors"] = file_digest(lora / "adapter_model.safetensors")
    (lora / "marsdiff_adapter.json").write_text(json.dumps(own))
    with pytest.raises(MarsdiffError, match=r"adapter_model.safetensors: peft and diffusers copies .* differ"):
        RoundPolicy.load(tmp_path / "p", load_backend({"backend": "pixel"}, model_dir, device="cpu"))


def test_plan_policy_exports_its_learnt_knobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_dir = write_pixel_model(tmp_path / "results/models/base")
    backend = load_backend({"backend": "pixel"}, model_dir, device="cpu")
    policy = RoundPolicy.initial("scheduler_policy", backend, experiment("scheduler_policy"))
    with torch.no_grad():  # learnt-looking: each class its own location
        policy.generation.head.location.add_(torch.tensor([[-1.0, -0.5], [0.0, 0.3], [1.0, 0.8]]))
    policy.save("policy", round_index=2)
    assert cli.main(["export-model", "policy", "out"]) == 0
    knobs = json.loads(Path("out/knobs.json").read_text())
    described = policy.generation.describe()
    assert knobs["mode"] == "scheduler_policy" and knobs["provenance"]["round"] == 2
    assert knobs["class_probabilities"] == pytest.approx(described["condition_probabilities"])
    for name in ["small", "medium", "large"]:
        values = knobs["per_condition"][name]
        assert values["eta"] == pytest.approx(described["knob_at_location"][name]["eta"])
        power = described["knob_at_location"][name]["timestep_power"]
        assert values["timestep_power"] == pytest.approx(power)
        grid, _ = power_timesteps(1000, knobs["steps"], torch.tensor([power]))
        assert values["timesteps"] == grid[0].tolist()
        assert values["noise_scale"] == 1.0  # not a scheduler-policy knob: the sampler's default
    assert knobs["per_condition"]["small"]["eta"] < knobs["per_condition"]["large"]["eta"]
    assert set(knobs["learnt"]["ranges"]) == {"eta", "timestep_power"} and knobs["learnt"]["distribution"] == "gaussian"
    # A plan policy leaves the UNet alone: the exported one is the base model's.
    from diffusers import UNet2DModel

    exported = UNet2DModel.from_pretrained("out/unet")
    for (name, a), (_, b) in zip(sorted(exported.state_dict().items()), sorted(backend.unet.state_dict().items())):
        assert torch.equal(a, b.cpu()), name


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    pixel_run(tmp_path)
    # a policy trained on another base model (other weights)
    from diffusers import DDPMScheduler

    from marsdiff.diffusion.pixel import save_pixel_model
    from test_integrity import record_weights_hash
    from tiny_models import CLASS_NAMES, ddpm_config, tiny_unet

    other_dir = tmp_path / "other"
    save_pixel_model(other_dir, tiny_unet(seed=1), DDPMScheduler.from_config(ddpm_config()),
                     {"backend": "pixel", "image_size": 16, "channels": 1, "class_names": CLASS_NAMES})
    record_weights_hash(other_dir)
    trained_lora(load_backend({"backend": "pixel"}, other_dir, device="cpu")).save("foreign", round_index=0)
    Path("full").mkdir()
    (Path("full") / "keep.txt").write_text("x")
    cases = {
        "not a policy": (["export-model", "results/runs/ppo_lora", "out"], r"results/runs/ppo_lora: not a policy folder"),
        "other base model": (["export-model", "foreign", "out"], r"policy.json: policy trained on base model \w+, "
                                                                  r"this base model is \w+"),
        "full output": (["export-model", str(POLICY), "full"], r"full: exists and is not an empty folder"),
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    for what, (argv, pattern) in cases.items():
        assert cli.main(argv) == 1, what
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(pattern, err), (what, err)
        assert err.startswith("marsdiff export-model: ") and "Traceback" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == before, what  # no output, no temporary
    assert sorted(p.name for p in Path("full").iterdir()) == ["keep.txt"]
