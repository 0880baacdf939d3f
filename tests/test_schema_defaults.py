"""The schema is the one source of every default: a scan of the code for defaults restated in it.

:func:`schema_defaults` walks ``workflow/schemas/config.schema.yaml`` (``properties``,
``additionalProperties`` objects, ``defaultsBy`` tables) and collects every key that has a default,
with the default values it has anywhere in the schema. :func:`scan_source` then reads a module's
syntax tree (never imports it) and reports, each with its line and key:

- ``get``: ``<x>.get("<key>", <literal>)`` (also ``.pop`` and ``.setdefault``) with a non-None
  literal fallback, where ``<key>`` has a schema default: the filled section always holds the key,
  so the fallback is a second copy of the default (or a different one, which is worse); also
  ``<x>.get("<key>") or <literal>`` with a literal that is not empty (``or {}`` guards a missing
  section and restates no value);
- ``defaults-dict``: a module-level name containing ``DEFAULTS`` bound to a dict;
- ``dataclass-field``: a dataclass field named as a schema key with a literal default (settings
  objects are built from the filled section and have none);
- ``parameter``: a function parameter named as a schema key whose literal default equals one of
  that key's schema defaults (callers pass the configured value).

The scan covers ``src/marsdiff`` and ``workflow/scripts``. :data:`ALLOWED` lists the findings that
are not config defaults (a name shared with a schema key), each ``<file>::<key>`` with its
one-line reason. It only shrinks: an entry without a finding fails the test.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCANNED = (REPO / "src" / "marsdiff", REPO / "workflow" / "scripts")

#: ``<file>::<key>`` -> one-line reason the finding is not a config default at all.
ALLOWED: dict[str, str] = {
    "src/marsdiff/diffusion/training_loss.py::seed": "the fixed noise of fixed_batch_loss, a loss the tests read on given "
                                                     "images, not a config seed (editing the file would retrain the shipped model)",
    "src/marsdiff/evalset/assess.py::k": "the base-model check's own protocol (AssessSettings), not the evaluation's k",
    "src/marsdiff/evalset/assess.py::eta": "the base-model check's own protocol (AssessSettings), not sampling.eta",
    "src/marsdiff/evalset/assess.py::seed": "the base-model check's own protocol (AssessSettings), not a config seed",
    "src/marsdiff/rl/distributed.py::rank": "a process's rank in the round job, not lora.rank",
    "src/marsdiff/io/trajectories.py::mode": "the trajectory file header's policy mode ('base' for base-model files), not a config key",
    "src/marsdiff/rl/policy.py::class_distribution": "reads a policy.json written by the update stage, not the config",
    "src/marsdiff/diffusion/pixel_backend.py::backend": "reads the model folder's marsdiff_model.json, not the config",
}


# --- the schema ----------------------------------------------------------------------------------

def schema_defaults(schema: dict) -> dict[str, list]:
    """Every key with a default anywhere in ``schema`` -> the default values it has (a key such as
    ``seed`` has one in several sections). ``defaultsBy`` entries count, nested ones too."""
    found: dict[str, list] = {}

    def add(key: str, value) -> None:
        values = found.setdefault(key, [])
        if not any(_same(value, v) for v in values):
            values.append(value)

    def add_table(entries: dict) -> None:
        for key, value in entries.items():
            add(key, value)
            if isinstance(value, dict):
                add_table(value)

    def walk(node) -> None:
        if not isinstance(node, dict):
            return
        for key, sub in node.get("properties", {}).items():
            if isinstance(sub, dict) and "default" in sub:
                add(key, sub["default"])
            walk(sub)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])
        for table in node.get("defaultsBy", {}).values():
            for entries in table.values():
                add_table(entries)
        for combinator in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(combinator, []):
                walk(sub)

    walk(schema)
    return found


def _same(a, b) -> bool:
    """Equal as config values: True is not 1, but 1 is 1.0 (YAML writes both)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# --- the scan ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    pattern: str
    key: str

    def __str__(self) -> str:
        if self.pattern == "defaults-dict":
            return f"{self.path}:{self.line}: module-level defaults dict {self.key} (defaults live in the schema)"
        return f"{self.path}:{self.line}: {self.pattern} restates the schema default of {self.key!r}"


_MISSING = object()


def _literal(node: ast.AST | None):
    """The value of a literal expression (constants, lists, tuples, dicts, sets, negative numbers),
    or _MISSING for anything else (a name, a call, an attribute)."""
    if node is None:
        return _MISSING
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _MISSING


def _is_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "dataclass":
            return True
    return False


