"""Schema defaults (marsdiff.config): ``default``, ``defaultsBy`` and map entries, filled once.

The schema is the one source of every default (issue 20); these tests pin how it fills a config.
"""

from __future__ import annotations

import pytest
import yaml

from marsdiff.config import SCHEMA_PATH, check_config, fill_defaults, filled_section, load_config
from marsdiff.errors import MarsdiffError

SCHEMA = {
    "type": "object",
    "properties": {
        "runs": {
            "type": "object",
            "default": {},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "defaultsBy": {"mode": {
                    "fast": {"lr": 0.5, "opt": {"epochs": 8}},
                    "slow": {"lr": 0.01},
                }},
                "properties": {
                    "mode": {"enum": ["fast", "slow"], "default": "slow"},
                    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
                    "opt": {"type": "object", "default": {}, "properties": {
                        "epochs": {"type": "integer", "minimum": 1, "default": 1},
                        "batch": {"type": "integer", "default": 32},
                    }},
                },
            },
        },
    },
}


def _write(tmp_path, schema):
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(schema))
    return path


def test_defaults_by_win_over_plain_defaults_and_lose_to_the_user(tmp_path):
    config = {"runs": {"a": {"mode": "fast"}, "b": {}, "c": {"mode": "fast", "lr": 2.0, "opt": {"batch": 4}}}}
    check_config(config, _write(tmp_path, SCHEMA))
    assert config["runs"]["a"] == {"mode": "fast", "lr": 0.5, "opt": {"epochs": 8, "batch": 32}}
    # the selector's own default chooses the table entry
    assert config["runs"]["b"] == {"mode": "slow", "lr": 0.01, "opt": {"epochs": 1, "batch": 32}}
    # the user's values stay, nested ones too; the table fills only what is missing
    assert config["runs"]["c"] == {"mode": "fast", "lr": 2.0, "opt": {"epochs": 8, "batch": 4}}


def test_the_users_bad_value_is_named_before_any_filling(tmp_path):
    with pytest.raises(MarsdiffError, match=r"config key runs\.a\.lr"):
        check_config({"runs": {"a": {"lr": -1}}}, _write(tmp_path, SCHEMA))


def test_a_default_that_breaks_the_schema_is_reported_as_the_schemas(tmp_path):
    broken = yaml.safe_load(yaml.safe_dump(SCHEMA))
    broken["properties"]["runs"]["additionalProperties"]["defaultsBy"]["mode"]["fast"]["lr"] = -3
    with pytest.raises(MarsdiffError, match=r"a default does not pass the schema .*runs\.a\.lr"):
        check_config({"runs": {"a": {"mode": "fast"}}}, _write(tmp_path, broken))


def test_filled_section_is_what_check_config_makes_of_it(tmp_path):
    path = _write(tmp_path, SCHEMA)
    whole = check_config({"runs": {"x": {"mode": "fast"}}}, path)
    assert filled_section("runs.*", {"mode": "fast"}, path) == whole["runs"]["x"]
    with pytest.raises(MarsdiffError, match=r"config key runs\.\*\.opt\.epochs"):
        filled_section("runs.*", {"opt": {"epochs": 0}}, path)


def _objects_with_defaults_by(schema, where="config"):
    if not isinstance(schema, dict):
        return
    if "defaultsBy" in schema:
        yield where, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _objects_with_defaults_by(sub, f"{where}.{key}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _objects_with_defaults_by(schema["additionalProperties"], f"{where}.*")


def test_every_defaults_by_table_of_the_real_schema_covers_its_choices_and_validates():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    import jsonschema

    for where, obj in _objects_with_defaults_by(schema):
        for selector, table in obj["defaultsBy"].items():
            choices = obj["properties"][selector]["enum"]
            assert sorted(table) == sorted(choices), f"{where}.defaultsBy.{selector}: one entry per choice"
            for choice in choices:
                filled = {selector: choice}
                fill_defaults(filled, obj)
                jsonschema.Draft202012Validator(obj).validate(filled)


def test_the_default_config_is_complete_after_filling():
    """Every experiment entry carries its keys once filled (map entries are filled too)."""
    config = load_config()
    for name, experiment in config["experiments"].items():
        assert "max_skipped_updates" in experiment, name


def test_each_pixel_preset_is_written_out_in_full():
    """The presets are the one resolver of model.pixel: every preset names the same keys, and a
    preset-dependent key has no plain default that could fill it silently."""
    from marsdiff.config import section_schema

    pixel = section_schema("model.pixel")
    presets = pixel["defaultsBy"]["preset"]
    keys = set(presets["small"])
    assert all(set(table) == keys for table in presets.values()), "a preset leaves a key to another"
    assert not [k for k in keys if "default" in pixel["properties"][k]], "a preset key with a plain default"
    # the filled section is the resolved config: large is large's own, not small's
    large = filled_section("model.pixel", {"preset": "large"})
    assert {k: large[k] for k in keys} == presets["large"]
    assert large["min_snr_gamma"] == 5.0 and large["brightness_jitter"] == 0.0
    assert filled_section("model.pixel", {"preset": "large", "image_size": 48})["image_size"] == 48
