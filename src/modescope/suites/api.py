"""Suites from Python: `ms.run_suite` runs one into a store and returns the run, which renders as its report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modescope.results import NotebookResult
from modescope.store import Store

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class SuiteRun(NotebookResult):
    """A stored run of a suite: where it is, how it ended, and its probes. Reading methods open the store.

    In a notebook it shows the run's HTML report (the same as `modescope report`); `to_pandas()` is its metrics
    in long format (probe, kind, model, metric, value, text).
    """

    store_path: Path
    run_id: int
    suite: str
    status: str  # "finished" or "failed" (some prompt-set units gave up: resume to compute only those)
    models: list[str]
    probes: list[dict[str, Any]] = field(default_factory=list)  # name, kind, seconds, from_cache
    failures: list[dict[str, Any]] = field(default_factory=list)

    frame_height = 1100

    def store(self) -> Store:
        """The store holding the run, opened (use it in a `with` block, or close it)."""
        return Store(self.store_path)

    def to_pandas(self) -> pd.DataFrame:
        """Every metric of the run: run, probe, kind, model, metric, value (NaN when not measured), text."""
        with self.store() as store:
            return store.metrics(self.run_id)

    def to_dict(self) -> dict[str, Any]:
        """The run's header, its probes and every metric as records."""
        return {
            "store": str(self.store_path),
            "run_id": self.run_id,
            "suite": self.suite,
            "status": self.status,
            "models": self.models,
            "probes": self.probes,
            "failures": self.failures,
            "metrics": self.to_pandas().to_dict(orient="records"),
        }

    def to_html(self) -> str:
        """The run's self-contained HTML report."""
        from modescope.viz.report_html import report_html

        with self.store() as store:
            return report_html(store, self.run_id)


def stored_run(store: Store, run_id: int) -> SuiteRun:
    """A `SuiteRun` for a run already in `store` (ask `Store.runs()` for the ids)."""
    info = store.run(run_id)
    probes = [
        {k: p[k] for k in ("name", "kind", "seconds", "from_cache")} for p in store.probes(run_id)
    ]  # params and payloads stay in the store
    models = [str(m.get("name")) for m in info.models]
    return SuiteRun(store.path, run_id, info.suite, info.status, models, probes, store.failures(run_id))


def run_suite(
    suite: str | Path,
    models: Sequence[str] | None = None,
    *,
    store: str | Path | None = None,
    resume: bool = False,
    only: Sequence[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
) -> SuiteRun:
    """Run an experiment suite: every probe on every model, stored probe by probe, reused from the cache.

    A probe whose inputs (models' weights, prompt, settings, modescope version) were computed before in the
    same store is taken from the cache in milliseconds. Prompt-set probes are stored unit by unit, so an
    interrupted run resumed with `resume=True` computes only what is missing.

    Args:
        suite: A built-in suite's name (e.g. "essay"; `modescope suites` lists them) or a TOML file.
        models: Run on these models instead of the suite's: names as for `ms.load`.
        store: The store's folder or SQLite file (default: ./modescope-results).
        resume: Continue the latest unfinished run of this suite instead of starting a new one.
        only: Recompute only these probes, in the suite's latest run.
        device: cpu, cuda, cuda:N or auto.
        dtype: auto, float32, bfloat16 or float16 (results in reduced precision are labelled so).
        progress: Show a progress bar over the probes.

    Returns:
        The `SuiteRun`: store path, run id, status and probes; its `to_pandas()` holds every metric and, in a
        notebook, it shows the HTML report.

    Example:
        >>> import modescope as ms
        >>> run = ms.run_suite("essay", ["gemma-3-270m", "smollm2-135m-instruct"], store="results")
        >>> run.to_pandas().query("metric == 'entropy_bits'")
    """
    from modescope.suites.runner import RunEvents, plan_suite
    from modescope.suites.runner import run_suite as run_plan

    plan = plan_suite(str(suite), list(models) if models else None)
    with Store(store) as opened, _ProbeBar(len(plan.probes), progress) as bar:
        events = RunEvents(probe_started=bar.started, probe_finished=bar.finished, probe_progress=bar.note)
        run_id = run_plan(
            plan, opened, resume=resume, only=list(only) if only else None, device=device, dtype=dtype, events=events
        )
        return stored_run(opened, run_id)


class _ProbeBar:
    """A tqdm bar over a run's probes (plain text: it needs no widget library in a notebook)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="probe", disable=not enabled)

    def __enter__(self) -> _ProbeBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def started(self, name: str, index: int, total: int) -> None:
        self.bar.reset(total=total)
        self.bar.update(index)
        self.bar.set_description(name)

    def note(self, message: str) -> None:
        self.bar.set_postfix_str(message[:60], refresh=True)

    def finished(self, name: str, seconds: float, cached: bool) -> None:
        self.bar.set_postfix_str("from the cache" if cached else f"{seconds:.1f} s")
        self.bar.update(1)