def _field_default(value: ast.AST | None):
    """A dataclass field's literal default: ``= 3`` or ``= field(default=3)`` or
    ``field(default_factory=lambda: [1, 2])``."""
    literal = _literal(value)
    if literal is not _MISSING:
        return literal
    if isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) == "field":
        for keyword in value.keywords:
            if keyword.arg == "default":
                return _literal(keyword.value)
            if keyword.arg == "default_factory" and isinstance(keyword.value, ast.Lambda):
                return _literal(keyword.value.body)
    return _MISSING


def _is_dict(node: ast.AST | None) -> bool:
    if isinstance(node, (ast.Dict, ast.DictComp)):
        return True
    return isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("dict", "MappingProxyType")


def scan_source(source: str, path: str, defaults: dict[str, list]) -> list[Finding]:
    """Every restated default in one module's source (see the module docstring for the patterns)."""
    tree = ast.parse(source, filename=path)
    findings: list[Finding] = []

    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        for target in targets:
            if isinstance(target, ast.Name) and "DEFAULTS" in target.id.upper() and _is_dict(value):
                findings.append(Finding(path, node.lineno, "defaults-dict", target.id))

    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "pop", "setdefault") and len(node.args) == 2):
            key = _literal(node.args[0])
            fallback = _literal(node.args[1])
            if isinstance(key, str) and key in defaults and fallback is not _MISSING and fallback is not None:
                findings.append(Finding(path, node.lineno, f".{node.func.attr}(..., {fallback!r})", key))
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            first, fallback = node.values[0], _literal(node.values[-1])
            if (isinstance(first, ast.Call) and isinstance(first.func, ast.Attribute) and first.func.attr == "get"
                    and len(first.args) == 1 and isinstance(_literal(first.args[0]), str)
                    and _literal(first.args[0]) in defaults and fallback is not _MISSING
                    and fallback not in (None, {}, [], (), "")):
                findings.append(Finding(path, node.lineno, f".get(...) or {fallback!r}", _literal(first.args[0])))
        elif isinstance(node, ast.ClassDef) and _is_dataclass(node):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    name = statement.target.id
                    value = _field_default(statement.value)
                    if name in defaults and value is not _MISSING and value is not None:
                        findings.append(Finding(path, statement.lineno, "dataclass-field", name))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            for arg, default in pairs:
                value = _literal(default)
                if (arg.arg in defaults and value is not _MISSING and value is not None
                        and any(_same(value, v) for v in defaults[arg.arg])):
                    findings.append(Finding(path, default.lineno, "parameter", arg.arg))
    return sorted(findings, key=lambda f: (f.line, f.key))


def scanned_files() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for root in SCANNED for p in root.rglob("*.py"))


def repository_findings(skip_known: bool = True) -> list[Finding]:
    defaults = schema_defaults(yaml.safe_load(SCHEMA.read_text()))
    findings = []
    for relative in scanned_files():
        findings += [f for f in scan_source((REPO / relative).read_text(), relative, defaults)
                     if not (skip_known and f"{relative}::{f.key}" in ALLOWED)]
    return findings


# --- the tests -----------------------------------------------------------------------------------

def test_no_default_is_restated_in_code():
    findings = repository_findings()
    parameters = sum(f.pattern == "parameter" for f in findings)
    assert not findings, (
        f"{len(findings)} default(s) restated in code ({parameters} of them function parameters); "
        "read section['key'] from the schema-filled section and pass the value:\n"
        + "\n".join(map(str, findings))
    )


def test_the_tables_name_real_files_each_with_its_reason():
    files = set(scanned_files())
    for entry, why in ALLOWED.items():
        relative, _, key = entry.partition("::")
        assert relative in files and key, f"{entry}: not <scanned file>::<key> (renamed? drop it from the table)"
        assert why.strip() and "\n" not in why, entry


def test_every_allowed_entry_is_still_a_finding():
    """The table only shrinks: an entry whose finding was fixed must leave the table."""
    found = {f"{f.path}::{f.key}" for f in repository_findings(skip_known=False)}
    stale = [entry for entry in sorted(ALLOWED) if entry not in found]
    assert not stale, f"fixed, drop from the table: {stale}"


