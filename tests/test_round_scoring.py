"""score_round and the matched-resolution reference set: the reference brought to the generator's
size exactly as the training set is, credit equal to the closed-form leave-one-out, the
validation gate, the minimum round size and feature-cache reuse."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO
from marsdiff.data.images import resize_to
from marsdiff.data.resolution import generator_size, matched_size
from marsdiff.errors import MarsdiffError
from marsdiff.features import build_extractor, read_feature_set
from marsdiff.rewards import RewardConfig, RewardModel
from marsdiff.rewards.round_scoring import check_validated, train_reference_features
from marsdiff.stages.extract_features import extract_image_set
from marsdiff.stages.resize_reference import write_resized_reference
from marsdiff.stages.score_round import score_round

N_REFERENCE, N_HELDOUT, N_ROUND = 24, 6, 6


def crater_like(rng, side):
    """A grey crater-ish image: noisy background, a dark disc with a bright rim of random size."""
    yy, xx = np.mgrid[:side, :side]
    cy, cx = rng.uniform(0.3, 0.7, 2) * side
    radius = rng.uniform(0.1, 0.4) * side
    r = np.hypot(yy - cy, xx - cx)
    image = rng.normal(120, 20, (side, side)) - 60 * (r < radius) + 50 * (np.abs(r - radius) < side / 20)
    return np.clip(image, 0, 255).astype(np.uint8)


def reward_section(**validation):
    section = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["reward"]
    section["baseline_repeats"] = 4
    section["validation"].update(validation)
    return section


def write_validation(path, section, combined=True, terms=None):
    """A validation.json in the layout validate_rewards writes (summarise + run_validation keys)."""
    config = RewardConfig.from_dict(section)
    rewards = {"combined": {"passed": combined, "failures": [] if combined else ["size: rho 0.500 < 0.9"]}}
    for name, passed in (terms or {}).items():
        rewards[name] = {"passed": passed, "failures": [] if passed else ["noise: rho 0.100 < 0.9"]}
    path.write_text(json.dumps({
        "min_spearman": 0.9,
        "bandwidth_scale": config.bandwidth_scale,
        "bandwidth": config.bandwidth,
        "reward_terms": {t.name: {"kind": t.kind, "weight": t.weight, "standardise": t.standardise} for t in config.terms},
        "rewards": rewards,
    }))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 64 px reference set (manifest + PNGs), its 32 px version and features, and a 32 px round."""
    root = tmp_path_factory.mktemp("scoring")
    rng = np.random.default_rng(0)
    ref = root / "reference"
    (ref / "images").mkdir(parents=True)
    rows = []
    for i in range(N_REFERENCE):
        Image.fromarray(crater_like(rng, 64)).save(ref / "images" / f"c{i:03d}.png")
        rows.append({"id": f"c{i:03d}", "path": f"images/c{i:03d}.png", "size_cat": f"s{i % 2}",
                     "diameter_px": 5 + i, "split": "heldout" if i < N_HELDOUT else "train"})
    pd.DataFrame(rows).to_csv(ref / "manifest.csv", index=False)
    features_cfg = {
        "extractors": ["mobilenet_v2"], "batch_size": 16, "device": "cpu", "cache_dir": str(root / "cache"),
        "mobilenet_v2": {"input_size": 32, "layer": 3, "grid": 2},
    }
    write_resized_reference(ref / "manifest.csv", ref / "at_32px", 32)
    extract_image_set(ref / "at_32px" / "manifest.csv", "mobilenet_v2", features_cfg,
                      root / "features" / "reference_32px" / "mobilenet_v2.npy", progress=False)
    round_dir = make_round(root / "round_000", rng, N_ROUND, 32)
    return {"root": root, "reference": ref, "features_cfg": features_cfg, "round": round_dir,
            "reference_features": root / "features" / "reference_32px" / "mobilenet_v2.npy"}


def make_round(round_dir, rng, n, side, rgb=False):
    """A round directory as sample_round writes it: images/r000_XXXXX.png + samples.csv."""
    (round_dir / "images").mkdir(parents=True)
    rows = []
    for index in range(n):
        image = crater_like(rng, side)
        if rgb:
            image = np.repeat(image[..., None], 3, axis=2)
        name = f"r000_{index:05d}.png"
        Image.fromarray(image).save(round_dir / "images" / name)
        rows.append({"image_id": name[:-4], "file": name, "image_index": index, "condition": index % 2,
                     "condition_name": f"s{index % 2}", "condition_log_prob": -0.69, "seed": 100 + index})
    pd.DataFrame(rows).to_csv(round_dir / "samples.csv", index=False)
    return round_dir


