"""The experiments section (marsdiff.rl.experiments): every default comes from the schema (the
mode's defaultsBy entry first, the user's value over both), the keys without a schema default
come from the sampling section, and the settings dataclasses are the schema's sections."""

from __future__ import annotations

import dataclasses

import pytest

from marsdiff.config import filled_section, load_config, section_schema
from marsdiff.errors import MarsdiffError
from marsdiff.rl.experiments import ALGORITHMS, CONTROLS, MODES, SAMPLING_DEFAULTS, experiment_settings

ENTRY = section_schema("experiments.*")
BY_MODE = ENTRY["defaultsBy"]["mode"]


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.parametrize("mode", MODES)
def test_a_modes_defaults_apply_and_the_users_value_wins(mode):
    defaults = experiment_settings({"e": {"mode": mode}}, "e")
    table = list(_leaves(BY_MODE[mode]))
    assert table, mode
    for path, value in table:
        assert _at(defaults, path) == value, (mode, path)
        plain = ENTRY["properties"]
        for key in path[:-1]:
            plain = plain[key]["properties"]
        # a per-mode key has no plain default that could shadow or be mistaken for it
        assert "default" not in plain[path[-1]], path
    # The user's value wins, nested too, and leaves the mode's other defaults in the same section.
    own = {"mode": mode, "optimiser": {"lr": 0.123}, "ppo": {"epochs": 5}, "trpo": {"max_kl": 0.07},
           "kl_to_base": 0.0}
    settings = experiment_settings({"e": own}, "e")
    assert settings["optimiser"]["lr"] == 0.123 and settings["ppo"]["epochs"] == 5
    assert settings["trpo"]["max_kl"] == 0.07 and settings["kl_to_base"] == 0.0
    assert settings["ppo"]["minibatch_size"] == BY_MODE[mode]["ppo"]["minibatch_size"]
    assert settings["optimiser"]["weight_decay"] == ENTRY["properties"]["optimiser"]["properties"]["weight_decay"]["default"]


def test_the_mode_defaults_are_the_measured_ones():
    """The per-mode values docs/rl.md measured (a change here is a change of the default run)."""
    lora, plan = experiment_settings({"e": {}}, "e"), experiment_settings({"e": {"mode": "diversity_policy"}}, "e")
    assert (lora["mode"], lora["optimiser"]["lr"], lora["kl_to_base"], lora["ppo"]["epochs"]) == ("lora_unet", 1.5e-3, 0.1, 1)
    assert (plan["optimiser"]["lr"], plan["kl_to_base"], plan["ppo"]["epochs"], plan["ppo"]["minibatch_size"]) == (0.05, 0.0, 8, 8)
    assert (plan["trpo"]["max_kl"], plan["policy"]["init_std"]) == (0.1, 1.0)


def test_sampling_keys_come_from_the_sampling_section_unless_set():
    sampling = {"images_per_round": 12, "steps": 7, "eta": 0.6, "seed": 9, "class_distribution": [1, 2, 3]}
    settings = experiment_settings({"e": {}}, "e", sampling)
    assert {k: settings[k] for k in SAMPLING_DEFAULTS} == sampling
    own = experiment_settings({"e": {"steps": 3, "eta": 0.4}}, "e", sampling)
    assert (own["steps"], own["eta"], own["images_per_round"]) == (3, 0.4, 12)
    # a partial sampling section is filled with its own schema defaults first
    filled = filled_section("sampling", {})
    partial = experiment_settings({"e": {}}, "e", {"batch_size": 4})
    assert {k: partial[k] for k in SAMPLING_DEFAULTS} == {k: filled[k] for k in SAMPLING_DEFAULTS}
    for key in SAMPLING_DEFAULTS:
        assert "default" not in ENTRY["properties"][key], key


def test_the_eta_knob_starts_at_the_experiments_eta_unless_its_init_is_set():
    settings = experiment_settings({"e": {"mode": "scheduler_policy", "eta": 0.7}}, "e")
    assert settings["policy"]["knobs"]["eta"]["init"] == 0.7
    own = experiment_settings({"e": {"mode": "scheduler_policy", "eta": 0.7,
                                     "policy": {"knobs": {"eta": {"init": 0.9}}}}}, "e")
    assert own["policy"]["knobs"]["eta"] == {**settings["policy"]["knobs"]["eta"], "init": 0.9}


def test_resolved_settings_resolve_to_themselves():
    """A stage gets the resolved experiment in its params and resolves it again."""
    for mode in MODES:
        settings = experiment_settings({"e": {"mode": mode, "eta": 0.5}}, "e", {"steps": 6})
        assert experiment_settings({"e": settings}, "e", {"steps": 9}) == settings


def test_resolving_twice_gives_equal_independent_copies():
    experiments = {"e": {"mode": "scheduler_policy"}}
    first = experiment_settings(experiments, "e")
    first["ppo"]["epochs"] = 99
    first["policy"]["knobs"]["eta"]["low"] = -1
    again = experiment_settings(experiments, "e")
    assert again["ppo"]["epochs"] == BY_MODE["scheduler_policy"]["ppo"]["epochs"]
    assert again["policy"]["knobs"]["eta"]["low"] != -1
    # equal values of other types are other settings: 1 (int) is not 1.0 (float) nor True
    assert experiment_settings({"e": {"rounds": 3}}, "e")["rounds"] == 3
    with pytest.raises(MarsdiffError, match=r"experiments\.e\.rounds"):
        experiment_settings({"e": {"rounds": True}}, "e")