def test_the_schema_walk_finds_defaults_at_every_level():
    defaults = schema_defaults(yaml.safe_load(SCHEMA.read_text()))
    # plain defaults, nested sections, map entries (an experiment) and defaultsBy entries
    assert 0.5 in defaults["bandwidth_scale"]
    assert 4 in defaults["compression_level"]
    assert "rounds_per_job" in defaults
    assert "images_per_round" in defaults
    schema = {"type": "object", "properties": {"runs": {"type": "object", "additionalProperties": {
        "type": "object", "defaultsBy": {"mode": {"a": {"lr": 0.5, "opt": {"epochs": 8}}}},
        "properties": {"mode": {"enum": ["a"], "default": "a"}, "lr": {"type": "number"}}}}}}
    assert schema_defaults(schema) == {"mode": ["a"], "lr": [0.5], "opt": [{"epochs": 8}], "epochs": [8]}


SYNTHETIC = textwrap.dedent('''
    import dataclasses
    from dataclasses import dataclass, field

    STEP_DEFAULTS = {"steps": 50}
    OTHER = {"steps": 50}

    def read(section, steps=50, eta=0.3, seed=None, *, batch_size=32):
        a = section.get("eta", 1.0)
        b = section.pop("seed", 0)
        c = section.setdefault("store", {})
        d = section.get("eta")
        e = section.get("eta", None)
        f = section.get("unknown_key", 3)
        g = section.get("eta", default_eta)
        h = section.get("steps") or 50
        i = section.get("store") or {}
        return lambda images_per_round=64: images_per_round

    @dataclass(frozen=True)
    class Settings:
        eta: float
        steps: int = 50
        store: dict = field(default_factory=lambda: {"dtype": "float32"})
        seed: int = field(default=0)
        unknown_key: int = 3

    @dataclasses.dataclass
    class More:
        min_std: float = 0.01

    class NotADataclass:
        steps: int = 50
''')
SYNTHETIC_DEFAULTS = {"steps": [50], "eta": [1.0], "seed": [0], "store": [{}], "batch_size": [32],
                      "images_per_round": [64], "min_std": [0.01]}


def test_the_scanner_catches_each_pattern():
    found = {(f.line, f.pattern, f.key) for f in scan_source(SYNTHETIC, "synthetic.py", SYNTHETIC_DEFAULTS)}
    assert found == {
        (5, "defaults-dict", "STEP_DEFAULTS"),
        (8, "parameter", "steps"),  # eta=0.3 differs from the schema's 1.0; seed=None is no default
        (8, "parameter", "batch_size"),
        (9, ".get(..., 1.0)", "eta"),
        (10, ".pop(..., 0)", "seed"),
        (11, ".setdefault(..., {})", "store"),
        (16, ".get(...) or 50", "steps"),  # `or {}` on line 17 guards a missing section: no finding
        (18, "parameter", "images_per_round"),
        (23, "dataclass-field", "steps"),
        (24, "dataclass-field", "store"),
        (25, "dataclass-field", "seed"),
        (30, "dataclass-field", "min_std"),
    }


def test_a_finding_names_file_line_and_key(tmp_path):
    finding = scan_source("x = s.get('eta', 1.0)\n", "src/marsdiff/m.py", {"eta": [1.0]})[0]
    assert str(finding) == "src/marsdiff/m.py:1: .get(..., 1.0) restates the schema default of 'eta'"


# --- settings objects are built from the filled section ------------------------------------------

#: (settings class, schema section, field -> key path where the names differ, section keys the
#: class leaves to others -> who reads them). Every other key of the section is a field.
SETTINGS = (
    ("marsdiff.rewards.combined.RewardConfig", "reward", {"pool_rounds": "pool.rounds"},
     {"validation": "ValidationConfig"}),
    ("marsdiff.rewards.validation.ValidationConfig", "reward.validation",
     {"mix_terms": "mix.terms", "mix_step": "mix.step", "mix_tolerance": "mix.tolerance",
      "snr_set_size": "snr.set_size", "snr_pool_rounds": "snr.pool_rounds", "snr_probes": "snr.probes",
      "snr_repeats": "snr.repeats"}, {}),
    ("marsdiff.data.reference_config.ReferenceConfig", "reference", {}, {}),
    ("marsdiff.diffusion.sampler.SamplingSettings", "sampling", {"store_dtype": "store.dtype"},
     {"images_per_round": "the round stages (per experiment)", "processes": "the launcher (rl/distributed.py)",
      "store": "store.compression and compression_level: the round file's writer (diffusion/round_files.py)"}),
)


def _class(dotted: str):
    import importlib

    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _at(mapping: dict, path: str):
    for part in path.split("."):
        mapping = mapping[part]
    return mapping


def _build(cls, section: dict):
    return cls.from_dict(section) if hasattr(cls, "from_dict") else cls.from_config(section)


