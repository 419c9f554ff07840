"""What every probe result offers, in a notebook and out of one.

A result is a plain dataclass holding what was measured. Mixing in `NotebookResult` gives it one surface:
`to_dict()` (plain values) and `to_json()` (strict JSON), `to_pandas()` (a tidy table), `to_html()` (the same
self-contained page the CLI writes), `save_html(path)`, and `_repr_html_()`, so that the last expression of a
Jupyter cell shows that page inline: interactive where the page is, with no server and no network access.

The views are imported only when a result is shown, so the results do not depend on the viz layer at import
time (the views import results only for their annotations).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from modescope.jsonsafe import finite_json

if TYPE_CHECKING:
    import pandas as pd


class NotebookResult:
    """Mixin for probe results: subclasses implement `to_dict`, `to_pandas` and `to_html`."""

    # height of the inline frame in a notebook, in CSS pixels (the page scrolls inside it)
    frame_height: ClassVar[int] = 480

    def to_dict(self) -> dict[str, Any]:
        """Everything measured, as plain JSON-ready values."""
        raise NotImplementedError

    def to_pandas(self) -> pd.DataFrame:
        """A tidy table of the result, one row per measured item."""
        raise NotImplementedError

    def to_html(self) -> str:
        """A self-contained HTML page of the result (escaped model text, no network access)."""
        raise NotImplementedError

    def to_json(self) -> str:
        """`to_dict` as strict JSON: a value that is not a finite number (not measured) is written as null."""
        return finite_json(self.to_dict())

    def save_html(self, path: str | Path) -> Path:
        """Write `to_html()` to `path` (folders are created) and return the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.to_html(), encoding="utf-8")
        return target

    def _repr_html_(self) -> str:
        from modescope.viz.notebook import framed

        return framed(self.to_html(), title=type(self).__name__, height=self.frame_height)
