"""Diversity ladders, the validate_rewards library function end to end, and require_validated."""

import json

import numpy as np
import pandas as pd
import pytest

from marsdiff.errors import MarsdiffError
from marsdiff.io.digests import file_digest
from marsdiff.rewards.ladders import build_ladder, copies_levels
from marsdiff.rewards.validation import ValidationConfig, mix_grid, require_validated, select_mix, summarise
from marsdiff.stages.validate_rewards import validate_rewards

LADDERS = ["copies", "size", "lighting", "categories", "noise"]


def synthetic_reference(tmp_path, n_train=72, n_heldout=12, dim=6, seed=0):
    """Features whose mean depends on size and lighting category; held-out rows are poisoned."""
    rng = np.random.default_rng(seed)
    n = n_train + n_heldout
    size = rng.integers(0, 3, n)
    lighting = rng.integers(0, 2, n)
    features = rng.normal(scale=0.5, size=(n, dim))
    features[:, 0] += 2.0 * size
    features[:, 1] += 2.0 * lighting
    split = np.array(["train"] * n_train + ["heldout"] * n_heldout)
    # Validation must never read the held-out split: rows 1e6 away would dominate every kernel,
    # distance and bandwidth (and wreck the ladders' rank correlations) if it did. (Not NaN:
    # reading a feature file refuses NaN as damage.)
    features[split == "heldout"] = 1e6
    ids = [f"c{i:03d}" for i in range(n)]
    manifest = pd.DataFrame(
        {
            "id": ids,
            "path": [f"images/{i}.png" for i in ids],
            "split": split,
            "size_cat": [f"s{v}" for v in size],
            "lighting_cat": [["dark", "bright"][v] for v in lighting],
            "contrast_cat": "low",
            "diameter_px": 10.0,
        }
    )
    np.save(tmp_path / "f.npy", features.astype(np.float32))
    (tmp_path / "f.ids.txt").write_text("\n".join(ids) + "\n")
    # What extract_features writes beside the features: the stage checks it names its extractor.
    (tmp_path / "f.json").write_text(json.dumps({"extractor": "synthetic", "dim": dim, "dtype": "float32",
                                                 "sha256": file_digest(tmp_path / "f.npy")}))
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path


def test_ladder_levels_have_the_promised_structure():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(40, 3))
    meta = pd.DataFrame({"size_cat": np.repeat(["a", "b", "c", "d"], 10)})
    copies = build_ladder("copies", pool, meta, 12, rng)
    assert [lvl.level for lvl in copies] == copies_levels(12) == [1, 2, 4, 8, 12]
    assert [len(np.unique(lvl.features, axis=0)) for lvl in copies] == [1, 2, 4, 8, 12]
    sizes = build_ladder("size", pool, meta, 12, rng)
    for lvl in sizes:
        rows = [int(np.flatnonzero((pool == f).all(1))[0]) for f in lvl.features]
        assert len(set(meta["size_cat"].iloc[rows])) == lvl.level and len(lvl.features) == 12
    noise = build_ladder("noise", pool, meta, 12, rng)
    assert np.ptp(noise[0].features, axis=0).max() == 0.0  # t = 0: every row at the mean
    spreads = [lvl.features.std(axis=0).sum() for lvl in noise]
    assert spreads == sorted(spreads)
    with pytest.raises(MarsdiffError, match="lighting_cat"):
        build_ladder("lighting", pool, meta, 12, rng)
    with pytest.raises(MarsdiffError, match="lighting_cat"):
        build_ladder("categories", pool, meta, 12, rng)


def test_missing_categories_ladder_draws_from_k_joint_categories():
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(48, 3))
    # 4 sizes x 3 lightings = 12 joint categories of 4 rows each
    meta = pd.DataFrame({"size_cat": np.repeat(["a", "b", "c", "d"], 12), "lighting_cat": np.tile(["x", "y", "z"], 16)})
    joint = (meta["size_cat"] + meta["lighting_cat"]).to_numpy()
    levels = build_ladder("categories", pool, meta, 12, rng)
    assert [lvl.level for lvl in levels] == list(range(1, 13))
    for lvl in levels:
        rows = [int(np.flatnonzero((pool == f).all(1))[0]) for f in lvl.features]
        assert len(set(joint[rows])) == lvl.level and len(lvl.features) == 12
        # a category short of rows gives each of its rows once before repeating any
        counts = np.unique(rows, return_counts=True)[1]
        assert counts.max() - counts.min() <= 1 if lvl.level <= 3 else counts.max() == 1


