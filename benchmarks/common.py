"""What the benchmarks share: timings with best-of and median, progress tasks, and the environment block."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.progress import Progress
from rich.table import Table

T = TypeVar("T")


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs of one step."""

    runs_s: list[float]
    first_call_s: float | None = None  # an untimed warm-up run, reported separately (one-off costs)

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)

    @property
    def best_s(self) -> float:
        return min(self.runs_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"best_s": self.best_s, "median_s": self.median_s}


def timed(step: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    value = step()
    return time.perf_counter() - start, value


@contextlib.contextmanager
def task(progress: Progress, description: str, total: int | None) -> Iterator[Callable[[], None]]:
    """A progress line for one slow step; yields a function that advances it by one."""
    task_id = progress.add_task(description, total=total)
    try:
        yield lambda: progress.advance(task_id)
    finally:
        progress.remove_task(task_id)


def import_heavy() -> None:
    """Import what every load needs (torch, transformers), so the measurements leave the imports out."""
    from transformers import AutoModelForCausalLM

    from modescope.models.hf import HFBackend

    del AutoModelForCausalLM, HFBackend


def against(met: bool, target: str) -> str:
    return f"{target} [green]met[/]" if met else f"{target} [red]missed[/]"


def detail(timing: Timing) -> str:
    first = f", first call {timing.first_call_s:.2f}" if timing.first_call_s is not None else ""
    return f"{timing.best_s:.2f} s (median {timing.median_s:.2f}{first})"


def environment() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_1m_start": os.getloadavg()[0],
    }


def benchmark_parser(doc: str | None, repeats: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: --json, --repeats and --models."""
    from modescope.models import DEFAULT_MODELS

    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to this JSON file")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs per step; the best is reported")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="MODEL", help="models to measure")
    return parser


def prepare_run(status: Callable[[str], Any], repeats: int) -> dict[str, Any]:
    """Offline settings, torch and transformers imported (timed apart), and the environment block."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with status("importing torch and transformers"):
        import_s, _ = timed(import_heavy)
    return environment() | {"imports_s": import_s, "repeats": repeats}


def add_measure_rows(table: Table, rows: dict[str, list[str]]) -> Table:
    """One table row per measure, one column per model."""
    for measure, values in rows.items():
        table.add_row(measure, *values)
    return table
