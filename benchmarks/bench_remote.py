"""Benchmark models behind a server: vLLM (the CPU build in .venv-vllm) against in-process transformers on
the same SmolLM2 weights, in the same run.

Two probes, each on both sides:

1. the exact 0..100 distribution after "Q: Tell me a random integer between 0 and 100.\\nA: Ok, the integer
   is" (every tokenization, optional leading space); remote, on the full tier (exact) and with the
   alternatives capped at 20 (the top-k tier: bounds), reporting the wall time, the requests and bytes each
   took, how many whole distributions were fetched, and how far the masses are from the in-process ones;
2. sampling n=32 x 48 new tokens at temperature 1 with 10 alternatives per token, from "Are bugs real?"
   through the chat template (EOS may end a row on either side, so speeds are per generated token).

Timings are the best of --repeats runs (median reported too), remote and in-process interleaved so drift in
the machine's speed hits both; each side first has one untimed warm-up run. The server and this script share
the machine's cores, as a server on the same box would. The goal (the exact remote distribution within 3x
of the in-process time) is reported, not enforced.

Run it with `.venv/bin/python benchmarks/bench_remote.py [--server NAME@URL] [--repeats N] [--json PATH]`;
without --server it starts vLLM on a free local port (60-90 s) and stops it at the end.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from common import (
    Timing,
    against,
    benchmark_parser,
    detail,
    environment_line,
    parse_options,
    prepare_run,
    progress_bar,
    warn_if_busy,
    write_figures,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.remote.vllm_server

PROMPT = "Q: Tell me a random integer between 0 and 100.\nA: Ok, the integer is"
STORY = "Are bugs real?"
GOAL = 3.0


@contextlib.contextmanager
def server_spec(given: str | None, console: Console) -> Iterator[str]:
    if given:
        yield given
        return
    from tests.remote import vllm_server

    from modescope.models import PRESETS, preset_folder

    with console.status("starting vLLM (60-90 s)"):
        server = vllm_server.start(preset_folder(PRESETS["smollm2-135m-instruct"]))
    try:
        yield server.spec
    finally:
        server.stop()


def best_of(repeats: int, step: Callable[[], Any]) -> tuple[Timing, Any]:
    started = time.perf_counter()
    value = step()
    first = time.perf_counter() - started
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        value = step()
        runs.append(time.perf_counter() - started)
    return Timing(runs, first), value


def traffic(backend: Any, step: Callable[[], Any]) -> tuple[Any, dict[str, int]]:
    """Run `step` once and count the requests and bytes it cost a remote backend."""
    client = backend.client
    before = (client.requests, client.bytes_sent, client.bytes_received)
    value = step()
    after = (client.requests, client.bytes_sent, client.bytes_received)
    return value, {
        "requests": after[0] - before[0],
        "bytes_sent": after[1] - before[1],
        "bytes_received": after[2] - before[2],
    }


def mass_gap(result: Any, exact: Any) -> dict[str, float]:
    """Largest relative distance of the masses (and of the upper bounds) from the in-process ones, and the
    median relative width of the intervals."""
    pairs = list(zip(result.outcomes, exact.outcomes, strict=True))
    widths = sorted((a.mass_upper - a.mass) / b.mass for a, b in pairs if b.mass > 0)
    # within the float32 noise of the server's numbers (the full tier agrees within ~1e-4)
    holds = all(a.mass * (1 - 1e-3) <= b.mass <= a.mass_upper * (1 + 1e-3) for a, b in pairs)
    return {
        "max_relative_difference": max(abs(a.mass - b.mass) / b.mass for a, b in pairs if b.mass > 0),
        "median_relative_width": widths[len(widths) // 2],
        "bounds_hold": float(holds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, repeats=2)
    parser.add_argument("--server", metavar="NAME@URL", help="an existing server serving smollm2-135m-instruct")
    args = parse_options(parser, argv)
    console = Console(highlight=False)
    env = prepare_run(console.status, args.repeats)
    console.print(environment_line(env))
    import modescope as ms
    from modescope.engine.decode import generate
    from modescope.models.base import ChatPrompt

    figures: dict[str, Any] = {"environment": env}
    with server_spec(args.server, console) as spec, progress_bar(console) as progress:
        task = progress.add_task("loading both sides", total=None)
        local = ms.load("smollm2-135m-instruct", device="cpu")
        remote = ms.load(spec)
        capped = ms.load(spec, max_logprobs=20)
        candidates = ms.integers(0, 100)
        sides = {"in-process": local, "remote full": remote, "remote top-20": capped}
        dist: dict[str, Any] = {}
        for name, backend in sides.items():
            progress.update(task, description=f"0..100 distribution: {name}")
            timing, result = best_of(args.repeats, lambda b=backend: ms.distribution(b, PROMPT, candidates))
            dist[name] = {"timing": timing, "result": result.results[0]}
            if name != "in-process":
                _, dist[name]["traffic"] = traffic(backend, lambda b=backend: ms.distribution(b, PROMPT, candidates))
        sampled: dict[str, Any] = {}
        ids = local.prompt_ids(ChatPrompt(STORY))
        for name, backend in list(sides.items())[:2]:
            progress.update(task, description=f"sampling 32 x 48: {name}")

            def draw(b: Any = backend) -> Any:
                return generate(b, ids, n=32, max_tokens=48, temperature=1.0, top_k_alternatives=10, seed=0)

            timing, rows = best_of(args.repeats, draw)
            tokens = sum(len(c.tokens) for c in rows)
            sampled[name] = {"timing": timing, "tokens": tokens, "tokens_per_s": tokens / timing.best_s}
            if name != "in-process":
                _, sampled[name]["traffic"] = traffic(backend, draw)

    exact = dist["in-process"]["result"]
    table = Table(title="SmolLM2 135M: vLLM (CPU build) against in-process transformers", title_justify="left")
    for column in ["probe", "side", "time", "ratio", "requests", "received", "whole dists", "masses"]:
        table.add_column(column)
    base_s = dist["in-process"]["timing"].best_s
    for name, entry in dist.items():
        result, timing = entry["result"], entry["timing"]
        moved = entry.get("traffic", {})
        gap = mass_gap(result, exact) if name != "in-process" else {}
        entry["figures"] = {
            "timing": timing.to_dict(),
            "ratio": timing.best_s / base_s,
            "traffic": moved,
            "whole_distributions": result.stats.whole_distributions,
            "nodes": result.stats.nodes,
            "bounds": result.bounds,
            **gap,
        }
        masses = (
            "reference"
            if not gap
            else f"max diff {gap['max_relative_difference']:.1e}, width {gap['median_relative_width']:.1e}"
        )
        table.add_row(
            "0..100",
            name,
            detail(timing),
            f"{timing.best_s / base_s:.1f}x",
            str(moved.get("requests", "-")),
            f"{moved['bytes_received'] / 1e6:.1f} MB" if moved else "-",
            str(result.stats.whole_distributions or "-"),
            masses,
        )
    base_rate = sampled["in-process"]["tokens_per_s"]
    for name, entry in sampled.items():
        moved = entry.get("traffic", {})
        entry["figures"] = {
            "timing": entry["timing"].to_dict(),
            "tokens": entry["tokens"],
            "tokens_per_s": entry["tokens_per_s"],
            "traffic": moved,
        }
        table.add_row(
            "sample 32x48",
            name,
            f"{detail(entry['timing'])}, {entry['tokens_per_s']:.0f} tok/s",
            f"{base_rate / entry['tokens_per_s']:.1f}x",
            str(moved.get("requests", "-")),
            f"{moved['bytes_received'] / 1e6:.2f} MB" if moved else "-",
            "-",
            "",
        )
    console.print(table)
    ratio = dist["remote full"]["timing"].best_s / base_s
    console.print(
        f"exact remote 0..100 distribution: {ratio:.1f}x in-process, " + against(ratio <= GOAL, f"goal <= {GOAL:g}x")
    )
    held = all(dist[n]["figures"].get("bounds_hold", 1.0) == 1.0 for n in dist)
    console.print(f"top-20 intervals hold every exact mass: {'yes' if held else '[red]no[/]'}")
    figures["distribution"] = {name: entry["figures"] for name, entry in dist.items()}
    figures["sampling"] = {name: entry["figures"] for name, entry in sampled.items()}
    warn_if_busy(console, env)
    write_figures(args.json, figures, console)
    exact_ok = dist["remote full"]["figures"]["max_relative_difference"] <= 1e-3
    return 0 if exact_ok and held and not math.isnan(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
