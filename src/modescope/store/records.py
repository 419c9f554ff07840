"""The values the store keeps: a probe's output (metrics, JSON payload, rendered artifacts) and a run's header."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One summary number of a probe, for one model or ("" as model) for the pair / all models."""

    model: str
    name: str  # e.g. "entropy_bits", "coverage", "top1", "basin_share", "tau_star"
    value: float | None  # None: not measured, or not a finite number
    text: str | None = None  # for textual metrics such as the top-1 outcome ("42")


@dataclass(frozen=True)
class Artifact:
    """A rendered figure or page."""

    mime: str  # "image/png", "image/svg+xml", "text/html"
    data: bytes


@dataclass
class ProbeOutput:
    """Everything one probe produced, for all models."""

    metrics: list[Metric]
    payload: dict[str, Any]  # JSON-able full result (e.g. DistributionResult.to_dict())
    artifacts: dict[str, Artifact]  # name -> rendered figure/page
    notes: list[str] = field(default_factory=list)


@dataclass
class RunInfo:
    """One run of a suite against its models."""

    id: int
    suite: str
    suite_hash: str
    status: str  # "running" | "finished" | "failed"
    started: float  # unix time
    finished: float | None
    models: list[dict[str, Any]]  # in the suite's order, with their settings
    suite_text: str


@dataclass(frozen=True)
class UnitRecord:
    """Where a unit of a prompt-set probe belongs: its probe, prompt (id, place in the set, the text the model
    saw, the prompt's other keys) and model, and its cache key."""

    probe: str
    prompt_id: str
    model: str
    position: int
    prompt: str
    meta: dict[str, Any]
    cache_key: str


@dataclass
class StoredUnit:
    """A unit read back from the store."""

    record: UnitRecord
    output: ProbeOutput
    seconds: float
    from_cache: bool
