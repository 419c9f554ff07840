"""What the benchmarks share: timings with best-of and median, progress tasks, and the environment block."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
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


def parse_options(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line of a benchmark, refusing --repeats below 1."""
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def environment_line(env: dict[str, Any]) -> str:
    """Library versions, threads, CPUs and the load average at the start, for the first line of output."""
    return (
        f"torch {env['torch']}, transformers {env['transformers']} on {env['torch_threads']} threads, "
        f"{env['cpus']} CPUs, load average {env['load_average_1m_start']:.1f}"
    )


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


def progress_bar(console: Console) -> Progress:
    """The progress display every benchmark shows while it measures."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    return Progress(*columns, TimeElapsedColumn(), console=console, transient=True)


def warn_if_busy(console: Console, env: dict[str, Any]) -> None:
    """Record the load average at the end and warn when other work probably shared the CPUs."""
    env["load_average_1m_end"] = os.getloadavg()[0]
    # the load average counts this script's own torch threads too; what is left over is other work
    others = max(env["load_average_1m_start"], env["load_average_1m_end"] - env["torch_threads"])
    if others > 0.5 * (env["cpus"] or 1):
        console.print(
            f"[yellow]warning[/]: the machine may have been busy with other work (load average "
            f"{env['load_average_1m_start']:.1f} at the start, {env['load_average_1m_end']:.1f} at the end, on "
            f"{env['cpus']} CPUs with {env['torch_threads']} torch threads here); timings may be noisy"
        )


def finish(path: Path | None, figures: dict[str, Any], console: Console, failure: str | None, success: str) -> int:
    """A benchmark's last words: write the figures (with --json), then FAIL with `failure` (the exit code 1) or
    OK with `success` (0). The checks that fail are correctness checks, never timings."""
    write_figures(path, figures, console)
    if failure is not None:
        console.print(f"[red]FAIL[/]: {failure}")
        return 1
    console.print(f"[green]OK[/]: {success}")
    return 0


def write_figures(path: Path | None, figures: dict[str, Any], console: Console) -> None:
    """Write every figure as JSON when --json was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    console.print(f"figures written to {path}")