def run_score(world, out, round_dir=None, section=None, validation=None, resolution=32, **pool):
    """``pool``: features_npy / pool_features passed on to score_round."""
    out.mkdir(parents=True, exist_ok=True)
    section = section or reward_section()
    round_dir = round_dir or world["round"]
    return score_round(
        images_dir=round_dir / "images",
        samples_csv=round_dir / "samples.csv",
        reference_features=world["reference_features"],
        manifest=world["reference"] / "manifest.csv",
        validation_json=validation or write_validation(out / "validation.json", section),
        reward_section=section,
        features_cfg=world["features_cfg"],
        resolution=resolution,
        rewards_csv=out / "rewards.csv",
        summary_json=out / "reward_summary.json",
        **pool,
    )


# ---------------------------------------------------------------------------- matched resolution


def test_resized_reference_is_the_training_set_bit_for_bit(world):
    """The 32 px reference the reward uses holds the very pixels the pixel model trains on."""
    from marsdiff.diffusion.pixel import load_train_set, to_uint8

    ref = world["reference"]
    resized = pd.read_csv(ref / "at_32px" / "manifest.csv", dtype={"id": str})
    source = pd.read_csv(ref / "manifest.csv", dtype={"id": str})
    assert list(resized.columns) == list(source.columns) and list(resized["id"]) == list(source["id"])
    assert (resized.drop(columns="path") == source.drop(columns="path")).all().all()
    train = load_train_set(ref / "manifest.csv", 32)
    trained_on = to_uint8(train.images)
    by_id = dict(zip(resized["id"], resized["path"]))
    for image_id, pixels in zip(train.ids, trained_on):
        stored = np.asarray(Image.open(ref / "at_32px" / by_id[image_id]))
        assert stored.shape == (32, 32) and stored.dtype == np.uint8
        np.testing.assert_array_equal(stored, pixels)
    # and both are resize_to of the 64 px crop
    first = np.asarray(Image.open(ref / source["path"][0]))
    np.testing.assert_array_equal(np.asarray(Image.open(ref / "at_32px" / resized["path"][0])), resize_to(first, 32))


def test_resized_reference_never_upsamples(world, tmp_path):
    with pytest.raises(MarsdiffError, match="smaller than the matched size 128") as err:
        write_resized_reference(world["reference"] / "manifest.csv", tmp_path / "at_128px", 128)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "at_128px" / "manifest.csv").exists()


def test_resized_manifest_carries_the_digests_of_the_resized_images(world, tmp_path):
    """images.csv lists each image's sha256; the resized manifest lists the resized files' own,
    so the workflow can follow the resized folder through it."""
    from marsdiff.io.digests import file_digest

    ref = world["reference"]
    index = pd.read_csv(ref / "manifest.csv")
    index["sha256"] = [file_digest(ref / p) for p in index["path"]]
    index.to_csv(ref / "images.csv", index=False)
    resized = write_resized_reference(ref / "images.csv", tmp_path / "at_16px", 16)
    assert list(resized["sha256"]) == [file_digest(tmp_path / "at_16px" / p) for p in resized["path"]]
    assert pd.read_csv(tmp_path / "at_16px" / "manifest.csv")["sha256"].tolist() == list(resized["sha256"])


def test_matched_size_follows_the_generator():
    from marsdiff.config import load_config

    def config(model: dict, reference_px: int = 64) -> dict:
        return load_config(None, overrides={"model": model, "reference": {"image_size": reference_px}})

    # the schema fills the pixel model's size from its preset; a written size wins
    for pixel, size in (({}, 32), ({"preset": "large"}, 64), ({"preset": "large", "image_size": 48}, 48)):
        assert generator_size(config({"pixel": pixel})["model"]) == size
    assert matched_size(config({"pixel": {"preset": "small"}})) == 32
    assert matched_size(config({"pixel": {"preset": "large"}}, reference_px=48)) == 48
    sd = config({"backend": "stable_diffusion", "stable_diffusion": {"resolution": 512}})
    assert generator_size(sd["model"]) == 512 and matched_size(sd) == 64


# ---------------------------------------------------------------------------- score_round


