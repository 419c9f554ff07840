"""Pages and figures inline in a notebook.

A result's page (the same one the CLI writes) is shown in a sandboxed `<iframe srcdoc>`: its styles and
script cannot leak into the notebook, and it runs with the offline policy of the page itself (nothing is
fetched). Matplotlib figures become inline PNG images.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FRAME_STYLE = "width: 100%; border: 1px solid #ddd; border-radius: 4px; background: #fafafa;"
# the pages of results that had none before the notebooks (tables and a figure): distribution, temperature
TABLE_PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2rem; color: #1b1b1b; background: #fafafa; }
h1 { font-size: 1.15rem; } h2 { font-size: 1rem; margin: 1rem 0 0.4rem; }
.prompt { white-space: pre-wrap; background: #fff; border: 1px solid #ddd; padding: 0.5rem; font-family: monospace; }
table { border-collapse: collapse; font-size: 0.85rem; background: #fff; }
th, td { border: 1px solid #e0e0dc; padding: 0.2rem 0.5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; font-family: monospace; }
th { background: #efefeb; }
img { max-width: 100%; border: 1px solid #eee; }
.meta { color: #555; font-size: 0.85rem; }
"""


def framed(page: str, title: str, height: int) -> str:
    """`page` in a sandboxed iframe `height` pixels high: it may run its own script, nothing else."""
    return (
        f'<iframe title="{html.escape(title, quote=True)}" sandbox="allow-scripts" '
        f'style="{FRAME_STYLE} height: {height}px" srcdoc="{html.escape(page, quote=True)}"></iframe>'
    )


def figure_png(figure: Figure, alt: str) -> str:
    """An `<img>` holding `figure` as a PNG data URL (the figure is closed: it is not shown twice)."""
    from modescope.viz.figures import detached

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    detached(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{encoded}">'
