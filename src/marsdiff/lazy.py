"""Lazy package exports (PEP 562): a package names its public objects without importing them.

Importing any submodule of a package runs the package's ``__init__`` first, so eager re-exports
there make every stage that touches one module pay for all of them (docs/performance.md).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``exports`` maps each public name to the
    submodule (relative to ``package``) that defines it, imported on first access."""
    import sys

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            # ``from package import submodule`` lands here first, then imports the submodule
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        vars(sys.modules[package])[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