def test_rewards_csv_credit_is_the_exact_leave_one_out(world, tmp_path):
    from marsdiff.features.cache import extract_with_cache

    score = run_score(world, tmp_path)
    table = pd.read_csv(tmp_path / "rewards.csv", dtype={"image_id": str})
    summary = json.loads((tmp_path / "reward_summary.json").read_text())
    # the same features (from the cache) and the reward model on the train rows only
    samples = pd.read_csv(world["round"] / "samples.csv")
    extractor = build_extractor("mobilenet_v2", world["features_cfg"])
    features, _ = extract_with_cache([world["round"] / "images" / f for f in samples["file"]], extractor,
                                     world["features_cfg"]["cache_dir"], progress=False)
    reference, ids = train_reference_features(world["reference_features"], world["reference"] / "manifest.csv",
                                              "mobilenet_v2", extractor.dim)
    assert len(reference) == N_REFERENCE - N_HELDOUT and not any(i in ids for i in ("c000", "c005"))
    model = RewardModel(reference, reward_section())
    credit = model.leave_one_out(features)
    np.testing.assert_array_equal(table["credit"].to_numpy(), credit.combined)
    for name, values in credit.terms.items():
        np.testing.assert_array_equal(table[f"credit_{name}"].to_numpy(), values)
    assert summary["set_reward"] == model.score(features).value == score.result.value
    assert list(table["image_id"]) == list(samples["image_id"])
    for column in ("image_index", "condition", "condition_name", "seed", "rank", "nn_id", "duplicate",
                   "ref_nn_id", "ref_nn_distance", "novel"):
        assert column in table
    assert table["rank"].min() == 1 and table.loc[table["credit"].idxmax(), "rank"] == 1
    assert set(table["ref_nn_id"]) <= set(ids)  # nearest reference neighbours come from the train split
    assert summary["n_images"] == N_ROUND and summary["n_reference_train"] == N_REFERENCE - N_HELDOUT
    assert summary["extractor"] == "mobilenet_v2" and summary["resolution"]["matched"] == 32
    assert summary["resolution"]["generated"] == [32] and summary["validation"]["checked"] == "combined"
    for term in summary["terms"].values():
        assert {"raw", "standardised", "weight", "kind"} <= set(term)
    assert "baseline_std" in summary["terms"]["mmd"]


