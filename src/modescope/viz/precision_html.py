"""The reduced-precision label as HTML, for the report and every page a probe writes.

Styled inline so that any page can show it without a stylesheet of its own; model names are escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from modescope.precision import is_reduced, label

NOTE_STYLE = (
    "display:inline-block;background:#fdf1dc;border:1px solid #c98a1b;color:#6b4300;border-radius:4px;"
    "padding:0.2rem 0.55rem;margin:0.3rem 0;font-size:0.85rem"
)
TAG_STYLE = (
    "display:inline-block;font-size:0.72rem;background:#6b4300;color:#fff;border-radius:3px;"
    "padding:0.02rem 0.35rem;margin-left:0.3rem;font-weight:normal;white-space:nowrap"
)
HINT = "weights in reduced precision move every probability a little; float32 is the reference"


def from_capabilities(capabilities: Mapping[str, Mapping[str, Any]]) -> dict[str, str | None]:
    """Model name -> precision, from a result's {model: Capabilities.metadata()} (None where not recorded)."""
    return {model: meta.get("precision") for model, meta in capabilities.items() if isinstance(meta, Mapping)}


def precision_note(found: Mapping[str, str | None]) -> str:
    """One visible line naming the models computed in reduced precision, grouped by precision ("computed in
    bfloat16 (reduced precision): a, b"); empty when every model computed in full precision or is unknown."""
    by_precision: dict[str, list[str]] = {}
    for model, precision in found.items():
        if precision is not None and is_reduced(precision):
            by_precision.setdefault(precision, []).append(model)
    if not by_precision:
        return ""
    parts = "; ".join(f"{label(p)}: {', '.join(models)}" for p, models in by_precision.items())
    return f'<p class="precision-note" style="{NOTE_STYLE}" title="{html.escape(HINT)}">{html.escape(parts)}</p>'


def capabilities_note(*capabilities: Mapping[str, Mapping[str, Any]]) -> str:
    """`precision_note` of one or more results' {model: Capabilities.metadata()}."""
    found: dict[str, str | None] = {}
    for each in capabilities:
        found |= from_capabilities(each)
    return precision_note(found)


def precision_tag(precision: str | None) -> str:
    """A small tag for a table cell or heading of a model that computed in reduced precision; else empty."""
    if precision is None or not is_reduced(precision):
        return ""
    return f'<span class="precision-tag" style="{TAG_STYLE}" title="{html.escape(HINT)}">{html.escape(label(precision))}</span>'
