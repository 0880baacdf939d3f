"""Reading a settings section (``ppo:``, ``trpo:``, ``advantages:``) into a frozen dataclass.

One rule for every section: unknown keys and values of the wrong type are refused with one line
naming ``<section>.<key>``; the dataclass's own defaults fill what the config leaves out. Range
checks stay with each dataclass (they are what the section means).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Mapping, TypeVar

from marsdiff.errors import MarsdiffError

T = TypeVar("T")


def typed_value(section: str, key: str, value: Any, kind: type) -> Any:
    """YAML value -> the field's type; bools for numbers, non-integral counts and NaN are refused."""
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
    """``cls(**cfg)`` with the keys checked and the values typed after the defaults' types."""
    cfg = dict(cfg or {})
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise MarsdiffError(f"{section}: unknown settings {unknown} (known: {', '.join(known)})")
    return cls(**{key: typed_value(section, key, value, type(getattr(cls, key))) for key, value in cfg.items()})
