"""JSON without NaN or infinities: such floats are written as null (not measured, or impossible), because
strict JSON readers (JSON.parse in a browser, most other languages) reject them."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float inside it (dicts, lists, tuples) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def finite_json(data: Any) -> str:
    """Strict JSON (indented, UTF-8 kept) in which every non-finite float is written as null."""
    return json.dumps(finite(data), indent=2, ensure_ascii=False, allow_nan=False)
