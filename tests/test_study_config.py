"""config/study.yaml follows the declared protocol (docs/rl.md, "Study"), layered on the default
config as `--configfile` layers it; the pairing of arms with their A/A base on the same seeds;
the arm/seed design's refusals; and the study's dry run (the target `study`)."""

from __future__ import annotations

import pytest

from conftest import REPO, make_workdir, run_snakemake
from marsdiff.config import check_config, deep_merge, read_config_file
from marsdiff.errors import MarsdiffError
from marsdiff.rl.experiments import experiment_settings
from marsdiff.study.pairing import arm_of, paired_base, study_design

STUDY = REPO / "config" / "study.yaml"


def study_config(validate=False):
    config = deep_merge(read_config_file(REPO / "config" / "config.yaml"), read_config_file(STUDY))
    return check_config(config) if validate else config


def arms(design, control):
    out = {}
    for name, row in design.items():
        if row["control"] == control:
            out.setdefault(row["arm"], set()).add(row["seed"])
    return out


def test_the_study_has_the_protocols_arms_controls_seeds_and_streams():
    config = study_config()
    design = study_design(config["experiments"], config["sampling"])
    three = {0, 1, 2}
    assert arms(design, "none") == {"ppo_lora": three, "ppo_scheduler": three}
    assert arms(design, "shuffled_credit") == {"shuffled": three}
    assert arms(design, "zero_lr") == {"aa": three}
    assert config["evaluation"]["streams"] == 2
    assert config["run_dir"] not in (".", "") and not config["run_dir"].startswith("results")
    for name, row in design.items():
        settings = experiment_settings(config["experiments"], name, config["sampling"])
        assert (settings["rounds"], settings["images_per_round"], settings["steps"]) == (4, 32, 40), name
        if row["control"] != "zero_lr":
            base = row["paired_base"]
            assert base and design[base]["arm"] == "aa" and design[base]["seed"] == row["seed"], name


def test_every_member_of_an_arm_has_the_arms_settings_but_its_seed():
    """The seed-0 members merge with config/config.yaml's entries of the same name: a key the
    default sets and the study's anchor lacks would make seed 0 a different experiment."""
    config = study_config()
    design = study_design(config["experiments"], config["sampling"])
    by_arm = {}
    for name, row in design.items():
        settings = experiment_settings(config["experiments"], name, config["sampling"])
        by_arm.setdefault(row["arm"], []).append({k: v for k, v in settings.items() if k not in ("name", "seed")})
    for arm, members in by_arm.items():
        assert all(m == members[0] for m in members), arm
    # the controls are ppo_lora but for the control
    lora = next(iter(by_arm["ppo_lora"]))
    for control in ("shuffled", "aa"):
        assert {**by_arm[control][0], "control": "none"} == lora, control


def test_the_study_config_validates_against_the_schema():
    config = study_config(validate=True)
    assert config["experiments"]["aa_s1"]["control"] == "zero_lr"


def experiments(**entries):
    base = {"rounds": 2, "images_per_round": 8, "steps": 4}
    return {name: {**base, **values} for name, values in entries.items()}


def test_the_paired_base_is_the_zero_lr_experiment_drawing_the_same_noise():
    exps = experiments(arm={"seed": 1}, aa_s0={"control": "zero_lr", "seed": 0},
                       aa_s1={"control": "zero_lr", "seed": 1}, plan_aa={"control": "zero_lr", "seed": 1,
                                                                         "mode": "scheduler_policy"})
    assert paired_base(exps, "arm") == "aa_s1"  # the LoRA A/A (exactly the base model) before a plan policy
    assert paired_base(exps, "aa_s1") is None  # an A/A run is a base, not an arm
    for change in ({"images_per_round": 6}, {"steps": 3}, {"class_distribution": "tails"}, {"rounds": 3}):
        moved = {**exps, "arm": {**exps["arm"], **change}}
        assert paired_base(moved, "arm") is None, change
    assert paired_base(experiments(arm={}, other={}), "arm") is None


def test_the_design_names_arms_and_refuses_ambiguous_seeds():
    assert [arm_of(n) for n in ("ppo_lora", "ppo_lora_s2", "aa_s10", "x_s", "s_1")] == \
        ["ppo_lora", "ppo_lora", "aa", "x_s", "s_1"]
    with pytest.raises(MarsdiffError, match=r"experiments.a_s1.seed: 0, the same as experiments.a of study arm 'a'"):
        study_design(experiments(a={"seed": 0}, a_s1={"seed": 0}))
    with pytest.raises(MarsdiffError, match=r"experiments.a_s1.mode: 'scheduler_policy', but experiments.a"):
        study_design(experiments(a={"seed": 0}, a_s1={"seed": 1, "mode": "scheduler_policy"}))


def test_the_study_target_dry_runs_every_arm_control_and_the_summary(tmp_path):
    workdir = make_workdir(tmp_path)
    result = run_snakemake(workdir, "-n", "study", "--configfile", str(STUDY))
    from test_workflow import planned_jobs

    jobs = planned_jobs(result)
    assert jobs["study_summary"] == 1 and jobs["study"] == 1
    assert jobs["update_round"] == 12 * 4 and jobs["plot_experiment"] == 12
    assert "runs/study/results/study/summary.md" in result.stdout
    # ppo_lora_s2's curve reads its A/A base's rounds on the same seed
    assert "runs/study/results/runs/aa_s2/round_003/rewards.csv" in result.stdout
