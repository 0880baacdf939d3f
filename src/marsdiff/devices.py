"""Choosing the torch device from a config value: one rule for every stage.

'auto' (or None) picks CUDA when a GPU is visible, else the CPU; asking for CUDA without a GPU is
a user error that names the config key.
"""

from __future__ import annotations

from marsdiff.errors import MarsdiffError


def resolve_device(device, setting: str = "device"):
    """A ``torch.device`` for ``device`` ('auto', None, 'cpu', 'cuda', 'cuda:N' or a torch.device).

    ``setting`` names the config key in the error message.
    """
    import torch  # imported here: reading configs must not pull in torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise MarsdiffError(f"{setting} is {device!r} but no CUDA GPU is available (use 'auto' or 'cpu')")
    return torch.device(device)
