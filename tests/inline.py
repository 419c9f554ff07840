"""Reading what a result shows in a notebook: the page inside its sandboxed iframe, and strict JSON."""

from __future__ import annotations

import html
import json
import re
from typing import Any

FRAME = re.compile(r'<iframe title="[^"]*" sandbox="allow-scripts" style="[^"]*" srcdoc="([^"]*)"></iframe>')


def inline_page(markup: str) -> str:
    """The page inside a `_repr_html_` iframe, which must be sandboxed (scripts only, no same origin)."""
    found = FRAME.fullmatch(markup)
    assert found, markup[:300]
    return html.unescape(found.group(1))


def strict_json(text: str) -> Any:
    """`json.loads` that fails on NaN and infinities (non-strict JSON)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)
