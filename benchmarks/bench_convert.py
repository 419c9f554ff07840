"""Benchmark converting the default models' GGUF files: transformers' own loading against the one-pass path.

A cold `make demo` converts each default model's GGUF into a float32 safetensors folder once. For each
model this measures, into temporary caches (the normal converted cache is never touched):

1. the conversion through transformers' GGUF loading (`convert_gguf(..., fast=False)`, the reference);
2. the one-pass conversion of `modescope.models.gguf_convert` (what `convert_gguf` does by default);
3. whether the two folders are identical: every file byte for byte except the weights, and every tensor by
   name, dtype and exact value. If not, the script exits with status 1.

Run it with `.venv/bin/python benchmarks/bench_convert.py [--json PATH]` (or `make bench`). Before timing, the
model's transformers modules are imported once (reported as "warm-up"), so neither path pays for them.
Assembling Gemma's GGUF from its package chunks is reported apart ("locate"): both paths share it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from common import (
    Timing,
    add_measure_rows,
    benchmark_parser,
    environment_line,
    finish,
    parse_options,
    prepare_run,
    progress_bar,
    task,
    timed,
    warn_if_busy,
)

console = Console()


@dataclass
class ConvertReport:
    model: str
    gguf_mb: float
    locate_s: float
    warm_up_s: float
    transformers: Timing
    fast: Timing
    differences: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.transformers.best_s / self.fast.best_s

    @property
    def identical(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("transformers", "fast")}
        return data | {
            "transformers": self.transformers.to_dict(),
            "fast": self.fast.to_dict(),
            "ratio": self.ratio,
            "identical": self.identical,
        }


@contextlib.contextmanager
def scratch_cache() -> Iterator[Path]:
    """A temporary MODESCOPE_CACHE, removed afterwards, so nothing lands in (or is read from) the real one."""
    saved = os.environ.get("MODESCOPE_CACHE")
    root = Path(tempfile.mkdtemp(prefix="modescope-bench-convert-"))
    os.environ["MODESCOPE_CACHE"] = str(root)
    try:
        yield root
    finally:
        if saved is None:
            del os.environ["MODESCOPE_CACHE"]
        else:
            os.environ["MODESCOPE_CACHE"] = saved
        shutil.rmtree(root, ignore_errors=True)


def warm_up(path: Path) -> None:
    """Import the model's transformers modules (config, model and tokenizer classes) without converting."""
    from transformers import AutoConfig

    from modescope.models import gguf_convert

    header = gguf_convert.read_header(path)
    config = AutoConfig.for_model(**gguf_convert.config_dict(header))
    gguf_convert.tokenizer_class(config)
    gguf_convert.meta_model(config)


def convert_once(path: Path, target: Path, fast: bool) -> float:
    """Seconds to convert `path` into `target` (which must not exist), transformers' progress bars hushed."""
    from modescope.models.hf import convert_gguf

    with contextlib.redirect_stderr(io.StringIO()):
        seconds, _ = timed(lambda: convert_gguf(path, target, fast=fast))
    return seconds


def bench_model(name: str, args: argparse.Namespace, progress: Progress) -> ConvertReport:
    from modescope.models import PRESETS
    from modescope.models.gguf_convert import folder_differences

    if name not in PRESETS:
        raise SystemExit(f"{name} is not a preset; this benchmark converts the presets' GGUF files")
    preset = PRESETS[name]
    if not preset.installed():
        raise SystemExit(preset.missing_message())
    with scratch_cache() as root:
        locate_s, path = timed(lambda: preset.locate(root))
        warm_up_s, _ = timed(lambda: warm_up(path))
        runs: dict[bool, list[float]] = {False: [], True: []}
        with task(progress, f"{name}: converting by both paths", 2 * args.repeats) as advance:
            for repeat in range(args.repeats):
                for fast in (False, True):
                    target = root / "converted" / f"{'fast' if fast else 'transformers'}-{repeat}"
                    runs[fast].append(convert_once(path, target, fast))
                    advance()
        with task(progress, f"{name}: comparing the folders", None):
            differences = folder_differences(root / "converted" / "transformers-0", root / "converted" / "fast-0")
        size_mb = path.stat().st_size / 2**20
    return ConvertReport(name, size_mb, locate_s, warm_up_s, Timing(runs[False]), Timing(runs[True]), differences)


def summary_table(reports: list[ConvertReport], env: dict[str, Any]) -> Table:
    title = f"Cold GGUF conversion (best of {env['repeats']}; imports {env['imports_s']:.1f} s, not included)"
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    for report in reports:
        table.add_column(report.model, justify="right")
    rows: dict[str, list[str]] = {}
    for r in reports:
        colour = "green" if r.identical else "red"
        for measure, value in {
            "GGUF size": f"{r.gguf_mb:.0f} MB",
            "locate (assemble) the file": f"{r.locate_s:.2f} s",
            "warm-up (imports)": f"{r.warm_up_s:.2f} s",
            "transformers' loading": f"{r.transformers.best_s:.2f} s",
            "one pass (gguf_convert)": f"{r.fast.best_s:.2f} s",
            "speed-up": f"{r.ratio:.1f}x",
            "identical folders": f"[{colour}]{'yes' if r.identical else 'NO'}[/]",
        }.items():
            rows.setdefault(measure, []).append(value)
    return add_measure_rows(table, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse_options(benchmark_parser(__doc__, repeats=1), argv)


def report_differences(reports: list[ConvertReport], print_line: Callable[[str], None]) -> None:
    for r in reports:
        for difference in r.differences[:10]:
            print_line(f"[red]{r.model}[/]: {difference}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = prepare_run(console.status, args.repeats)
    console.print(environment_line(env))
    reports: list[ConvertReport] = []
    with progress_bar(console) as progress:
        for name in args.models:
            reports.append(bench_model(name, args, progress))
    warn_if_busy(console, env)
    console.print(summary_table(reports, env))
    report_differences(reports, console.print)
    failed = [r.model for r in reports if not r.identical]
    figures = {
        "timing": f"best of {args.repeats} (every run included)",
        "environment": env,
        "models": [r.to_dict() for r in reports],
        "ok": not failed,
    }
    failure = "the one-pass conversion differs from transformers' for " + ", ".join(failed)
    success = "both paths wrote identical folders (files byte for byte, tensors exactly)"
    return finish(args.json, figures, console, failure if failed else None, success)


if __name__ == "__main__":
    sys.exit(main())
