"""The floating-point precision a result was computed in: recorded with the result, shown where it is read.

Weights in bfloat16 move every probability a little (the README's "Reduced precision" section has the measured
errors against float32), so a result computed that way must say so. The backend's metadata carries
"precision" (`Capabilities.precision`: "float32", "bfloat16", ...; None when unknown, as behind a server); a
suite stamps every stored payload with `{model: precision}`; reports and pages label reduced precision; and
a suite run never takes a cached result computed in another precision.

Torch-free, so the suite planner and the report can use it without loading a model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from modescope.models.dtypes import auto_dtype

if TYPE_CHECKING:
    from modescope.models.base import Backend
    from modescope.store import ProbeOutput
    from modescope.suites.runner import SuitePlan

REFERENCE = "float32"  # what in-process models compute in on the CPU by default, and what results are held to
REDUCED = frozenset({"bfloat16", "float16"})
PAYLOAD_KEY = "precision"  # a stored payload's {model: precision}


def is_reduced(precision: str | None) -> bool:
    """Whether results computed in `precision` carry the reduced-precision label (a mixed record counts when
    any of its parts is reduced; None, unknown, does not)."""
    return precision is not None and any(part in REDUCED for part in precision.split(" + "))


def label(precision: str) -> str:
    """The words every view shows next to a result computed in reduced precision."""
    return f"computed in {precision} (reduced precision)"


def requested_precision(device: str, dtype: str) -> str:
    """The precision in-process models load in with these `load` settings, without loading one. torch is
    imported only when `auto` has to ask whether CUDA is there."""
    if dtype != "auto":
        return dtype
    if device == "cpu" or device.startswith("cuda"):
        return auto_dtype(device.startswith("cuda"))
    import torch

    return auto_dtype(torch.cuda.is_available())


def keyed(cache_key: str, precision: str) -> str:
    """A cache key for results computed in `precision`. float32 keeps the key as it was, so results stored
    before precision was recorded (all float32 on the CPU) are still found; any other precision gets its own."""
    if precision == REFERENCE:
        return cache_key
    return hashlib.sha256(f"{cache_key}|precision:{precision}".encode()).hexdigest()


def keyed_plan(plan: SuitePlan, precision: str) -> SuitePlan:
    """`plan` with the cache keys of its probes and units for results computed in `precision`; a probe whose
    models are all behind servers (which ignore --dtype) keeps its keys."""
    from modescope.models.remote import is_remote

    if precision == REFERENCE:
        return plan
    probes = []
    for item in plan.probes:
        if all(is_remote(entry.load_name) for entry in item.models):
            probes.append(item)
            continue
        units = [replace(unit, cache_key=keyed(unit.cache_key, precision)) for unit in item.units]
        probes.append(replace(item, cache_key=keyed(item.cache_key, precision), units=units))
    return replace(plan, probes=probes)


def of_backends(backends: Iterable[Backend]) -> dict[str, str | None]:
    """Model name -> the precision its backend computes in."""
    return {b.name: b.capabilities.precision for b in backends}


def combined(backends: Iterable[Backend]) -> str | None:
    """The precision of a result several models computed together (a guided mixture): theirs when they agree,
    else every one joined by " + "; None when none is known."""
    found = sorted({b.capabilities.precision for b in backends if b.capabilities.precision})
    return " + ".join(found) or None


def stamp(output: ProbeOutput, backends: Sequence[Backend]) -> ProbeOutput:
    """Record in `output`'s payload which precision each of its models computed in (payloads stored before
    this was recorded have no such key and read as unknown)."""
    output.payload[PAYLOAD_KEY] = of_backends(backends)
    return output


def merged(payloads: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    """Model name -> precision over several stored payloads (a prompt set's units, a run's probes); a model
    whose payloads disagree (a run resumed with another --dtype) gets every precision seen, joined by " + "."""
    seen: dict[str, set[str]] = {}
    for payload in payloads:
        for model, precision in recorded(payload).items():
            seen.setdefault(model, set()).update(precision.split(" + ") if precision else [])
    return {model: " + ".join(sorted(found)) or None for model, found in seen.items()}


def recorded(payload: Mapping[str, Any]) -> dict[str, str | None]:
    """Model name -> precision as a stored payload records it; empty when it records none."""
    found = payload.get(PAYLOAD_KEY)
    if not isinstance(found, Mapping):
        return {}
    return {str(model): value if isinstance(value, str) else None for model, value in found.items()}


def reduced(payload: Mapping[str, Any]) -> dict[str, str]:
    """The models of a stored payload that computed in reduced precision, with their precision."""
    return {model: precision for model, precision in recorded(payload).items() if precision and is_reduced(precision)}
