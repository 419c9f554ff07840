"""Benchmark a prompt set at scale: 100 prompts x the 2 default models x n=8 samples of 32 tokens, three ways.

Every way computes the same units (one per prompt and model: the completions with per-token records and every
diversity metric, exactly what `modescope run` stores), from the same loaded models, in the same process:

1. one prompt at a time: a batch of one prompt per call (what 100 single-prompt runs would cost, minus loading),
   on the first --baseline-prompts prompts only (25 by default: it is the slow way, and its throughput per unit
   does not depend on how many prompts it runs);
2. batched across prompts: the suite runner's batches, many prompts in one decode batch (up to 256 rows);
3. Ray with 2 workers: the same batches through `RayExecutor` on a local Ray cluster, one worker per model, each
   holding its model; the workers are started and their models loaded before the clock starts.

The prompts are the built-in open-ended set (64) under two templates, the first 100. Throughput is units and
generated tokens per second; the ratios are against way 1, measured in the same run. Memory is the peak RSS of
this process and its children (the Ray workers), sampled every 5 ms, over the RSS before the way started.
The samples of way 2 and 3 are checked against way 1 (same seeds, same samples); a mismatch exits with 1.

Run it with `.venv/bin/python benchmarks/bench_scale.py [--prompts 100] [--n 8] [--max-tokens 32] [--json PATH]`.
The goal (batched at least 3x faster than one prompt at a time) is reported, not enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench_sample import PeakRSS
from common import against, environment, import_heavy
from modescope.models import DEFAULT_MODELS, load
from modescope.store import UnitRecord
from modescope.suites import schema
from modescope.suites.prompt_sets import apply_template, load_prompts_file
from modescope.suites.runner import ModelPool
from modescope.suites.units import Batch, ExecutorEvents, LocalExecutor, UnitResult, split_batches

TEMPLATES = ("Q: ${prompt}\nA:", "Question: ${prompt}\nAnswer:")


class TreeRSS(PeakRSS):
    """Peak resident set size of this process and its children (the Ray workers) while the block runs."""

    def _rss(self) -> int:
        total = 0
        for process in [self._process, *self._process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a child may end while it is read
                total += process.memory_info().rss
        return total


def make_units(count: int, models: list[str]) -> list[UnitRecord]:
    items = load_prompts_file("open-ended")
    prompts = [p for template in TEMPLATES for p in apply_template(items, template, {})][:count]
    return [
        UnitRecord("scale", f"{k}", model, k, p.text, p.meta, "") for model in models for k, p in enumerate(prompts)
    ]


def run_way(
    name: str, run: Callable[[list[Batch], ExecutorEvents], None], batches: list[Batch], progress: Progress
) -> dict[str, Any]:
    results: dict[tuple[str, str], Any] = {}
    task = progress.add_task(name, total=sum(len(b.units) for b in batches))

    def deliver(result: UnitResult) -> None:
        results[(result.unit.prompt_id, result.unit.model)] = result.output.payload["models"][0]["completions"]
        progress.advance(task)

    with TreeRSS() as memory:
        start = time.perf_counter()
        run(batches, ExecutorEvents(deliver))
        seconds = time.perf_counter() - start
    progress.remove_task(task)
    tokens = sum(len(c["tokens"]) for completions in results.values() for c in completions)
    return {
        "way": name,
        "seconds": seconds,
        "units": len(results),
        "tokens": tokens,
        "peak_rss_bytes": memory.peak,
        "rss_increase_bytes": memory.peak - memory.before,
        "texts": {f"{k[0]}|{k[1]}": [c["text"] for c in v] for k, v in results.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--baseline-prompts", type=int, default=25, help="Prompts of way 1 (the first ones).")
    parser.add_argument("--skip-ray", action="store_true", help="Leave out way 3.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    console = Console()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import_heavy()
    probe = schema.SampleProbe(name="scale", kind="sample", prompts=["-"], n=args.n, max_tokens=args.max_tokens)
    entries = {m: schema.ModelEntry(name=m) for m in args.models}
    units = make_units(args.prompts, args.models)
    pool = ModelPool("cpu")
    for entry in entries.values():
        pool.get(entry)
    load("toy:warm")  # nothing else to import on the clock

    def batches(size: int | None, prompts: int = args.prompts) -> list[Batch]:
        found: list[Batch] = []
        for model, entry in entries.items():
            own = [u for u in units if u.model == model][:prompts]
            found += (
                split_batches(probe, entry, own)
                if size is None
                else [Batch(probe, entry, own[k : k + size]) for k in range(0, len(own), size)]
            )
        return found

    local = LocalExecutor(pool)
    warm = [Batch(probe, e, [u for u in units if u.model == m][:1]) for m, e in entries.items()]
    local.run(warm, ExecutorEvents(lambda result: None))  # the embedder and first calls, off the clock
    ways = []
    with Progress(console=console, transient=True) as progress:
        ways.append(run_way("one prompt at a time", local.run, batches(1, args.baseline_prompts), progress))
        ways.append(run_way("batched across prompts", local.run, batches(None), progress))
        if not args.skip_ray:
            from modescope.suites.ray_executor import RayExecutor

            executor = RayExecutor(device="cpu", num_cpus=2)
            try:
                executor.run(warm, ExecutorEvents(lambda result: None))  # start the workers, load the models
                ways.append(run_way("Ray, 2 workers", executor.run, batches(None), progress))
            finally:
                executor.close()
    baseline = ways[0]
    same = all(way["texts"][key] == texts for way in ways[1:] for key, texts in baseline["texts"].items())
    same = same and all(way["texts"] == ways[1]["texts"] for way in ways[2:])
    table = Table(title=f"{args.prompts} prompts x {len(args.models)} models x n={args.n} x {args.max_tokens} tokens")
    for column in ("way", "units", "seconds", "units/s", "tokens/s", "speedup", "peak RSS GB", "RSS increase GB"):
        table.add_column(column, justify="left" if column == "way" else "right")
    for way in ways:
        way["speedup"] = (way["units"] / way["seconds"]) / (baseline["units"] / baseline["seconds"])
        table.add_row(
            way["way"],
            str(way["units"]),
            f"{way['seconds']:.1f}",
            f"{way['units'] / way['seconds']:.2f}",
            f"{way['tokens'] / way['seconds']:.0f}",
            f"{way['speedup']:.2f}x",
            f"{way['peak_rss_bytes'] / 1e9:.2f}",
            f"{way['rss_increase_bytes'] / 1e9:.2f}",
        )
    console.print(table)
    console.print(against(ways[1]["speedup"] >= 3.0, "goal: batched at least 3x faster than one prompt at a time"))
    console.print("same samples in every way: " + ("[green]yes[/]" if same else "[red]NO[/]"))
    console.print("prompts per hour per GPU: not measured (no GPU on this machine)")
    if args.json is not None:
        report = {"environment": environment(), "ways": [{k: v for k, v in w.items() if k != "texts"} for w in ways]}
        args.json.write_text(json.dumps(report | {"same_samples": same}, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