def test_features_come_from_the_cache_on_a_second_call(world, tmp_path):
    first = run_score(world, tmp_path / "a")
    second = run_score(world, tmp_path / "b")
    assert second.cache == {"hits": N_ROUND, "misses": 0}
    assert first.cache["hits"] + first.cache["misses"] == N_ROUND
    # outputs depend on the inputs only: re-scoring leaves byte-identical files
    for name in ("rewards.csv", "reward_summary.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_larger_generated_images_are_box_downsampled_like_the_reference(world, tmp_path):
    """Stable Diffusion's case: images above the matched size are brought down with resize_to."""
    rng = np.random.default_rng(7)
    big = make_round(tmp_path / "big", rng, 4, 64, rgb=True)
    small = tmp_path / "small"
    (small / "images").mkdir(parents=True)
    for path in sorted((big / "images").iterdir()):
        grey = np.asarray(Image.open(path))[..., 0]
        Image.fromarray(resize_to(grey, 32)).save(small / "images" / path.name)
    (small / "samples.csv").write_bytes((big / "samples.csv").read_bytes())
    from_big = run_score(world, tmp_path / "out_big", round_dir=big)
    from_small = run_score(world, tmp_path / "out_small", round_dir=small)
    assert from_big.summary["resolution"] == {"matched": 32, "generated": [64], "resized_images": 4}
    np.testing.assert_allclose(from_big.table["credit"], from_small.table["credit"], rtol=1e-6, atol=1e-9)
    with pytest.raises(MarsdiffError, match="below the matched resolution 64"):
        run_score(world, tmp_path / "out_up", round_dir=small, resolution=64)


def test_failed_validation_is_refused_unless_enforce_is_false(world, tmp_path):
    section = reward_section()
    failed = write_validation(tmp_path / "failed.json", section, combined=False)
    with pytest.raises(MarsdiffError, match="failed diversity-ladder validation") as err:
        run_score(world, tmp_path / "refused", section=section, validation=failed)
    assert "\n" not in str(err.value) and "enforce: false" in str(err.value)
    assert not (tmp_path / "refused" / "rewards.csv").exists()
    relaxed = reward_section(enforce=False)
    score = run_score(world, tmp_path / "accepted", section=relaxed, validation=failed)
    assert (tmp_path / "accepted" / "rewards.csv").is_file()
    assert score.summary["validation"] == {"checked": "combined", "enforce": False}


def test_an_experiment_reward_override_needs_its_terms_validated(tmp_path):
    """A different combination was never ranked on the ladders: each weighted term must have passed."""
    section = reward_section()
    override = reward_section()
    override["terms"] = {"mmd": {"kind": "mmd", "weight": 1.0, "standardise": "zscore"}}
    ok = write_validation(tmp_path / "ok.json", section, terms={"mmd": True})
    assert check_validated(ok, override) == {"checked": "terms", "terms": ["mmd"], "enforce": True}
    bad = write_validation(tmp_path / "bad.json", section, terms={"mmd": False})
    with pytest.raises(MarsdiffError, match="'mmd' failed"):
        check_validated(bad, override)
    override["terms"] = {"mmd": {"kind": "mmd", "weight": -1.0}}
    with pytest.raises(MarsdiffError, match="negative weights"):
        check_validated(ok, override)


def test_a_two_image_round_is_refused_in_one_line(world, tmp_path):
    round_dir = make_round(tmp_path / "round", np.random.default_rng(3), 2, 32)
    with pytest.raises(MarsdiffError, match="2 image") as err:
        run_score(world, tmp_path / "out", round_dir=round_dir)
    assert "\n" not in str(err.value) and "at least 3" in str(err.value)
    assert not (tmp_path / "out" / "reward_summary.json").exists()


def test_missing_round_image_names_the_file(world, tmp_path):
    round_dir = make_round(tmp_path / "round", np.random.default_rng(4), 4, 32)
    (round_dir / "images" / "r000_00002.png").unlink()
    with pytest.raises(MarsdiffError, match="r000_00002.png"):
        run_score(world, tmp_path / "out", round_dir=round_dir)


def test_reference_features_of_another_extractor_setting_are_refused(world, tmp_path):
    other = {**world["features_cfg"], "mobilenet_v2": {"input_size": 32, "layer": 7, "grid": 1}}
    with pytest.raises(MarsdiffError, match="features") as err:
        score_round(
            images_dir=world["round"] / "images", samples_csv=world["round"] / "samples.csv",
            reference_features=world["reference_features"], manifest=world["reference"] / "manifest.csv",
            validation_json=write_validation(tmp_path / "validation.json", reward_section()),
            reward_section=reward_section(), features_cfg=other, resolution=32,
            rewards_csv=tmp_path / "rewards.csv", summary_json=tmp_path / "reward_summary.json",
        )
    assert "\n" not in str(err.value) and "reference_32px" in str(err.value)


def test_a_round_with_a_pool_credits_its_own_images_against_the_union(world, tmp_path):
    """Round 0 writes its features (the feature-file contract); round 1 scores S u P with the
    credit of its own images exactly f(S u P) - f(S u P - x); a pool too large for the z-score
    baseline is cut to whole rows, most recent first, and says so."""
    rng = np.random.default_rng(11)
    round1 = make_round(tmp_path / "round_001", rng, N_ROUND, 32)
    first = run_score(world, tmp_path / "r0", features_npy=tmp_path / "r0" / "features.npy")
    features0, ids0 = read_feature_set(tmp_path / "r0" / "features.npy", extractor="mobilenet_v2")
    assert ids0 == list(pd.read_csv(world["round"] / "samples.csv")["image_id"])
    assert first.summary["pool"] == {"rounds": 1, "files": [], "rows_available": 0, "rows": 0}
    second = run_score(world, tmp_path / "r1", round_dir=round1, features_npy=tmp_path / "r1" / "features.npy",
                       pool_features=[tmp_path / "r0" / "features.npy"])
    features1, _ = read_feature_set(tmp_path / "r1" / "features.npy", extractor="mobilenet_v2")
    reference, _ = train_reference_features(world["reference_features"], world["reference"] / "manifest.csv")
    model = RewardModel(reference, reward_section())
    pool = features0.astype(np.float64)
    table = pd.read_csv(tmp_path / "r1" / "rewards.csv")
    np.testing.assert_array_equal(table["credit"].to_numpy(), model.leave_one_out(features1, pool=pool).combined)
    union = np.concatenate([features1, pool])
    for name in ("mmd", "coverage"):
        term = model.terms[name]
        brute = [term.value(union).reward - term.value(np.delete(union, a, 0)).reward for a in range(N_ROUND)]
        np.testing.assert_allclose(table[f"credit_{name}"].to_numpy(), brute, rtol=0, atol=1e-12)
    assert "credit_coverage" in table and len(table) == N_ROUND
    summary = json.loads((tmp_path / "r1" / "reward_summary.json").read_text())
    assert summary["set_reward"] == model.score(features1).value  # the round's own images
    assert summary["pool"]["rows"] == N_ROUND and summary["pool"]["set_reward_with_pool"] == model.score(features1, pool=pool).value
    # two earlier rounds: 18 train rows allow n + p <= 16, so 10 of the 12 pool rows, most recent first
    third = run_score(world, tmp_path / "r2", round_dir=round1,
                      pool_features=[tmp_path / "r1" / "features.npy", tmp_path / "r0" / "features.npy"])
    assert third.summary["pool"]["rows"] == 10 and third.summary["pool"]["rows_available"] == 12
    assert "z-score baseline" in third.summary["pool"]["limited_by"]
    expected = model.leave_one_out(features1, pool=np.concatenate([features1, pool])[:10]).combined
    np.testing.assert_array_equal(third.table["credit"].to_numpy(), expected)
