"""The workflow configuration: loading, schema validation with defaults, one-line errors.

The schema is ``workflow/schemas/config.schema.yaml``. The Snakefile calls :func:`check_config`
at parse time (before Snakemake's own validation, whose message is a page long), and the CLI
uses :func:`load_config`. Only jsonschema and yaml are imported: parsing stays cheap. The checks
the stages would make of the settings are :mod:`marsdiff.config_checks` (kept out of this module,
which the stages import: editing a parse-time check must not change their code versions).

The schema is the one source of every default (issue 20). Besides JSON Schema's ``default``, an
object may carry ``defaultsBy: {<key>: {<value>: {<defaults>}}}``: defaults that depend on one of
its keys (the pixel model's ``preset``, an experiment's ``mode``). They are filled before the plain
defaults, so they win over them, and never over a value the user wrote. Code that builds settings
from a section outside a whole config (a test, a library call) fills it with :func:`filled_section`.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from marsdiff.errors import MarsdiffError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise MarsdiffError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise MarsdiffError(f"{path}: is a directory, not a config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MarsdiffError(f"{path}: cannot read config file ({' '.join(str(err).split())})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise MarsdiffError(yaml_error_text(path, err)) from None


def yaml_error_text(path: str | Path, err: Exception) -> str:
    """``<file>, line L, column C: not valid YAML (<problem>)``, 1-based as editors count."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context:
        # e.g. an unclosed '[': the error surfaces at the file's end, the cause is where it opened
        started = f" started at line {context_mark.line + 1}, column {context_mark.column + 1}" if context_mark else ""
        problem = f"{' '.join(str(context).split())}{started}: {problem}"
    if mark is None:
        return f"{path}: not valid YAML ({problem})"
    return f"{path}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML ({problem})"


def _key_path(error, root: str = "") -> str:
    return ".".join([root] * bool(root) + [str(p) for p in error.absolute_path]) or "<top level>"


def describe_error(error, root: str = "") -> str:
    """One line naming the offending key for a jsonschema ValidationError; ``root``: the key
    path of the validated section when it is not the whole config."""
    where = _key_path(error, root)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        prefix = f"{where}." if error.absolute_path or root else ""
        return f"config key {prefix}{unknown[0]}: unknown key (allowed here: {', '.join(allowed)})"
    if error.validator == "type":
        return f"config key {where}: expected {error.validator_value}, got {type(error.instance).__name__} {error.instance!r}"
    if error.validator == "enum":
        return f"config key {where}: {error.instance!r} is not one of {error.validator_value}"
    return f"config key {where}: {error.message}"


def check_config(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Validate ``config`` in place, filling schema defaults; MarsdiffError names the first bad key."""
    schema = _schema(str(schema_path))
    _raise_first_error(schema, config, "")
    fill_defaults(config, schema)
    _check_filled(schema, config, "")
    return config


def _raise_first_error(schema: dict, instance: Any, root: str) -> None:
    import jsonschema

    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(instance), key=lambda e: (len(e.absolute_path), _key_path(e)))
    if errors:
        raise MarsdiffError(describe_error(errors[0], root))


def _check_filled(schema: dict, instance: Any, root: str) -> None:
    """The schema's own defaults must pass the schema: a bad ``defaultsBy`` entry is a schema bug,
    reported as such rather than as the user's key."""
    try:
        _raise_first_error(schema, instance, root)
    except MarsdiffError as err:
        raise MarsdiffError(f"{SCHEMA_PATH.name}: a default does not pass the schema ({err})") from None


def fill_defaults(instance: Any, schema: dict) -> None:
    """Fill ``instance`` in place with the schema's defaults: ``defaultsBy`` first, then ``default``,
    recursing into ``properties`` and into ``additionalProperties`` objects (e.g. each experiment)."""
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return
    properties = schema.get("properties", {})
    for selector, table in schema.get("defaultsBy", {}).items():
        if selector not in instance and "default" in properties.get(selector, {}):
            instance[selector] = copy.deepcopy(properties[selector]["default"])
        _merge_missing(instance, table.get(instance.get(selector), {}))
    for key, subschema in properties.items():
        if key not in instance and "default" in subschema:
            instance[key] = copy.deepcopy(subschema["default"])
        if key in instance:
            fill_defaults(instance[key], subschema)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in properties:
                fill_defaults(value, extra)


def _merge_missing(instance: dict, defaults: dict) -> None:
    for key, value in defaults.items():
        if key not in instance:
            instance[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(instance[key], dict):
            _merge_missing(instance[key], value)


def section_schema(path: str, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """The schema of the section at dotted ``path``; ``*`` steps into an entry of a map section
    (``experiments.*`` is one experiment)."""
    schema = _schema(str(schema_path))
    for part in path.split("."):
        schema = schema["additionalProperties"] if part == "*" else schema["properties"][part]
    return schema


def filled_section(path: str, section: Any = None, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """A validated copy of the section at ``path`` with the schema's defaults filled: what
    :func:`check_config` makes of it inside a whole config."""
    schema = section_schema(path, schema_path)
    section = copy.deepcopy(dict(section or {}))
    _raise_first_error(schema, section, path)
    fill_defaults(section, schema)
    _check_filled(schema, section, path)
    return section


@functools.lru_cache(maxsize=4)
def _schema(schema_path: str) -> dict:
    return _read_yaml(Path(schema_path))


def read_config_file(path: str | Path) -> dict:
    """A YAML config file as a mapping of sections (an empty file is an empty mapping)."""
    data = _read_yaml(Path(path)) or {}
    if not isinstance(data, dict):
        raise MarsdiffError(f"{path}: config must be a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Read a config file (default: the embedded one), deep-merge ``overrides``, validate."""
    config = read_config_file(path or DEFAULT_CONFIG)
    if overrides:
        config = deep_merge(config, overrides)
    return check_config(config)


def load_overlaid_config(overlay: str | Path | None) -> dict:
    """The embedded default with ``overlay`` deep-merged on top, as ``snakemake --configfile``."""
    return load_config(None, overrides=read_config_file(overlay) if overlay else None)


def deep_merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged

