"""Data parallelism of the round stages (marsdiff.rl.distributed): 2 gloo processes against 1 on
the CPU. Sampling gives the same trajectory file, images and samples.csv bit for bit; an update
on the same transitions gives the same policy to float rounding, in every mode and with both
algorithms; a failure on any rank fails the launch with that rank's error. Tiny models only.

Each launch starts fresh Python processes (spawn), so the cases share launches: one for all the
2-process updates, one for the sampling."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from marsdiff.errors import MarsdiffError
from marsdiff.rl.distributed import SINGLE, RankGroup, launch, processes_setting
from marsdiff.rl.experiments import experiment_settings
from marsdiff.rl.policy import RoundPolicy
from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round
from marsdiff.rl.round_update import update_policy_round
from conftest import REPO
from rl_helpers import brightness, round_store
from tiny_models import tiny_pixel_backend

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODES = ("lora_unet", "scheduler_policy", "diversity_policy")
ALGORITHMS = ("ppo", "trpo")
CASES = [(mode, algorithm) for mode in MODES for algorithm in ALGORITHMS]
# float32 sums in another order (each rank's share, then the all-reduce) differ in the last bits
# (gradient norms: 1e-6 relative). The weights then agree to 1e-6 of how far the update moved
# them (4e-6 LoRA TRPO, <= 3e-7 the plan policies), except PPO-LoRA's, 3e-4 of it: AdamW divides
# each gradient by its own running size, and the LoRA A matrices start with gradients near zero
# (B = 0), where that division magnifies the rounding.
TOLERANCE = 1e-3  # of the largest weight change


def experiment(mode: str, algorithm: str) -> dict:
    # Minibatches that do not split evenly over 2 ranks (7 = 3 + 4 transitions, 5 = 2 + 3 plan
    # actions), several minibatches and epochs, the KL to the base model, an FVP subsample in
    # chunks: every path the reductions take.
    lora = mode == "lora_unet"
    cfg = {"algorithm": algorithm, "mode": mode, "images_per_round": 9, "steps": 3, "seed": 3}
    if algorithm == "ppo":
        cfg["ppo"] = {"minibatch_size": 7 if lora else 5, "epochs": 2, "clip_denoise": 0.05, "clip_plan": 0.5,
                      "entropy_coef": 0.0 if lora else 0.01}
    else:
        cfg["trpo"] = {"minibatch_size": 7 if lora else 5, "fvp_subsample": 11 if lora else 7}
    if lora:
        cfg["kl_to_base"] = 0.1
    # The plan optimisers' default learning rate moves the policy a little; a larger one makes
    # any missing reduction obvious.
    cfg["optimiser"] = {"lr": 0.05 if not lora else 0.01}
    return experiment_settings({"d": cfg}, "d", {"batch_size": 4, "device": "cpu"})


def initial_policy(mode: str, algorithm: str) -> RoundPolicy:
    return RoundPolicy.initial(mode, tiny_pixel_backend(), experiment(mode, algorithm))


def sample_case(mode: str, algorithm: str, out: Path, group: RankGroup = SINGLE) -> None:
    exp = experiment(mode, algorithm)
    settings = round_sampling_settings({"batch_size": 2, "device": "cpu"}, exp)  # 9 images: 5 batches, 3 + 2
    sample_policy_round(initial_policy(mode, algorithm), settings, exp, 0, out, group=group, store=round_store())


def update_case(mode: str, algorithm: str, round_dir: Path, out: Path, group: RankGroup = SINGLE) -> dict:
    exp = experiment(mode, algorithm)
    trajectories = round_dir / "trajectories.h5"
    return update_policy_round(initial_policy(mode, algorithm), exp, 0, trajectories, brightness(trajectories), None,
                               out, progress=False, group=group)


# --- the functions the ranks run (module level: spawn pickles them by name) -----------------------

def _sample_all(root: str, group: RankGroup) -> None:
    for mode in ("lora_unet", "diversity_policy"):
        sample_case(mode, "ppo", Path(root) / mode, group)


def _update_all(rounds: str, root: str, group: RankGroup) -> dict:
    return {f"{m}-{a}": update_case(m, a, Path(rounds) / m, Path(root) / f"{m}-{a}", group) for m, a in CASES}


def _fail(kind: str, rank: int, group: RankGroup) -> None:
    if group.rank == rank:
        if kind == "user":
            raise MarsdiffError("experiments.d.steps: a bad value on one rank")
        raise ValueError("a bug on one rank")
    group.sum(1.0)  # the others wait in a collective, as a stage would


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rounds(tmp_path_factory) -> Path:
    """One sampled round per mode (the initial policy), shared by the update cases."""
    root = tmp_path_factory.mktemp("rounds")
    for mode in MODES:
        sample_case(mode, "ppo", root / mode)
    return root


@pytest.fixture(scope="module")
def two_process_updates(rounds, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ddp_updates")
    metrics = launch(_update_all, 2, device="cpu", threads=2, args=(str(rounds), str(root)))
    return root, metrics


def trainable(policy_dir: Path, mode: str, algorithm: str) -> torch.Tensor:
    policy = RoundPolicy.load(policy_dir, tiny_pixel_backend())
    return torch.cat([p.detach().reshape(-1).double() for p in policy.trainable_parameters()])


# --- tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,algorithm", CASES)
def test_two_processes_update_like_one(mode, algorithm, rounds, two_process_updates, tmp_path):
    root, metrics2 = two_process_updates
    metrics1 = update_case(mode, algorithm, rounds / mode, tmp_path / "policy")
    one = trainable(tmp_path / "policy", mode, algorithm)
    two = trainable(root / f"{mode}-{algorithm}", mode, algorithm)
    start = torch.cat([p.detach().reshape(-1).double() for p in initial_policy(mode, algorithm).trainable_parameters()])
    moved = float((one - start).abs().max())
    difference = float((one - two).abs().max())
    print(f"{mode} {algorithm}: moved {moved:.3g}, max |1 process - 2 processes| {difference:.3g}")
    # Both runs agree to a small fraction of how far the update moved the policy: an un-reduced
    # gradient or a rank's own step would differ by a sizeable part of the move.
    assert moved > 1e-2
    assert difference <= TOLERANCE * moved
    if algorithm == "trpo":
        assert metrics1["accepted"] == metrics2[f"{mode}-{algorithm}"]["accepted"] == 1.0
    else:
        assert metrics1["minibatches"] == metrics2[f"{mode}-{algorithm}"]["minibatches"]
    # The logged statistics are over all ranks' actions, not rank 0's share. The gradient norm
    # also catches a gradient summed with the wrong weights, which AdamW's scale invariance
    # would hide from the weights.
    ours = metrics2[f"{mode}-{algorithm}"]
    tight = ("actions", "grad_norm") + (("objective",) if algorithm == "ppo" else ())
    for key in tight:
        assert ours[key] == pytest.approx(metrics1[key], rel=1e-5, abs=1e-9), key
    # Statistics of differences of log-probs (ratios near 1, small KLs) keep less of the precision;
    # TRPO's surrogate before the step is mean(A) = 0 up to float32 rounding (about 3e-8).
    for key in ("kl_post_update", "ratio_mean_post", "approx_kl_post", "clip_fraction", "surrogate_gain",
                "surrogate_before", "kl"):
        if key in metrics1:
            assert ours[key] == pytest.approx(metrics1[key], rel=1e-3, abs=1e-7), key


#: Root attributes that record when and how a file was written, not what it holds.
WRITE_TIME_ATTRIBUTES = ("created_utc",)


def _root_attributes(attrs) -> dict:
    """The root's attributes without the write time; the scheduler config parsed, with diffusers'
    ``_use_default_values`` (built from a set, so its order follows each process's string hashing)
    sorted."""
    out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in attrs.items() if k not in WRITE_TIME_ATTRIBUTES}
    if "scheduler_config" in out:
        config = json.loads(out["scheduler_config"])
        config["_use_default_values"] = sorted(config.get("_use_default_values", []))
        out["scheduler_config"] = config
    return out


def _h5_items(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            out[name + "/@"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        out["/@"] = _root_attributes(f.attrs)
        f.visititems(visit)
    return out


def test_two_processes_sample_bit_identical(tmp_path):
    launch(_sample_all, 2, device="cpu", threads=2, args=(str(tmp_path / "two"),))
    for mode in ("lora_unet", "diversity_policy"):
        sample_case(mode, "ppo", tmp_path / "one" / mode)
        one, two = tmp_path / "one" / mode, tmp_path / "two" / mode
        a, b = _h5_items(one / "trajectories.h5"), _h5_items(two / "trajectories.h5")
        assert sorted(a) == sorted(b)
        for key in a:
            if isinstance(a[key], np.ndarray):
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key
        assert (one / "samples.csv").read_bytes() == (two / "samples.csv").read_bytes()
        names = sorted(p.name for p in (one / "images").iterdir())
        assert len(names) == 9 and names == sorted(p.name for p in (two / "images").iterdir())
        for name in names:
            assert (one / "images" / name).read_bytes() == (two / "images" / name).read_bytes(), name
        with open(one / "samples.csv") as handle:
            assert [int(r["image_index"]) for r in csv.DictReader(handle)] == list(range(9))


def test_a_failing_rank_fails_the_launch_with_its_error():
    with pytest.raises(MarsdiffError, match="a bad value on one rank"):
        launch(_fail, 2, device="cpu", threads=2, args=("user", 1))
    with pytest.raises(RuntimeError, match=r"rank 1 of 2 failed:(.|\n)*Traceback(.|\n)*ValueError: a bug on one rank"):
        launch(_fail, 2, device="cpu", threads=2, args=("bug", 1))


def test_shards_and_settings():
    rows = np.arange(7)
    shards = [RankGroup(r, 2).shard(rows) for r in range(2)]
    assert [s.tolist() for s in shards] == [[0, 1, 2], [3, 4, 5, 6]]
    assert SINGLE.shard(rows) is rows
    assert processes_setting(2) == 2
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(MarsdiffError, match="sampling.processes"):
            processes_setting(bad)
    if torch.cuda.device_count() < 2:  # more processes than GPUs: refused before any process starts
        with pytest.raises(MarsdiffError, match="sampling.processes is 2 but only"):
            launch(_fail, 2, device="cuda", args=("user", 5))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "workflow" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_round_scripts_run_the_processes_the_rule_asks_for(tmp_path):
    """sample_round.py and update_round.py as Snakemake runs them, with the rules' resource
    processes=2: rank 0 writes the outputs, every rank logs into the rule log."""
    from test_integrity import write_pixel_model

    model_dir = write_pixel_model(tmp_path / "base")
    # the rules' flat params (marsdiff.workflow.params): the resolved experiment, sampling, model;
    # the untracked batch size comes from the job's config
    cfg = {"experiment": {"algorithm": "ppo", "mode": "scheduler_policy", "images_per_round": 5, "steps": 2},
           "sampling": {"device": "cpu"}, "model": {"backend": "pixel", "pixel": {"device": "cpu"}}}
    round_dir = tmp_path / "runs" / "d" / "round_000"
    common = dict(threads=2, resources=SimpleNamespace(processes=2), params=SimpleNamespace(cfg=json.dumps(cfg)),
                  config={"sampling": {"batch_size": 16}}, wildcards={"exp": "d", "round": "000"})
    meta = str(model_dir / "marsdiff_model.json")
    _script("sample_round").main(SimpleNamespace(
        **common, input=SimpleNamespace(meta=meta), output=SimpleNamespace(trajectories=str(round_dir / "trajectories.h5")),
        log=[str(tmp_path / "sample.log")]))
    assert len(list((round_dir / "images").iterdir())) == 5
    (round_dir / "rewards.csv").write_text("image_index,credit\n" + "".join(f"{i},{i * 0.1}\n" for i in range(5)))
    (round_dir / "reward_summary.json").write_text('{"set_reward": 1.0}')

    def update(processes, out_dir, log):
        _script("update_round").main(SimpleNamespace(
            **{**common, "resources": SimpleNamespace(processes=processes)},
            input=SimpleNamespace(meta=meta, trajectories=str(round_dir / "trajectories.h5"),
                                  rewards=str(round_dir / "rewards.csv"), summary=str(round_dir / "reward_summary.json")),
            output=SimpleNamespace(policy=str(out_dir / "policy"), metrics=str(out_dir / "metrics.json")),
            log=[str(log)]))
        return json.loads((out_dir / "metrics.json").read_text())

    two = update(2, round_dir, tmp_path / "update.log")
    one = update(1, tmp_path / "one_process", tmp_path / "update_one.log")
    assert (round_dir / "policy" / "policy.json").is_file()
    # the script-level update of 2 processes is the update of 1 (the tolerance of the logged values above)
    assert two["actions"] == one["actions"] > 0
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    for name in ("sample.log", "update.log"):
        text = (tmp_path / name).read_text()
        assert "starting 2 processes (cpu, gloo" in text and "[rank 0]" in text and "[rank 1]" in text, text