def test_validate_rewards_end_to_end(tmp_path):
    root = synthetic_reference(tmp_path)
    out = tmp_path / "validation"
    section = {
        "baseline_repeats": 4,
        "validation": {"repeats": 3, "set_size": 10, "bandwidth_scales": [0.5, 1.0], "ladders": LADDERS,
                       "snr": {"set_size": 6, "pool_rounds": [0, 1, 5], "probes": 8, "repeats": 2}},
    }
    plots = {name: out / f"ladder_{name}.png" for name in LADDERS}
    summary = validate_rewards(
        root / "f.npy", root / "manifest.csv", section,
        out / "ladder.csv", out / "validation.json", plots, extractor="synthetic", rho_plot=out / "rho.png",
    )
    table = pd.read_csv(out / "ladder.csv")
    assert list(table.columns) == ["ladder", "level", "repeat", "reward", "bandwidth_scale", "bandwidth", "value",
                                   "standardised"]
    primary = table[table["bandwidth_scale"] == 0.5]
    assert primary.loc[primary["reward"].isin(["mmd", "information_gain", "coverage"]), "standardised"].notna().all()
    assert table.loc[table["bandwidth_scale"] == 1.0, "standardised"].isna().all()
    assert (out / "rho.png").stat().st_size > 0
    assert (table["bandwidth"] > 0).all()
    assert set(table["ladder"]) == set(LADDERS) and table["value"].notna().all()
    assert set(table["reward"]) == {"mmd", "information_gain", "conditional_information_gain", "cmmd",
                                    "frechet", "vendi", "coverage", "combined"}
    assert all(path.stat().st_size > 0 for path in plots.values())
    saved = json.loads((out / "validation.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["n_train_reference"] == 72 and saved["extractor"] == "synthetic"
    # the mean of these features follows the categories, so MMD must rank every ladder correctly
    for ladder in LADDERS:
        assert saved["rewards"]["mmd"]["ladders"][ladder]["spearman"] >= 0.9, ladder
    assert saved["rewards"]["mmd"]["passed"] and saved["rewards"]["combined"]["passed"]
    assert set(saved["bandwidth_sweep"]["mmd"]) == {"0.5", "1"}
    assert "frechet" not in saved["bandwidth_sweep"]  # no bandwidth, not swept
    assert require_validated(out / "validation.json", "combined", enforce=True)["passed"]
    # every reward has a per-draw rho on every ladder
    assert all(saved["rewards"][r]["ladders"][ladder]["spearman_draws"] is not None
               for r in saved["rewards"] for ladder in LADDERS)
    mixes = saved["mix_selection"]
    assert len(mixes["grid"]) == 15 and mixes["chosen"]["passed"]
    # split-half credit: pools of 0 and 1 rounds fit the 36-row pool half, 5 rounds does not
    snr = saved["credit_snr"]["by_pool_rounds"]
    assert "skipped" in snr["5"]
    for rounds in ("0", "1"):
        assert snr[rounds]["combined"]["n"] == 16 and snr[rounds]["previous_default"]["pearson"] is not None
        assert snr[rounds]["combined"] == snr[rounds]["0.5 mmd + 0.5 information_gain"]


def test_mix_rule_prefers_the_steadier_credit_among_near_best_orderings():
    """Two terms: 'a' orders the ladder a bit better, 'b' has the steadier credit: within the
    tolerance the split-half r decides; with no tolerance the ordering does."""
    rows = []
    rng = np.random.default_rng(0)
    for repeat in range(6):
        for level in range(1, 6):
            noise = rng.normal(size=2)
            for name, z in (("a", level + 0.3 * noise[0]), ("b", level + 0.6 * noise[1])):
                rows.append(("copies", level, repeat, name, 1.0, 1.0, z, z))
    table = pd.DataFrame(rows, columns=["ladder", "level", "repeat", "reward", "bandwidth_scale", "bandwidth", "value",
                                        "standardised"])
    grid = mix_grid(("a", "b"), 0.5)
    assert grid == [{"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5}, {"a": 0.0, "b": 1.0}]
    names = {"1 a": 0.1, "0.5 a + 0.5 b": 0.5, "1 b": 0.9}
    snr = {"by_pool_rounds": {"1": {name: {"pearson": r} for name, r in names.items()}}}
    loose = ValidationConfig.from_dict({"ladders": ["copies"], "mix": {"terms": ["a", "b"], "step": 0.5, "tolerance": 1.0}})
    assert select_mix(table, loose, 0.9, 1.0, snr, pool_rounds=1)["chosen"]["weights"] == {"a": 0.0, "b": 1.0}
    strict = ValidationConfig.from_dict({"ladders": ["copies"], "mix": {"terms": ["a", "b"], "step": 0.5, "tolerance": 0.0}})
    result = select_mix(table, strict, 0.9, 1.0, snr, pool_rounds=1)
    best = max(result["grid"], key=lambda g: g["min_spearman_draws"])
    assert result["chosen"]["weights"] == best["weights"] != {"a": 0.0, "b": 1.0}
    assert select_mix(table, strict, 0.9, 1.0)["chosen"]["weights"] == best["weights"]  # no SNR measured


def write_summary(path, passed):
    table = pd.DataFrame(
        [("copies", lvl, r, "mmd", 1.0, (lvl if passed else -lvl) + 0.01 * r) for lvl in (1, 2, 4) for r in range(2)],
        columns=["ladder", "level", "repeat", "reward", "bandwidth_scale", "value"],
    )
    path.write_text(json.dumps(summarise(table, 0.9, 1.0)))
    return path


def test_require_validated(tmp_path):
    good = write_summary(tmp_path / "good.json", passed=True)
    bad = write_summary(tmp_path / "bad.json", passed=False)
    assert require_validated(good, "mmd", enforce=True)["ladders"]["copies"]["spearman"] == pytest.approx(1.0)
    with pytest.raises(MarsdiffError, match=r"'mmd' failed diversity-ladder validation .*copies: rho -1.000 < 0.9"):
        require_validated(bad, "mmd", enforce=True)
    assert require_validated(bad, "mmd", enforce=False)["passed"] is False
    with pytest.raises(MarsdiffError, match="'vendi' was not validated .*validated: mmd"):
        require_validated(good, "vendi", enforce=True)
    with pytest.raises(MarsdiffError, match="cannot read reward validation"):
        require_validated(tmp_path / "missing.json", "mmd", enforce=True)
    assert require_validated(tmp_path / "missing.json", "mmd", enforce=False) is None


def test_constant_reward_fails_with_reason(tmp_path):
    table = pd.DataFrame(
        [("noise", lvl, 0, "flat", 1.0, 3.0) for lvl in (0.0, 0.5, 1.0)],
        columns=["ladder", "level", "repeat", "reward", "bandwidth_scale", "value"],
    )
    summary = summarise(table, 0.9, 1.0)
    assert summary["rewards"]["flat"]["failures"] == ["noise: constant across levels"]
    path = tmp_path / "v.json"
    path.write_text(json.dumps(summary))
    with pytest.raises(MarsdiffError, match="constant across levels"):
        require_validated(path, "flat", enforce=True)


def test_workflow_script_adapter(tmp_path):
    """workflow/scripts/validate_rewards.py wires Snakemake's objects to the library function."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    script = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "validate_rewards.py"
    spec = importlib.util.spec_from_file_location("validate_rewards_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = synthetic_reference(tmp_path)
    out = tmp_path / "out"
    # the rule's params are the reward section itself (marsdiff.workflow.params.validate_rewards)
    section = {"baseline_repeats": 3, "terms": {"mmd": {"kind": "mmd", "weight": 1.0}},
               "validation": {"repeats": 2, "set_size": 6, "ladders": ["copies"], "bandwidth_scales": [0.5]}}
    snakemake = SimpleNamespace(
        input=SimpleNamespace(features=str(root / "f.npy"), ids=str(root / "f.ids.txt"), manifest=str(root / "manifest.csv")),
        output=SimpleNamespace(ladder=str(out / "ladder.csv"), validation=str(out / "validation.json"),
                               plots=[str(out / "ladder_copies.png")], rho_plot=str(out / "ladder_rho.png")),
        params=SimpleNamespace(cfg=json.dumps(section), ladders=["copies"], extractor="synthetic"),
        log=[str(tmp_path / "validate.log")],
    )
    module.main(snakemake)
    assert json.loads((out / "validation.json").read_text())["rewards"]["mmd"]["passed"]
    assert (out / "ladder_copies.png").exists() and "repeat 2/2" in (tmp_path / "validate.log").read_text()
    assert (out / "ladder_rho.png").exists()