@pytest.mark.parametrize("own, message", [
    ({"mode": "full_unet"}, r"^config key experiments\.e\.mode: 'full_unet' is not one of"),
    ({"rounds": 1000}, r"^config key experiments\.e\.rounds: 1000 is greater than the maximum of 999"),
    ({"ppo": {"epochs": 0}}, r"^config key experiments\.e\.ppo\.epochs: 0 is less than the minimum of 1"),
    ({"policy": {"knobs": {"zoom": {}}}}, r"^config key experiments\.e\.policy\.knobs\.zoom: unknown key"),
    ({"lora": {"target_modules": {"pixel": ["conv1"]}}}, r"^config key experiments\.e\.lora\.target_modules"),
    ({"kl_to_base": None}, r"^config key experiments\.e\.kl_to_base: expected number"),
    ({"images_per_round": 2}, r"^experiments\.e\.images_per_round: 2 image\(s\) per round; a set reward needs >= 3"),
])
def test_bad_settings_name_the_experiment_and_key_in_one_line(own, message):
    with pytest.raises(MarsdiffError, match=message) as err:
        experiment_settings({"e": own}, "e")
    assert "\n" not in str(err.value)


def test_a_sampling_value_the_experiment_cannot_use_names_the_experiment():
    # sampling allows 2 images per round; an experiment that inherits them cannot use them
    with pytest.raises(MarsdiffError, match=r"^experiments\.e\.images_per_round: 2 image"):
        experiment_settings({"e": {}}, "e", {"images_per_round": 2})


def test_the_code_branches_on_the_schemas_choices():
    from marsdiff.rl.advantages import NORMALISATIONS
    from marsdiff.rl.fisher_vector_product import JACOBIAN_VECTOR
    from marsdiff.rl.generation_policies import DISTRIBUTIONS
    from marsdiff.rl.policy import MODES as POLICY_MODES
    from marsdiff.rl.trpo import FVP_CHOICES

    props = ENTRY["properties"]
    assert (ALGORITHMS, MODES, CONTROLS) == (("ppo", "trpo"), POLICY_MODES, ("none", "shuffled_credit", "zero_lr"))
    assert set(NORMALISATIONS) == set(props["advantages"]["properties"]["normalisation"]["enum"])
    assert set(DISTRIBUTIONS) == set(props["policy"]["properties"]["distribution"]["enum"])
    assert set(FVP_CHOICES) == set(props["trpo"]["properties"]["fvp_method"]["enum"])
    assert set(JACOBIAN_VECTOR) == set(props["trpo"]["properties"]["jacobian_vector"]["enum"])


def test_settings_dataclasses_are_the_schemas_sections_without_defaults():
    from marsdiff.rl.advantages import AdvantageSettings
    from marsdiff.rl.lora import LoraSettings
    from marsdiff.rl.ppo import PPOSettings
    from marsdiff.rl.trpo import TRPOSettings

    for cls, section in [(PPOSettings, "ppo"), (TRPOSettings, "trpo"), (AdvantageSettings, "advantages"),
                         (LoraSettings, "lora")]:
        fields = dataclasses.fields(cls)
        assert {f.name for f in fields} == set(ENTRY["properties"][section]["properties"]), section
        assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields), section


@pytest.mark.parametrize("mode", MODES)
def test_every_section_builds_from_the_filled_experiment(mode):
    from marsdiff.rl.advantages import AdvantageSettings
    from marsdiff.rl.generation_policies import parse_knob_ranges
    from marsdiff.rl.lora import LoraSettings
    from marsdiff.rl.ppo import PPOSettings
    from marsdiff.rl.trpo import TRPOSettings

    settings = experiment_settings({"e": {"mode": mode}}, "e")
    assert PPOSettings.from_config(settings["ppo"]).epochs == BY_MODE[mode]["ppo"]["epochs"]
    assert TRPOSettings.from_config(settings["trpo"]).max_kl == BY_MODE[mode]["trpo"]["max_kl"]
    assert AdvantageSettings.from_config(settings["advantages"]).normalisation == "batch"
    targets = ENTRY["properties"]["lora"]["properties"]["target_modules"]["default"]
    for kind in ("pixel", "stable_diffusion"):
        assert LoraSettings.from_config(settings["lora"], kind).target_modules == targets[kind]
    one_list = experiment_settings({"e": {"mode": mode, "lora": {"target_modules": ["conv1"]}}}, "e")["lora"]
    assert LoraSettings.from_config(one_list, "stable_diffusion").target_modules == ["conv1"]
    if mode != "lora_unet":
        ranges = parse_knob_ranges(list(settings["policy"]["knobs"]), settings["policy"]["knobs"])
        assert ranges["eta"].init == settings["eta"]


def test_the_default_configs_experiments_carry_every_key_once_filled():
    config = load_config()
    for name in config["experiments"]:
        settings = experiment_settings(config["experiments"], name, config["sampling"])
        assert set(ENTRY["properties"]) <= set(settings), name
