"""Benchmark the attractor experiment's batched regeneration against regenerating one perturbation at a time.

For each default model it runs the essay's experiment on the plain prompt "Q: Are bugs real?\\nA:" (both
default models get the plain prompt here): the greedy mainline of 48 tokens, then token swaps at 5 evenly
spaced mainline positions with the 2nd and 3rd most likely alternatives
(`AttractorPlan(swap_positions=5, alternatives=3)`), 10 perturbations in all. The perturbed prefixes and their
budgets are built exactly as `modescope.probes.attractors.run_attractor` builds them (the mainline `generate`
call and `plan_perturbations` are called here, once per model, so both sides regenerate the very same
prefixes):

    prefix = prompt_ids + mainline_ids[:position] + inserted
    budget = max(1, len(mainline_ids) - position - len(inserted))

Then every prefix is regenerated greedily (`top_k_alternatives=1`) two ways:

1. batched, as `run_attractor` does: ONE `generate_many(backend, prefixes, max_tokens=max(budgets))` call,
   each continuation then truncated to its own budget;
2. one at a time: a `generate(backend, prefix, max_tokens=budget)` call per prefix.

Both sides must give the same greedy token ids for every perturbation. Padded batches compute in slightly
different float order, which can flip a near-tie, so mismatches are counted and reported; the script exits
with status 1 only when more than 1 in 10 perturbations differ.

Timings are the best of --repeats runs per side (the median is reported too), interleaved (batched, one at a
time, batched, ...) so that drift in the machine's speed hits both alike; each side first has one untimed
warm-up run, reported as "first call". The backend's forward statistics (`backend.stats`) give the forward
calls each side makes and the token positions it forwards (padding included).

Run it with `.venv/bin/python benchmarks/bench_attractor.py [--models ...] [--repeats N] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from common import (
    Timing,
    add_measure_rows,
    benchmark_parser,
    detail,
    environment_line,
    finish,
    parse_options,
    prepare_run,
    progress_bar,
    task,
    timed,
    warn_if_busy,
)

if TYPE_CHECKING:
    from modescope.models.base import Backend

QUESTION = "Are bugs real?"
PLAIN_PROMPT = f"Q: {QUESTION}\nA:"
MAX_TOKENS = 48
SWAP_POSITIONS = 5
ALTERNATIVES = 3
MISMATCH_LIMIT = 0.1  # fail when more than this share of the perturbations differ between the two sides

console = Console()


# --- measurements ------------------------------------------------------------------------------------------


@dataclass
class SideRun:
    """Every run of one side on one model."""

    name: str
    timing: Timing = field(default_factory=lambda: Timing([]))
    calls: int = 0  # forward calls in one run
    tokens: int = 0  # token positions forwarded in one run (padding included)
    generated: int = 0  # tokens kept (after truncation to each budget)
    ids: list[list[int]] = field(default_factory=list)  # the last run's greedy ids, per perturbation

    def to_dict(self) -> dict[str, Any]:
        return {
            "timing": self.timing.to_dict(),
            "forward_calls": self.calls,
            "tokens_forwarded": self.tokens,
            "tokens_generated": self.generated,
            "generated_tokens_per_s": self.generated / self.timing.best_s,
        }


@dataclass
class ModelReport:
    model: str
    prompt_tokens: int
    mainline: str
    mainline_tokens: int
    labels: list[str]
    budgets: list[int]
    prefix_lengths: list[int]
    batched: SideRun
    single: SideRun
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """One-at-a-time time / batched time."""
        return self.single.timing.best_s / self.batched.timing.best_s

    @property
    def agrees(self) -> bool:
        return len(self.mismatches) <= MISMATCH_LIMIT * len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.model, "prompt_tokens": self.prompt_tokens}
        data |= {"mainline": self.mainline, "mainline_tokens": self.mainline_tokens}
        data |= {
            "perturbations": [
                {"label": label, "prefix_tokens": length, "budget": budget}
                for label, length, budget in zip(self.labels, self.prefix_lengths, self.budgets, strict=True)
            ]
        }
        data |= {"batched": self.batched.to_dict(), "one_at_a_time": self.single.to_dict()}
        data |= {"speedup": self.speedup, "mismatches": self.mismatches, "agrees": self.agrees}
        return data | self.extra


Runner = Callable[["Backend", list[list[int]], list[int]], list[list[int]]]


def run_batched(backend: Backend, prefixes: list[list[int]], budgets: list[int]) -> list[list[int]]:
    """As `run_attractor`: one `generate_many` call, each continuation truncated to its budget."""
    from modescope.engine.decode import generate_many

    continuations = generate_many(backend, prefixes, max_tokens=max(budgets), top_k_alternatives=1)
    return [[t.id for t in c.tokens[:budget]] for c, budget in zip(continuations, budgets, strict=True)]


def run_single(backend: Backend, prefixes: list[list[int]], budgets: list[int]) -> list[list[int]]:
    """One `generate` call per prefix, each with its own budget."""
    from modescope.engine.decode import generate

    ids = []
    for prefix, budget in zip(prefixes, budgets, strict=True):
        (continuation,) = generate(backend, prefix, max_tokens=budget, top_k_alternatives=1)
        ids.append([t.id for t in continuation.tokens])
    return ids


def measure(side: SideRun, runner: Runner, backend: Backend, prefixes: list[list[int]], budgets: list[int]) -> None:
    """One run of `side`: timed, with the forward calls and tokens it made; the first call is the warm-up."""
    gc.collect()
    calls, tokens = backend.stats.calls, backend.stats.tokens
    seconds, ids = timed(lambda: runner(backend, prefixes, budgets))
    side.calls, side.tokens = backend.stats.calls - calls, backend.stats.tokens - tokens
    side.ids, side.generated = ids, sum(len(i) for i in ids)
    if side.timing.first_call_s is None:
        side.timing.first_call_s = seconds
    else:
        side.timing.runs_s.append(seconds)


def compare(
    backend: Backend, labels: list[str], batched: list[list[int]], single: list[list[int]]
) -> list[dict[str, Any]]:
    """The perturbations whose greedy ids differ between the two sides, with where they part."""
    found = []
    for label, a, b in zip(labels, batched, single, strict=True):
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            found.append(
                {
                    "label": label,
                    "first_difference_at": at,
                    "batched": backend.decode(a),
                    "one_at_a_time": backend.decode(b),
                }
            )
    return found


def bench_model(name: str, args: argparse.Namespace, progress: Progress) -> ModelReport:
    import modescope
    from modescope.engine.decode import generate
    from modescope.probes.attractors import AttractorPlan, plan_perturbations

    with task(progress, f"{name}: loading", None):
        backend = modescope.load(name, device="cpu")
    plan = AttractorPlan(swap_positions=SWAP_POSITIONS, alternatives=ALTERNATIVES)
    with task(progress, f"{name}: mainline and perturbations", None):
        prompt_ids = backend.prompt_ids(PLAIN_PROMPT)
        (mainline,) = generate(
            backend, prompt_ids, max_tokens=MAX_TOKENS, top_k_alternatives=max(10, plan.alternatives)
        )
        perturbations = plan_perturbations(backend, prompt_ids, mainline, plan)
    ids = [t.id for t in mainline.tokens]
    prefixes = [prompt_ids + ids[: p.position] + p.inserted for p in perturbations]
    budgets = [max(1, len(ids) - p.position - len(p.inserted)) for p in perturbations]
    if not prefixes:
        raise SystemExit(f"{name}: the plan gave no perturbations (mainline of {len(ids)} tokens)")
    report = ModelReport(
        name,
        len(prompt_ids),
        mainline.text,
        len(ids),
        [p.label for p in perturbations],
        budgets,
        [len(p) for p in prefixes],
        SideRun("batched"),
        SideRun("one at a time"),
    )
    model = getattr(backend, "model", None)
    if model is not None:
        report.extra["dtype"] = str(next(model.parameters()).dtype)
    sides: list[tuple[SideRun, Runner]] = [(report.batched, run_batched), (report.single, run_single)]
    with task(progress, f"{name}: batched and one at a time, interleaved", 2 * (args.repeats + 1)) as advance:
        for _ in range(args.repeats + 1):
            for side, runner in sides:
                measure(side, runner, backend, prefixes, budgets)
                advance()
    report.mismatches = compare(backend, report.labels, report.batched.ids, report.single.ids)
    del backend
    gc.collect()
    return report


# --- output ------------------------------------------------------------------------------------------------


def model_table(report: ModelReport) -> Table:
    batched, single = report.batched, report.single
    title = (
        f"{report.model} (cpu, {report.extra.get('dtype', '?')}; {report.prompt_tokens} prompt tokens; mainline "
        f"{report.mainline_tokens} tokens; {len(report.labels)} perturbations; best of {len(batched.timing.runs_s)})"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("batched (generate_many)", justify="right")
    table.add_column("one at a time (generate)", justify="right")
    table.add_row("time", detail(batched.timing), detail(single.timing))
    table.add_row("forward calls", f"{batched.calls}", f"{single.calls}")
    table.add_row("token positions forwarded", f"{batched.tokens}", f"{single.tokens}")
    table.add_row("tokens kept (within budgets)", f"{batched.generated}", f"{single.generated}")
    rate = f"{batched.generated / batched.timing.best_s:.1f}", f"{single.generated / single.timing.best_s:.1f}"
    table.add_row("kept tokens / s", *rate)
    table.add_section()
    table.add_row("speed-up one-at-a-time / batched", f"{report.speedup:.2f}x", "")
    colour = "green" if not report.mismatches else ("yellow" if report.agrees else "red")
    table.add_row("greedy ids differ", f"[{colour}]{len(report.mismatches)} of {len(report.labels)}[/]", "")
    return table


def summary_table(reports: list[ModelReport], env: dict[str, Any]) -> Table:
    title = (
        f"Summary ({MAX_TOKENS}-token mainline, swaps at {SWAP_POSITIONS} positions with k=2..{ALTERNATIVES}, "
        f"best of {env['repeats']})"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    for r in reports:
        table.add_column(r.model, justify="right")
    rows: dict[str, list[str]] = {}
    for r in reports:
        colour = "green" if not r.mismatches else ("yellow" if r.agrees else "red")
        for measure, value in {
            "batched": f"{r.batched.timing.best_s:.2f} s",
            "one at a time": f"{r.single.timing.best_s:.2f} s",
            "speed-up": f"{r.speedup:.2f}x",
            "forward calls batched / single": f"{r.batched.calls} / {r.single.calls}",
            "tokens forwarded batched / single": f"{r.batched.tokens} / {r.single.tokens}",
            "greedy ids differ": f"[{colour}]{len(r.mismatches)} of {len(r.labels)}[/]",
        }.items():
            rows.setdefault(measure, []).append(value)
    return add_measure_rows(table, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse_options(benchmark_parser(__doc__, repeats=2), argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = prepare_run(console.status, args.repeats)
    console.print(
        f"prompt {PLAIN_PROMPT!r}: greedy mainline of {MAX_TOKENS} tokens, swaps at {SWAP_POSITIONS} positions "
        f"(k=2..{ALTERNATIVES}); {environment_line(env)}"
    )

    reports: list[ModelReport] = []
    with progress_bar(console) as progress:
        for name in args.models:
            report = bench_model(name, args, progress)
            reports.append(report)
            progress.console.print(model_table(report))
            for m in report.mismatches:
                progress.console.print(
                    f"  [yellow]differs[/] {m['label']} from token {m['first_difference_at']}:\n"
                    f"    batched:       {m['batched']!r}\n    one at a time: {m['one_at_a_time']!r}"
                )
    warn_if_busy(console, env)
    console.print(summary_table(reports, env))

    failed = [r.model for r in reports if not r.agrees]
    figures = {
        "prompt": PLAIN_PROMPT,
        "settings": {
            "max_tokens": MAX_TOKENS,
            "swap_positions": SWAP_POSITIONS,
            "alternatives": ALTERNATIVES,
            "top_k_alternatives": 1,
            "greedy": True,
        },
        "timing": f"best of {args.repeats}, interleaved (median and every run included)",
        "mismatch_limit": MISMATCH_LIMIT,
        "environment": env,
        "models": [r.to_dict() for r in reports],
        "ok": not failed,
    }
    failure = (
        f"batched and one-at-a-time greedy ids differ for more than {MISMATCH_LIMIT:.0%} of the perturbations on "
        + ", ".join(failed)
    )
    success = "batched and one-at-a-time regeneration agree (within the mismatch limit)"
    return finish(args.json, figures, console, failure if failed else None, success)


if __name__ == "__main__":
    sys.exit(main())
