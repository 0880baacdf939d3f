"""Trainer state beside a round's policy: optimiser moments and the torch RNG, as safetensors + JSON.

``trainer_state.safetensors`` holds every optimiser state tensor (``state.<param index>.<name>``)
and the CPU RNG state; ``trainer_state.json`` the optimiser's param groups, the scalar state
entries and the tensors file's sha256 (checked on load). Restoring both before the next round's update makes a resumed run continue exactly as an
uninterrupted one. Never pickle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from marsdiff.errors import MarsdiffError
from marsdiff.io.atomic import write_json
from marsdiff.io.reading import load_safetensors, read_json, rerun_hint
from marsdiff.io.weights import save_safetensors

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
#: The rule that writes a round's policy and its trainer state.
WRITER_RULE = "update_round"


def save_trainer_state(out_dir: str | os.PathLike, optimiser: torch.optim.Optimizer) -> None:
    out_dir = Path(out_dir)
    state = optimiser.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.cpu": torch.random.get_rng_state()}
    scalars: dict[str, Any] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    digest = save_safetensors(tensors, out_dir / STATE_TENSORS)
    write_json(out_dir / STATE_JSON, {"param_groups": state["param_groups"], "scalars": scalars,
                                      "tensors_sha256": digest})


def load_trainer_state(in_dir: str | os.PathLike, optimiser: torch.optim.Optimizer) -> None:
    """Restore the optimiser (and the CPU RNG) saved by :func:`save_trainer_state`."""
    in_dir = Path(in_dir)
    tensors_path, json_path = in_dir / STATE_TENSORS, in_dir / STATE_JSON
    for path in (tensors_path, json_path):
        if not path.is_file():
            raise MarsdiffError(f"{path}: trainer state missing (the previous round did not finish?); "
                                f"{rerun_hint(WRITER_RULE)}")
    meta = read_json(json_path, "trainer state", WRITER_RULE, keys=("param_groups", "scalars"))
    tensors = load_safetensors(tensors_path, "trainer state tensors", WRITER_RULE, meta.get("tensors_sha256"), json_path)
    if "rng.cpu" not in tensors or not isinstance(meta["scalars"], dict) or not isinstance(meta["param_groups"], list):
        raise MarsdiffError(f"{json_path}: not a trainer state this marsdiff wrote; {rerun_hint(WRITER_RULE)}")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = meta["param_groups"]
    current = optimiser.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise MarsdiffError(f"{json_path}: optimiser state does not fit this policy's parameters")
    optimiser.load_state_dict({"state": state, "param_groups": groups})
    torch.random.set_rng_state(tensors["rng.cpu"])
