"""Units of work of a prompt-set probe, and the executors that compute them.

A probe over a prompt set is split into units (`UnitRecord`), one per (prompt, model): each unit is the probe run on one
prompt with one model, stored on its own (so a killed run recomputes only the missing units) and cached by
content like a whole probe. An executor receives batches (one probe, one model, several prompts) and hands
each finished unit back to the driver, which alone writes the store. `LocalExecutor` computes in this
process; `modescope.suites.ray_executor.RayExecutor` fans the batches out over a Ray cluster.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modescope import precision
from modescope.store import ProbeOutput, UnitRecord

if TYPE_CHECKING:
    from modescope.models.base import Backend
    from modescope.suites import schema


@dataclass
class Batch:
    """What an executor computes at once: one probe, one model, several prompts (units aligned with prompts)."""

    probe: Any  # a schema probe
    model: schema.ModelEntry
    units: list[UnitRecord]  # each holds its prompt's text
    # a batch of pair units (what the probe compares between two models) also needs this model, loaded
    # beside `model`; such batches run in the driver's process (see `runner._run_prompt_set`)
    partner: schema.ModelEntry | None = None
    first: bool = False  # whether `model` is the run's first model (the base of outcome-level comparisons)


@dataclass
class UnitResult:
    unit: UnitRecord
    output: ProbeOutput
    seconds: float  # compute time of this unit (a batch's time shared among its prompts)


@dataclass
class UnitFailure:
    unit: UnitRecord
    error: str
    attempts: int


@dataclass
class ExecutorEvents:
    """How an executor reports: every finished unit, every unit given up on, and progress messages."""

    deliver: Callable[[UnitResult], None]
    fail: Callable[[UnitFailure], None] = lambda failure: None
    progress: Callable[[str], None] = lambda message: None


class Executor(ABC):
    """Computes batches of units; `run` returns when every unit was delivered or failed."""

    @abstractmethod
    def run(self, batches: Sequence[Batch], events: ExecutorEvents) -> None: ...

    def close(self) -> None:  # noqa: B027 (optional: an executor without workers has nothing to release)
        """Release models and workers."""


def split_batches(probe: Any, model: schema.ModelEntry, units: Sequence[UnitRecord]) -> list[Batch]:
    """The units of one probe and model cut into batches of the size the probe's kind batches best."""
    from modescope.suites.kinds import prompts_per_batch

    size = prompts_per_batch(probe)
    return [Batch(probe, model, list(units[k : k + size])) for k in range(0, len(units), size)]


def compute_batch(
    backend: Backend, batch: Batch, progress: Callable[[str], None], partner: Backend | None = None
) -> Iterator[UnitResult]:
    """Run a batch on a model already viewed through the probe's chat settings (and, for pair units, its
    partner); yields each unit's result."""
    from modescope.suites.kinds import run_pair_prompts, run_prompts

    started = time.perf_counter()
    prompts = [u.prompt for u in batch.units]
    if partner is None:
        outputs = run_prompts(backend, batch.probe, prompts, progress)
    else:
        outputs = run_pair_prompts(backend, partner, batch.probe, prompts, batch.first, progress)
    seconds = (time.perf_counter() - started) / max(1, len(batch.units))
    models = [backend] if partner is None else [backend, partner]
    for unit, output in zip(batch.units, outputs, strict=True):
        yield UnitResult(unit, precision.stamp(output, models), seconds)


@dataclass
class LocalExecutor(Executor):
    """Computes in this process, loading each model once (through the runner's model pool)."""

    pool: Any  # modescope.suites.runner.ModelPool

    def run(self, batches: Sequence[Batch], events: ExecutorEvents) -> None:
        for batch in batches:
            backend = self.pool.view(batch.probe, batch.model)
            partner = self.pool.view(batch.probe, batch.partner) if batch.partner is not None else None
            for result in compute_batch(backend, batch, events.progress, partner):
                events.deliver(result)
