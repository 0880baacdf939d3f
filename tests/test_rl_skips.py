"""Numerical faults in an update: NaN features (the stored chain or plan actions the policy
re-scores) and NaN credits skip the update for PPO and TRPO, on the LoRA and the plan policies;
the round then writes the previous policy's weights and trainer state unchanged and says why in
its metrics; too many skips in a row stop the run with one line. Also the kill points' switch
(marsdiff.faults), in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from marsdiff.errors import MarsdiffError
from marsdiff.faults import ENV_AT, ENV_DIR, KILLED_FILE, kill_point, kill_spec
from marsdiff.rl.checkpoint import STATE_TENSORS
from marsdiff.rl.policy import RoundPolicy
from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round
from marsdiff.rl.round_update import update_policy_round
from marsdiff.rl.skips import REASON, SKIPPED, STREAK, previous_streak
from marsdiff.stages.update_round import update_round_stage
from rl_helpers import brightness, experiment, round_store
from tiny_models import tiny_pixel_backend

CASES = [("ppo", "lora_unet"), ("trpo", "lora_unet"), ("ppo", "scheduler_policy"), ("trpo", "diversity_policy")]


def fault_experiment(algorithm, mode, **overrides):
    return experiment(mode, algorithm=algorithm, images_per_round=8, steps=3, rounds=2, optimiser={"lr": 1e-2},
                      ppo={"minibatch_size": 8, "epochs": 2}, trpo={"minibatch_size": 8, "fvp_subsample": 8}, **overrides)


def poison(trajectories, mode, fault, image=2):
    """NaN into what the update reads from the round file: one image's stored chain (LoRA) or plan
    actions (the features the policy re-scores), or its stored log-probs (the ratio's denominator)."""
    names = {"features": ("latents", "actions"), "log_prob": ("log_prob/denoise", "log_prob/knobs")}[fault]
    with h5py.File(trajectories, "r+") as f:
        name = names[0] if mode == "lora_unet" else names[1]
        values = f[name][image]
        f[name][image] = np.full_like(values, np.nan)


def tensors(path):
    return {k: v for k, v in load_file(str(path)).items()}


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# Where the NaN is caught: the credit before any work, the plan actions when they are read, a NaN
# chain or log-prob in the PPO loss or the TRPO surrogate.
def expected_reason(fault, algorithm, mode):
    if fault == "credit":
        return "credit of round 001"
    if fault == "features" and mode != "lora_unet":
        return "plan actions stored in"
    return {"ppo": "the PPO loss", "trpo": "the TRPO surrogate"}[algorithm]


@pytest.mark.parametrize("fault", ["features", "log_prob", "credit"])
@pytest.mark.parametrize("algorithm,mode", CASES)
def test_a_nan_skips_the_update_and_keeps_the_previous_policy(tmp_path, one_torch_thread, algorithm, mode, fault):
    exp = fault_experiment(algorithm, mode)
    policy = RoundPolicy.initial(mode, tiny_pixel_backend(), exp)
    settings = round_sampling_settings({"batch_size": 8}, exp)
    first, second = tmp_path / "round_000", tmp_path / "round_001"
    sample_policy_round(policy, settings, exp, 0, first, store=round_store())
    good = update_policy_round(policy, exp, 0, first / "trajectories.h5", brightness(first / "trajectories.h5"), None,
                               first / "policy", progress=False)
    assert good[SKIPPED] == 0.0 and good[STREAK] == 0
    sample_policy_round(policy, settings, exp, 1, second, store=round_store())
    credit = brightness(second / "trajectories.h5")
    if fault == "credit":
        credit[3] = np.nan
    else:
        poison(second / "trajectories.h5", mode, fault)
    # As the stage does: the policy to update comes from disk.
    policy = RoundPolicy.load(first / "policy", tiny_pixel_backend())
    metrics = update_policy_round(policy, exp, 1, second / "trajectories.h5", credit, first / "policy", second / "policy",
                                  progress=False, skipped_before=0)
    assert metrics[SKIPPED] == 1.0 and metrics[STREAK] == 1
    assert "NaN" in metrics[REASON]
    assert expected_reason(fault, algorithm, mode) in metrics[REASON]
    assert "approx_kl" not in metrics, "a skipped update reports no update diagnostics"
    before = RoundPolicy.load(first / "policy", tiny_pixel_backend())
    after = RoundPolicy.load(second / "policy", tiny_pixel_backend())
    assert after.policy_hash() == before.policy_hash()
    assert_same_tensors(after.state_tensors(), before.state_tensors())
    assert all(bool(torch.isfinite(t).all()) for t in after.state_tensors().values())
    # The optimiser moments and RNG carry over unchanged too: the next round continues from round 000.
    assert_same_tensors(tensors(second / "policy" / STATE_TENSORS), tensors(first / "policy" / STATE_TENSORS))
    assert json.loads((second / "policy" / "policy.json").read_text())["round"] == 1


def test_too_many_skips_in_a_row_stop_with_one_line_and_no_policy(tmp_path, one_torch_thread):
    exp = fault_experiment("ppo", "scheduler_policy", max_skipped_updates=2)
    policy = RoundPolicy.initial("scheduler_policy", tiny_pixel_backend(), exp)
    sample_policy_round(policy, round_sampling_settings({"batch_size": 8}, exp), exp, 0, tmp_path / "r",
                        store=round_store())
    credit = np.full(8, np.inf)
    with pytest.raises(MarsdiffError) as err:
        update_policy_round(policy, exp, 0, tmp_path / "r" / "trajectories.h5", credit, None, tmp_path / "r" / "policy",
                            progress=False, skipped_before=1)
    message = str(err.value)
    assert "\n" not in message
    assert "experiments.test" in message and "2 updates in a row" in message and "max_skipped_updates 2" in message
    assert "inf" in message
    assert not (tmp_path / "r" / "policy").exists()


@pytest.mark.parametrize("limit", [0, "3", True])
def test_a_bad_max_skipped_updates_is_refused_in_one_line(limit):
    with pytest.raises(MarsdiffError, match=r"experiments\.test\.max_skipped_updates"):
        experiment("lora_unet", max_skipped_updates=limit)


def test_the_stage_reads_the_streak_and_writes_strict_json(tmp_path, one_torch_thread):
    """update_round_stage: a NaN set reward is a skip, counted on from the previous round's metrics.json."""
    settings = {"mode": "scheduler_policy", "algorithm": "ppo", "images_per_round": 8, "steps": 3}
    cfg = {"experiments": {"test": settings}, "sampling": {"batch_size": 8}, "model": {"backend": "pixel"}}
    exp = experiment("scheduler_policy", images_per_round=8, steps=3)
    policy = RoundPolicy.initial("scheduler_policy", tiny_pixel_backend(), exp)
    round_dir = tmp_path / "round_000"
    sample_policy_round(policy, round_sampling_settings({"batch_size": 8}, exp), exp, 0, round_dir, store=round_store())
    (round_dir / "rewards.csv").write_text("image_index,credit\n" + "".join(f"{i},{0.1 * i}\n" for i in range(8)))
    (round_dir / "reward_summary.json").write_text('{"set_reward": NaN}')
    earlier = tmp_path / "earlier_metrics.json"
    earlier.write_text(json.dumps({STREAK: 1}))

    def stage(previous_metrics, out):
        with mock.patch("marsdiff.rl.rounds.load_backend", side_effect=lambda *a, **k: tiny_pixel_backend()):
            return update_round_stage(cfg, "test", 0, "unused", None, str(round_dir / "trajectories.h5"),
                                      str(round_dir / "rewards.csv"), str(round_dir / "reward_summary.json"),
                                      str(out / "policy"), str(out / "metrics.json"), previous_metrics=previous_metrics)

    row = stage(str(earlier), tmp_path / "a")
    assert row[SKIPPED] == 1.0 and row[STREAK] == 2 and "reward_summary.json" in row[REASON]

    def refuse_nan(token):
        raise AssertionError(f"non-strict JSON constant {token}")

    written = json.loads((tmp_path / "a" / "metrics.json").read_text(), parse_constant=refuse_nan)
    assert written[STREAK] == 2 and written["set_reward"] is None
    assert previous_streak(tmp_path / "a" / "metrics.json") == 2
    # A third skip in a row reaches the default limit of 3: the run stops, nothing written.
    with pytest.raises(MarsdiffError, match="3 updates in a row"):
        stage(str(tmp_path / "a" / "metrics.json"), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_unreadable_previous_metrics_are_one_line(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(MarsdiffError, match="metrics.json: unreadable round metrics"):
        previous_streak(bad)
    bad.write_text(json.dumps({STREAK: -1}))
    with pytest.raises(MarsdiffError, match=STREAK):
        previous_streak(bad)
    assert previous_streak(None) == 0


# ---------------------------------------------------------------------------- kill points

KILLER = "from marsdiff.faults import kill_point\nfor i in range(3):\n    kill_point('score.start')\n    print('passed', i + 1, flush=True)\n"


def test_kill_point_kills_at_the_counted_visit_across_processes(tmp_path):
    env = {**os.environ, ENV_AT: "score.start:4", ENV_DIR: str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", KILLER], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and first.stdout.split("\n")[-2] == "passed 3"
    # The count goes on in the next process: its first visit is the 4th.
    second = subprocess.run([sys.executable, "-c", KILLER], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == -9, "SIGKILL"
    assert "passed" not in second.stdout
    assert (tmp_path / KILLED_FILE).read_text().split()[0] == "score.start:4"


def test_kill_spec_and_sites_are_checked(monkeypatch):
    monkeypatch.delenv(ENV_AT, raising=False)
    assert kill_spec() is None
    kill_point("score.start")  # no request: nothing happens
    monkeypatch.setenv(ENV_AT, "score.strat:1")
    with pytest.raises(MarsdiffError, match="MARSDIFF_KILL_AT"):
        kill_spec()
    monkeypatch.setenv(ENV_AT, "score.start:0")
    with pytest.raises(MarsdiffError, match="COUNT >= 1"):
        kill_spec()
    monkeypatch.setenv(ENV_AT, "score.start:1")
    assert kill_spec() == ("score.start", 1)
    kill_point("evaluate.done")  # another site: nothing happens
    with pytest.raises(ValueError, match="unknown kill point"):
        kill_point("nowhere")
