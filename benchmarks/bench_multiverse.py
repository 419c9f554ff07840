"""Benchmark block-multiverse expansion against expanding node by node without batching or cache reuse.

For each default model it expands the essay's prompt "Q: Are bugs real?\\nA:" to depth 4 with cutoff 0.005
(merging identical-text siblings, stopping at EOS) two ways:

1. the engine, `modescope.probes.multiverse.multiverse(..., cache=False)`: best first, up to 64 frontier
   nodes per forward pass, each node reusing its parent's KV cache row (one token position per node);
2. node by node: the same best-first rule, written out here, where every node's next-token distribution
   comes from its own full forward pass of prompt + path (no KV cache, batch of one).

Both sides must list the same nodes with the same joint probabilities (to 1e-4 relative: float32 cached and
uncached passes differ in rounding only). The figure of merit is nodes expanded per second (next-token
distributions computed, the root's included); the target is a speed-up of at least 5x. Timings are the best
of --repeats interleaved runs (median reported too), after one untimed warm-up run of each side (reported as
"first call": the engine's first expansion pays one-off costs that took it from 0.85 to 1.4-4.1 s on Gemma).

Run it with `.venv/bin/python benchmarks/bench_multiverse.py [--models ...] [--repeats N] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import functools
import gc
import heapq
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from common import (
    Timing,
    add_measure_rows,
    against,
    benchmark_parser,
    detail,
    environment_line,
    parse_options,
    prepare_run,
    progress_bar,
    task,
    timed,
    warn_if_busy,
    write_figures,
)

if TYPE_CHECKING:
    from modescope.models.base import Backend

PROMPT = "Q: Are bugs real?\nA:"
DEPTH = 4
CUTOFF = 0.005
TARGET = 5.0
TOLERANCE = 1e-4

console = Console()

Joints = dict[tuple[str, ...], float]  # key path -> joint probability


def engine_expansion(backend: Backend) -> tuple[Joints, int]:
    from modescope.probes.multiverse import multiverse

    tree = multiverse(backend, PROMPT, depth=DEPTH, cutoff=CUTOFF, cache=False)
    joints = {tuple(n.key for n in node.path()): node.joint() or 0.0 for node in tree.nodes()}
    return joints, 1 + tree.nodes_expanded[0]


def node_by_node_expansion(backend: Backend) -> tuple[Joints, int]:
    """The same best-first rule, one full uncached forward pass per node spelling."""
    import torch

    from modescope.probes.multiverse import EOS_KEY, SPELLING_SHARE, step_keys

    keys = step_keys(backend, merge=True)
    prompt = backend.prompt_ids(PROMPT)
    frontier: list[tuple[float, int, tuple[str, ...], list[tuple[tuple[int, ...], float]]]] = [
        (-1.0, 0, (), [((), 0.0)])
    ]
    joints: Joints = {}
    forwards = counter = 0
    while frontier:
        _, _, key_path, spellings = heapq.heappop(frontier)
        mass = torch.zeros(len(keys.names), dtype=torch.float64)
        rows = []
        for path, logprob in spellings:
            # float64, as the engine sums paths (next-token log-probabilities are float32)
            row = backend.next_logprobs([[*prompt, *path]])[0].double() + logprob
            forwards += 1
            mass.index_add_(0, keys.of_token, row.exp())
            rows.append((path, row))
        for key_id in torch.nonzero(mass >= CUTOFF).flatten().tolist():
            joint, key = float(mass[key_id]), keys.names[key_id]
            joints[(*key_path, key)] = joint
            if len(key_path) + 1 >= DEPTH or key == EOS_KEY:
                continue
            tokens = keys.tokens(key_id).tolist()
            children = [
                ((*path, t), float(row[t]))
                for path, row in rows
                for t in tokens
                if float(row[t].exp()) >= SPELLING_SHARE * joint
            ]
            counter += 1
            heapq.heappush(frontier, (-joint, counter, (*key_path, key), children))
    return joints, forwards


@dataclass
class Side:
    name: str
    timing: Timing = field(default_factory=lambda: Timing([]))
    nodes: int = 0  # next-token distributions computed in one run
    joints: Joints = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.nodes / self.timing.best_s

    def to_dict(self) -> dict[str, Any]:
        return {"timing": self.timing.to_dict(), "nodes_expanded": self.nodes, "nodes_per_s": self.rate}


@dataclass
class ModelReport:
    model: str
    engine: Side
    single: Side
    tree_nodes: int = 0
    largest_difference: float = 0.0
    same_nodes: bool = True

    @property
    def speedup(self) -> float:
        return self.engine.rate / self.single.rate

    @property
    def agrees(self) -> bool:
        return self.same_nodes and self.largest_difference <= TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tree_nodes": self.tree_nodes,
            "engine": self.engine.to_dict(),
            "node_by_node": self.single.to_dict(),
            "speedup_nodes_per_s": self.speedup,
            "same_nodes": self.same_nodes,
            "largest_relative_difference": self.largest_difference,
        }


def bench_model(name: str, args: argparse.Namespace, progress: Progress) -> ModelReport:
    import modescope
    from modescope.probes.multiverse import step_keys

    with task(progress, f"{name}: loading", None):
        backend = modescope.load(name, device="cpu")
        step_keys(backend, merge=True)  # built once per backend; neither side should pay for it
    report = ModelReport(name, Side("engine"), Side("node by node"))
    sides = [(report.engine, engine_expansion), (report.single, node_by_node_expansion)]
    with task(progress, f"{name}: engine and node by node, interleaved", 2 * (args.repeats + 1)) as advance:
        for attempt in range(args.repeats + 1):
            for side, run in sides:
                gc.collect()
                seconds, (joints, nodes) = timed(functools.partial(run, backend))
                if attempt == 0:  # the warm-up: it pays one-off costs (first passes of each shape, allocations)
                    side.timing.first_call_s = seconds
                else:
                    side.timing.runs_s.append(seconds)
                side.joints, side.nodes = joints, nodes
                advance()
    a, b = report.engine.joints, report.single.joints
    report.tree_nodes = len(a)
    report.same_nodes = set(a) == set(b)
    shared = set(a) & set(b)
    report.largest_difference = max((abs(a[k] - b[k]) / max(b[k], 1e-300) for k in shared), default=0.0)
    del backend
    gc.collect()
    return report


def summary_table(reports: list[ModelReport], env: dict[str, Any]) -> Table:
    title = f"Block multiverse, {PROMPT!r}, depth {DEPTH}, cutoff {CUTOFF} (best of {env['repeats']})"
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    for r in reports:
        table.add_column(r.model, justify="right")
    rows: dict[str, list[str]] = {}
    for r in reports:
        colour = "green" if r.agrees else "red"
        for measure, value in {
            "tree nodes listed": str(r.tree_nodes),
            "nodes expanded (distributions)": f"{r.engine.nodes} / {r.single.nodes}",
            "engine time": detail(r.engine.timing),
            "node-by-node time": detail(r.single.timing),
            "engine nodes / s": f"{r.engine.rate:.1f}",
            "node-by-node nodes / s": f"{r.single.rate:.1f}",
            "speed-up": against(r.speedup >= TARGET, f"{r.speedup:.1f}x (target ≥ {TARGET:.0f}x)"),
            "same tree, joints within 1e-4": f"[{colour}]{r.same_nodes}, {r.largest_difference:.1e}[/]",
        }.items():
            rows.setdefault(measure, []).append(value)
    return add_measure_rows(table, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_options(benchmark_parser(__doc__, repeats=2), argv)
    env = prepare_run(console.status, args.repeats)
    console.print(environment_line(env))
    reports = []
    with progress_bar(console) as progress:
        for name in args.models:
            reports.append(bench_model(name, args, progress))
    warn_if_busy(console, env)
    console.print(summary_table(reports, env))
    figures = {
        "prompt": PROMPT,
        "settings": {"depth": DEPTH, "cutoff": CUTOFF, "merge": True, "batch_size": 64},
        "target_speedup": TARGET,
        "environment": env,
        "models": [r.to_dict() for r in reports],
        "ok": all(r.agrees for r in reports),
    }
    write_figures(args.json, figures, console)
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
