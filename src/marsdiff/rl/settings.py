"""Reading a filled settings section (``ppo:``, ``trpo:``, ``advantages:``) into a frozen dataclass.

The dataclasses have no defaults: every default is the schema's, and the section comes filled
(:func:`marsdiff.rl.experiments.experiment_settings`, or :func:`marsdiff.config.filled_section`
for a caller outside a whole config). One rule for every section: missing keys, unknown keys and
values of the wrong type are refused with one line naming ``<section>.<key>``. Ranges are the
schema's.
"""

from __future__ import annotations

import math
import typing
from dataclasses import fields
from typing import Any, Mapping, TypeVar

from marsdiff.errors import MarsdiffError

T = TypeVar("T")


def typed_value(section: str, key: str, value: Any, kind: type) -> Any:
    """YAML value -> the field's type; bools for numbers, non-integral counts and NaN are refused
    (the schema's ``type: integer`` passes 15.0, and ``type: number`` passes .nan and .inf)."""
    where = f"{section}.{key}"
    if kind is str:
        if not isinstance(value, str):
            raise MarsdiffError(f"{where} must be a string, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise MarsdiffError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MarsdiffError(f"{where} must be a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise MarsdiffError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if not math.isfinite(float(value)):
        raise MarsdiffError(f"{where} must be finite, got {value!r}")
    return float(value)


def settings_from_mapping(cls: type[T], cfg: Mapping[str, Any] | None, section: str) -> T:
    """``cls(**cfg)`` with every field present, no unknown key, values typed after the fields' types."""
    cfg = dict(cfg or {})
    kinds = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise MarsdiffError(f"{section}: unknown settings {unknown} (known: {', '.join(known)})")
    missing = [key for key in known if key not in cfg]
    if missing:
        raise MarsdiffError(f"{section}: settings {missing} missing (build the section from the schema-filled "
                            "experiment: experiment_settings or marsdiff.config.filled_section)")
    return cls(**{key: typed_value(section, key, cfg[key], kinds[key]) for key in known})
