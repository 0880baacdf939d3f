"""The round loop: a run killed mid-update resumes at that round and ends with exactly the
metrics and policy of an uninterrupted run; advantages and GAE follow their definitions."""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.rl.advantages import ValueTable, gae_advantages, group_advantages, step_advantages
from marsdiff.rl.policy import RoundPolicy
from marsdiff.rl.rounds import build_policy
from marsdiff.rl.round_sampling import round_sampling_settings, sample_policy_round
from marsdiff.rl.round_update import update_policy_round
from rl_helpers import advantage_settings, brightness, experiment, round_store
from tiny_models import tiny_pixel_backend

TIMING_KEYS = ("seconds", "update_seconds")


def run(exp, out, kill_in_round=None):
    """Rounds as the workflow runs them: each stage loads its policy from disk (fresh process)."""
    results = []
    for r in range(exp["rounds"]):
        round_dir = out / f"round_{r:03d}"
        previous = out / f"round_{r - 1:03d}" / "policy" if r else None
        with mock.patch("marsdiff.rl.rounds.load_backend", side_effect=lambda *a, **k: tiny_pixel_backend()):
            policy = build_policy({"backend": "pixel"}, exp, "unused", previous, device="cpu")
            sample_policy_round(policy, round_sampling_settings({"batch_size": 8}, exp), exp, r, round_dir,
                                store=round_store())
            policy = build_policy({"backend": "pixel"}, exp, "unused", previous, device="cpu")
            credit = brightness(round_dir / "trajectories.h5")
            if r == kill_in_round:
                from marsdiff.rl import ppo

                real_step = ppo.torch.optim.AdamW.step
                calls = {"n": 0}

                def dying_step(self, *args, **kwargs):
                    calls["n"] += 1
                    if calls["n"] == 2:
                        raise KeyboardInterrupt("killed mid-update")
                    return real_step(self, *args, **kwargs)

                with mock.patch.object(ppo.torch.optim.AdamW, "step", dying_step), pytest.raises(KeyboardInterrupt):
                    update_policy_round(policy, exp, r, round_dir / "trajectories.h5", credit, previous,
                                        round_dir / "policy", progress=False)
                assert not (round_dir / "policy").exists(), "a killed update leaves no policy"
                # The re-run starts again from the files on disk, as Snakemake's rerun-incomplete does.
                policy = build_policy({"backend": "pixel"}, exp, "unused", previous, device="cpu")
            metrics = update_policy_round(policy, exp, r, round_dir / "trajectories.h5", credit, previous,
                                          round_dir / "policy", progress=False)
        results.append({k: v for k, v in metrics.items() if k not in TIMING_KEYS})
    return results


@pytest.mark.parametrize("mode", ["lora_unet", "diversity_policy"])
def test_killed_run_resumes_to_the_same_metrics(tmp_path, mode):
    exp = experiment(mode, rounds=3, images_per_round=8, steps=3, optimiser={"lr": 1e-2},
                     ppo={"epochs": 2, "minibatch_size": 8})
    straight = run(exp, tmp_path / "straight")
    resumed = run(exp, tmp_path / "resumed", kill_in_round=1)
    # Bit-identical numbers (json text: NaN entries of absent diagnostics compare equal).
    assert json.dumps(straight, sort_keys=True) == json.dumps(resumed, sort_keys=True)
    a = json.loads((tmp_path / "straight" / "round_002" / "policy" / "policy.json").read_text())
    b = json.loads((tmp_path / "resumed" / "round_002" / "policy" / "policy.json").read_text())
    assert a["policy_hash"] == b["policy_hash"]
    # The optimiser state really carries over: a run that forgot it ends elsewhere.
    first = RoundPolicy.load(tmp_path / "straight" / "round_000" / "policy", tiny_pixel_backend())
    assert first.policy_hash() != a["policy_hash"]


def test_group_advantages_normalise_within_groups_with_batch_fallback():
    settings = advantage_settings(clip=10.0, normalisation="class", min_count=3)
    credit = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 5.0, 7.0])
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    adv = group_advantages(credit, groups, settings)
    expected = (credit[:3] - 2.0) / np.std(credit[:3])
    np.testing.assert_allclose(adv[:3], expected)
    np.testing.assert_allclose(adv[3:6], expected)  # scale-free within a group
    # Group 2 has 2 < 3 images: batch statistics.
    np.testing.assert_allclose(adv[6:], (credit[6:] - credit.mean()) / credit.std())
    clipped = group_advantages(credit, groups, advantage_settings(clip=0.5, normalisation="class", min_count=3))
    assert np.abs(clipped).max() == pytest.approx(0.5)
    with pytest.raises(MarsdiffError, match="at least 2"):
        group_advantages(np.array([1.0]), np.array([0]), settings)


def test_gae_with_terminal_reward_matches_its_sum():
    rng = np.random.default_rng(0)
    reward, values = rng.standard_normal(4), rng.standard_normal((4, 5))
    gamma, lam = 0.9, 0.7
    adv, returns = gae_advantages(reward, values, gamma, lam)
    for i in range(4):
        for k in range(5):
            total = 0.0
            for j in range(k, 5):
                nxt = values[i, j + 1] if j + 1 < 5 else 0.0
                r = reward[i] if j == 4 else 0.0
                total += (gamma * lam) ** (j - k) * (r + gamma * nxt - values[i, j])
            assert adv[i, k] == pytest.approx(total)
    np.testing.assert_allclose(returns, adv + values)
    # gamma = lambda = 1: the advantage is the terminal reward minus the state's value.
    adv1, _ = gae_advantages(reward, values, 1.0, 1.0)
    np.testing.assert_allclose(adv1, reward[:, None] - values)


def test_value_head_learns_the_per_condition_return():
    settings = advantage_settings(value_head=True, gamma=1.0, gae_lambda=1.0, value_lr=1.0, clip=100.0)
    table = ValueTable(2, 3)
    credit = np.array([1.0, 3.0, -1.0, -3.0])
    condition = np.array([0, 0, 1, 1])
    first, stats = step_advantages(credit, condition, 3, settings, table)
    normalised = group_advantages(credit, np.zeros(4), settings)
    np.testing.assert_allclose(first, np.repeat(normalised[:, None], 3, axis=1))  # V = 0 at the start
    assert stats["value_loss"] > 0
    np.testing.assert_allclose(table.table[0], normalised[:2].mean())
    second, _ = step_advantages(credit, condition, 3, settings, table)
    # With the learnt baseline the advantages are centred within each condition.
    np.testing.assert_allclose(second[:2].mean(axis=0), 0.0, atol=1e-12)


# TRPO saves its gradient pass only: in one process the line search scores its tries in batches
# grouped by noise level (marsdiff.rl.line_search), so its accepted pass is not the movement's
# batches and the post-update scoring is a pass of its own (reusing it would differ by rounding).
@pytest.mark.parametrize("algorithm,passes_saved", [("ppo", (1, 0)), ("trpo", (1, 1))])
def test_the_movement_statistics_reuse_the_updates_passes_with_the_same_results(tmp_path, one_torch_thread, monkeypatch,
                                                                                 algorithm, passes_saved):
    """The post-update statistics take the pre-update distributions from the update's own scoring
    (TRPO: its gradient pass; PPO: its first minibatch; round 000: the base means of the zero
    adapter) and TRPO's post-update scoring from its accepted line-search pass where that pass used
    the same batches (several processes; see the parametrize comment): whole passes
    fewer (``passes_saved`` per round), and the same metrics and weights, bit for bit, as
    separate passes before and after the update."""
    from marsdiff.rl.actions import DenoiseActions
    from marsdiff.rl.movement import UpdateMovement
    from marsdiff.rl.ppo import PPOSettings

    exp = experiment("lora_unet", algorithm=algorithm, images_per_round=8, rounds=2,
                     **{algorithm: {"minibatch_size": 8, **({"fvp_subsample": 8} if algorithm == "trpo" else {})}})
    rescored = []
    real_gaussian = DenoiseActions._gaussian

    def counting(self, batch):
        rescored[-1] += len(batch)
        return real_gaussian(self, batch)

    monkeypatch.setattr(DenoiseActions, "_gaussian", counting)

    def rounds(out):
        policy, results = RoundPolicy.initial("lora_unet", tiny_pixel_backend(), exp), []
        for r in range(exp["rounds"]):
            round_dir = out / f"round_{r:03d}"
            sample_policy_round(policy, round_sampling_settings({"batch_size": 16}, exp), exp, r, round_dir,
                                store=round_store())
            rescored.append(0)
            metrics = update_policy_round(policy, exp, r, round_dir / "trajectories.h5", brightness(round_dir / "trajectories.h5"),
                                          out / f"round_{r - 1:03d}" / "policy" if r else None, round_dir / "policy",
                                          progress=False)
            weights = b"".join(p.read_bytes() for p in sorted((round_dir / "policy").rglob("*.safetensors")))
            results.append(({k: v for k, v in metrics.items() if k not in TIMING_KEYS and "seconds" not in k}, weights))
        return results

    reused = rounds(tmp_path / "reused")
    reused_counts, rescored[:] = list(rescored), []
    monkeypatch.setattr(UpdateMovement, "reuse_update_passes", False)
    separate = rounds(tmp_path / "separate")
    assert json.dumps([m for m, _ in reused], sort_keys=True) == json.dumps([m for m, _ in separate], sort_keys=True)
    assert [w for _, w in reused] == [w for _, w in separate]
    assert reused[1][0]["kl_post_update"] > 0  # round 001 moved from a nonzero adapter: the swap path ran
    # one pass: every action of the round once (PPO's "actions" count every epoch's)
    epochs = PPOSettings.from_config(exp.get("ppo")).epochs if algorithm == "ppo" else 1
    per_pass = int(reused[0][0]["actions"]) // epochs
    saved = [s - r for s, r in zip(rescored, reused_counts)]
    for r, passes in enumerate(passes_saved):
        if passes:
            assert saved[r] == passes * per_pass
        else:  # PPO after round 000: its first minibatch's share of the pre-update pass
            assert 0 < saved[r] < per_pass
