"""Matplotlib for both places a figure goes: a PNG file (CLI, reports, web worker) and a notebook cell."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> ModuleType:
    """`matplotlib.pyplot`, on the non-interactive Agg backend unless running in a Jupyter kernel.

    Agg keeps figure drawing headless and safe in worker threads; inside a kernel the inline backend that
    ipykernel selects is kept, so a returned figure is drawn under its cell.
    """
    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def detached(figure: Figure) -> Figure:
    """`figure` closed in pyplot, so a notebook draws it once (as the value returned), not again at the end of the
    cell; it can still be saved or displayed."""
    pyplot().close(figure)
    return figure


def write_figure(figure: Figure, path: Path, dpi: int = 110) -> Path:
    """Save `figure` to `path` (format from the suffix; folders are created), close it in pyplot, return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    detached(figure)
    return path