@pytest.mark.parametrize("dotted, path, renamed, elsewhere", SETTINGS, ids=[s[0].rsplit(".", 1)[1] for s in SETTINGS])
def test_settings_are_the_filled_section(dotted, path, renamed, elsewhere):
    import dataclasses

    from marsdiff.config import filled_section, section_schema

    cls = _class(dotted)
    fields = dataclasses.fields(cls)
    # no literal defaults: a field left out would be a second source
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields), dotted
    filled = filled_section(path, {})
    keys = {f.name: renamed.get(f.name, f.name) for f in fields}
    for name, key in keys.items():
        _at(filled, key)  # every field is a key of the section (KeyError names it otherwise)
    covered = {key.split(".")[0] for key in keys.values()} | set(elsewhere)
    assert covered == set(section_schema(path)["properties"]), f"{dotted}: fields vs the keys of {path}"
    settings = _build(cls, {})
    for name, key in keys.items():
        value, default = getattr(settings, name), _at(filled, key)
        if name == "terms":
            assert [t.name for t in value] == list(default), dotted
            for term in value:
                spec = default[term.name]
                assert (term.kind, term.weight, term.standardise) == (spec["kind"], spec["weight"], spec["standardise"])
                assert term.options == {k: v for k, v in spec.items() if k not in ("kind", "weight", "standardise")}
        else:
            assert _same(list(value) if isinstance(value, tuple) else value, default), f"{dotted}.{name}"


@pytest.mark.parametrize("dotted, path, renamed, elsewhere", SETTINGS, ids=[s[0].rsplit(".", 1)[1] for s in SETTINGS])
def test_a_users_value_reaches_the_settings(dotted, path, renamed, elsewhere):
    """One changed key per field: the value the user wrote is the one the settings hold."""
    import dataclasses

    from marsdiff.config import filled_section, section_schema

    cls = _class(dotted)
    schema = section_schema(path)
    for field in dataclasses.fields(cls):
        key = renamed.get(field.name, field.name)
        sub = schema
        for part in key.split("."):
            sub = sub["properties"][part]
        default = _at(filled_section(path, {}), key)
        value = _other_value(sub, default)
        if value is None:
            continue
        section: dict = {}
        node = section
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        got = getattr(_build(cls, section), field.name)
        assert _same(list(got) if isinstance(got, tuple) else got, value), f"{dotted}.{field.name}"


def _other_value(schema: dict, default):
    """A valid value other than the default, for the types the settings sections use (None: skip)."""
    if "enum" in schema:
        others = [v for v in schema["enum"] if v != default]
        return others[0] if others else None
    kind = schema.get("type")
    if kind in ("integer", "number"):
        steps = (1, -1) if kind == "integer" else (-(default / 2), default / 2 or 0.5, default or 0.5)
        for candidate in (default + step for step in steps):
            if (candidate <= schema.get("maximum", candidate) and candidate >= schema.get("minimum", candidate)
                    and candidate > schema.get("exclusiveMinimum", candidate - 1) and candidate != default):
                return candidate
        return None
    if kind == "boolean":
        return not default
    if kind == "array" and schema.get("items", {}).get("enum"):
        return [v for v in schema["items"]["enum"] if v not in default][:1] or None
    if kind == "array" and schema.get("items", {}).get("type") in ("number", "integer"):
        return list(default)[:1]
    if kind == "array":
        return list(default)[:2]
    return None


def test_extractors_take_their_schema_section():
    """Each extractor's options are its ``features.<name>`` keys, passed by build_extractor from the
    filled section; none restates a default (batch_size and device are the section's own keys)."""
    import inspect

    from marsdiff.config import filled_section
    from marsdiff.features.clip import ClipFeatures
    from marsdiff.features.torchvision_models import MobileNetV2Features, ResNet18Features

    filled = filled_section("features", {})
    #: ResNet-18's pooling grid and input size are fixed by the class, not config keys.
    fixed = {"resnet18": {"grid", "input_size"}}
    for name, cls in (("mobilenet_v2", MobileNetV2Features), ("clip", ClipFeatures), ("resnet18", ResNet18Features)):
        parameters = inspect.signature(cls).parameters
        assert set(parameters) - fixed.get(name, set()) == set(filled[name]) | {"batch_size", "device"}, name
        for key in set(filled[name]) | {"batch_size", "device"}:
            assert parameters[key].default is inspect.Parameter.empty, f"{name}.{key}"


def test_cluster_section_is_read_by_key():
    from marsdiff.config import filled_section

    assert filled_section("cluster", {}) == {"rounds_per_job": 1}
    source = (REPO / "src" / "marsdiff" / "workflow" / "resources.py").read_text()
    assert 'config["cluster"]["rounds_per_job"]' in source
