"""The figure boilerplate every plotting module shares: a headless pyplot, new figures, PNG output.

Every figure of the project (the reference contact sheet, the reward-validation heat map and
ladders, the RL reward curves, the evaluation figures) is made with :func:`subplots` and written
with :func:`save_png`: atomically (a half-written PNG never appears under its final name, see
:mod:`marsdiff.io.atomic`), as PNG whatever the file name says, at an explicit dpi, and closed
afterwards so long runs do not accumulate open figures. Layout and styling stay with each
figure: they are what differs between them.

matplotlib is imported on first use, not with this module: most stages never plot, and the
import costs a noticeable part of a rule's start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from marsdiff.io.atomic import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (headless: the workflow runs on servers without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """``(figure, axes)`` from ``pyplot.subplots`` on the Agg backend; ``kwargs`` as there."""
    return pyplot().subplots(nrows, ncols, **kwargs)


def save_png(fig: Any, path: str | os.PathLike, dpi: int) -> Path:
    """Write ``fig`` to ``path`` as a PNG atomically, then close it (also when writing fails)."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)
    return path
