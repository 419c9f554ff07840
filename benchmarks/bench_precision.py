"""Benchmark reduced precision: bfloat16 weights against float32 (the reference) on the CPU, speed and error.

Each default model is loaded twice, in float32 and in bfloat16 (`modescope.load(name, dtype=...)`), and both
copies are measured in the same run, their timed runs interleaved so that drift in the machine's speed hits
both alike:

1. the exact distribution over the integers 0..100 on examples/random-integer.txt (the call bench_dist.py
   makes, every tokenization summed): the time of each, the speed ratio, and bfloat16's error against float32:
   the max relative error of the absolute masses over the 101 integers, the same over the top integers that
   carry 90% of float32's mass within the set, the total variation distance between the two distributions
   within the set, and each top-1;
2. sampling as bench_sample.py does it (n=32 continuations of 48 tokens at temperature 1 from "Are bugs
   real?", seed 0, EOS off, top-10 alternatives recorded): the time of each, the speed ratio, and how many
   continuations bfloat16 drew token for token like float32 (same seed). Then float32's continuations are
   rescored by teacher forcing (`modescope.engine.score.continuation_logprobs`) under both copies, and each
   token's error is reported: |Δ log p| in nats and the relative probability error |p_bf16 / p_fp32 - 1|
   (median, 99th percentile, max), and |Δ log p| of whole continuations. Rescoring float32's continuations
   under float32 itself, against what the sampler recorded, gives float32's own floor (the rounding of a
   different batch shape), so bfloat16's error can be read against it.

Verdict: bfloat16 would become the default on the CPU only if its error were below 1e-3 relative on both
measures, the max over the top integers and the 99th percentile per token, on every model; otherwise
float32 stays the default and bfloat16 remains an option whose results are labelled. Checks (exit status 1):
each copy's results record the precision they were computed in.

Run it with `.venv/bin/python benchmarks/bench_precision.py [--models ...] [--repeats N] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench_dist import HI, LO, PROMPT_FILE
from bench_sample import MAX_TOKENS, PLAIN_PROMPT, QUESTION, SEED, N, run_modescope, without_eos
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
    from modescope.models.hf import HFBackend

PRECISIONS = ("float32", "bfloat16")  # the reference first
TOP_MASS = 0.9  # the top integers: the fewest that carry this share of float32's mass within the set
VERDICT_LIMIT = 1e-3  # relative error below which bfloat16 could be the CPU default

T = TypeVar("T")
console = Console()


# --- measurements ------------------------------------------------------------------------------------------


@dataclass
class DistRun:
    timing: Timing
    masses: list[float]  # absolute, candidate order
    probs: list[float]  # within the set
    top1: str
    recorded: str | None  # the precision the result says it was computed in


@dataclass
class SampleRun:
    timing: Timing
    tokens: list[list[int]]
    raw_logprobs: list[list[float]]  # as the sampler recorded them (nats)
    recorded: str | None


@dataclass
class ModelReport:
    model: str
    dist: dict[str, DistRun] = field(default_factory=dict)
    sample: dict[str, SampleRun] = field(default_factory=dict)
    mass: dict[str, Any] = field(default_factory=dict)  # bfloat16's mass errors
    tokens: dict[str, Any] = field(default_factory=dict)  # bfloat16's per-token errors, and float32's floor
    same_samples: int = 0  # continuations bfloat16 drew exactly like float32

    def ratio(self, runs: dict[str, Any]) -> float:
        """float32 time / bfloat16 time: above 1, bfloat16 is faster."""
        return float(runs["float32"].timing.best_s / runs["bfloat16"].timing.best_s)

    @property
    def error(self) -> float:
        """The verdict's measure: the worse of the top integers' max and the per-token 99th percentile."""
        return max(self.mass["top_max_rel"], self.tokens["bfloat16"]["rel_prob_p99"])

    @property
    def labelled(self) -> bool:
        runs = [*self.dist.items(), *self.sample.items()]
        return all(run.recorded == precision for precision, run in runs)

    def to_dict(self) -> dict[str, Any]:
        dist = {p: {"timing": r.timing.to_dict(), "top1": r.top1, "recorded": r.recorded} for p, r in self.dist.items()}
        sample = {p: {"timing": r.timing.to_dict(), "recorded": r.recorded} for p, r in self.sample.items()}
        return {
            "model": self.model,
            "distribution": dist | {"speed_ratio": self.ratio(self.dist), "masses": self._masses()} | self.mass,
            "sampling": sample | {"speed_ratio": self.ratio(self.sample), "same_samples": self.same_samples},
            "token_errors": self.tokens,
            "error": self.error,
            "labelled": self.labelled,
        }

    def _masses(self) -> dict[str, list[float]]:
        return {p: r.masses for p, r in self.dist.items()}


def interleaved(steps: dict[str, Callable[[], T]], repeats: int, advance: Callable[[], None]) -> dict[str, Timing]:
    """Each step once untimed (one-off costs), then `repeats` timed rounds, the steps taking turns."""
    timings = {name: Timing([]) for name in steps}
    for round_ in range(repeats + 1):
        for name, step in steps.items():
            seconds, _ = timed(step)
            if round_ == 0:
                timings[name].first_call_s = seconds
            else:
                timings[name].runs_s.append(seconds)
            advance()
    return timings


def last_results(step: Callable[[], T]) -> tuple[Callable[[], T], list[T]]:
    """`step`, keeping only what its latest call returned (the runs of one step give the same result)."""
    kept: list[T] = []

    def run() -> T:
        kept[:] = [step()]
        return kept[0]

    return run, kept


def measure_distribution(
    backends: dict[str, HFBackend], prompt: str, candidates: list[str], repeats: int, progress: Progress
) -> dict[str, DistRun]:
    import modescope

    runs = {p: last_results(lambda b=b: modescope.distribution(b, prompt, candidates)) for p, b in backends.items()}
    with task(progress, "distribution 0..100, float32 and bfloat16", 2 * (repeats + 1)) as advance:
        timings = interleaved({p: run for p, (run, _) in runs.items()}, repeats, advance)
    found = {}
    for precision, (_, kept) in runs.items():
        result = kept[0].results[0]
        masses, probs = [o.mass for o in result.outcomes], [o.prob for o in result.outcomes]
        recorded = result.capabilities.get("precision")
        found[precision] = DistRun(timings[precision], masses, probs, result.top1, recorded)
    return found


def mass_errors(reference: DistRun, other: DistRun, candidates: list[str]) -> dict[str, Any]:
    """bfloat16's masses against float32's: relative errors over all integers and over the top ones, and the
    total variation distance between the two distributions within the set."""
    relative = [abs(o - r) / r if r > 0 else math.inf for r, o in zip(reference.masses, other.masses, strict=True)]
    order = sorted(range(len(candidates)), key=lambda k: -reference.probs[k])
    top, carried = [], 0.0
    for k in order:
        if carried >= TOP_MASS:
            break
        top.append(k)
        carried += reference.probs[k]
    worst = max(range(len(relative)), key=lambda k: relative[k])
    worst_top = max(top, key=lambda k: relative[k])
    return {
        "max_rel": relative[worst],
        "max_rel_at": candidates[worst],
        "top_count": len(top),
        "top_max_rel": relative[worst_top],
        "top_max_rel_at": candidates[worst_top],
        "top_median_rel": statistics.median(relative[k] for k in top),
        "tv": 0.5 * math.fsum(abs(p - q) for p, q in zip(reference.probs, other.probs, strict=True)),
        "coverage_rel": abs(math.fsum(other.masses) / math.fsum(reference.masses) - 1),
    }


def measure_sampling(backends: dict[str, HFBackend], repeats: int, progress: Progress) -> dict[str, SampleRun]:
    """bench_sample.py's modescope side on each copy (EOS off, so every row has 48 tokens)."""
    import modescope

    views = {p: without_eos(b) for p, b in backends.items()}
    first = next(iter(views.values()))
    prompt = modescope.ChatPrompt(QUESTION) if first.has_chat_template else PLAIN_PROMPT
    ids = first.prompt_ids(prompt)
    runs = {p: last_results(lambda v=v: run_modescope(v, ids)[0]) for p, v in views.items()}
    with task(progress, f"sampling n={N} x {MAX_TOKENS}, float32 and bfloat16", 2 * (repeats + 1)) as advance:
        timings = interleaved({p: run for p, (run, _) in runs.items()}, repeats, advance)
    found = {}
    for precision, (_, kept) in runs.items():
        tokens = [[t.id for t in c.tokens] for c in kept[0]]
        raw = [[t.raw_logprob for t in c.tokens] for c in kept[0]]
        recorded = backends[precision].capabilities.metadata()["precision"]
        found[precision] = SampleRun(timings[precision], tokens, raw, recorded)
    return found


def token_errors(reference: list[list[float]], other: list[list[float]]) -> dict[str, float]:
    """Per-token |Δ log p| (nats) and relative probability error |p / p_ref - 1|, and per continuation |Δ log p|."""
    deltas = [o - r for ref, oth in zip(reference, other, strict=True) for r, o in zip(ref, oth, strict=True)]
    absolute = sorted(abs(d) for d in deltas)
    relative = sorted(abs(math.expm1(d)) for d in deltas)
    sequences = sorted(abs(math.fsum(o) - math.fsum(r)) for r, o in zip(reference, other, strict=True))
    return {
        "tokens": len(deltas),
        "abs_logprob_median": statistics.median(absolute),
        "abs_logprob_p99": percentile(absolute, 0.99),
        "abs_logprob_max": absolute[-1],
        "rel_prob_median": statistics.median(relative),
        "rel_prob_p99": percentile(relative, 0.99),
        "rel_prob_max": relative[-1],
        "sequence_abs_logprob_median": statistics.median(sequences),
        "sequence_abs_logprob_max": sequences[-1],
    }


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def rescore(backends: dict[str, HFBackend], reference: SampleRun, progress: Progress) -> dict[str, dict[str, float]]:
    """float32's continuations scored by teacher forcing under each copy: bfloat16's error against float32's
    rescoring, and float32's floor (its rescoring against its own records)."""
    import modescope
    from modescope.engine.score import continuation_logprobs

    first = backends["float32"]
    prompt = modescope.ChatPrompt(QUESTION) if first.has_chat_template else PLAIN_PROMPT
    prompts = [first.prompt_ids(prompt)] * len(reference.tokens)
    with task(progress, "rescoring float32's samples under both", None):
        scores = {p: continuation_logprobs(b, prompts, reference.tokens) for p, b in backends.items()}
    return {
        "bfloat16": token_errors(scores["float32"], scores["bfloat16"]),
        "float32_floor": token_errors(reference.raw_logprobs, scores["float32"]),
    }


def bench_model(name: str, args: argparse.Namespace, progress: Progress) -> ModelReport:
    import modescope
    from modescope.models.hf import HFBackend

    with task(progress, f"{name}: loading in float32 and bfloat16", None):
        backends = {p: modescope.load(name, device="cpu", dtype=p) for p in PRECISIONS}
    if not all(isinstance(b, HFBackend) for b in backends.values()):
        raise SystemExit(f"{name} did not load as a transformers model; only in-process models have a dtype")
    loaded: dict[str, HFBackend] = {p: b for p, b in backends.items() if isinstance(b, HFBackend)}
    report = ModelReport(name)
    prompt, candidates = PROMPT_FILE.read_text(encoding="utf-8"), modescope.integers(LO, HI)
    report.dist = measure_distribution(loaded, prompt, candidates, args.repeats, progress)
    report.mass = mass_errors(report.dist["float32"], report.dist["bfloat16"], candidates)
    report.sample = measure_sampling(loaded, args.repeats, progress)
    report.same_samples = sum(
        a == b for a, b in zip(report.sample["float32"].tokens, report.sample["bfloat16"].tokens, strict=True)
    )
    report.tokens = rescore(loaded, report.sample["float32"], progress)
    del backends, loaded
    gc.collect()
    return report


# --- output ------------------------------------------------------------------------------------------------


def model_table(report: ModelReport) -> Table:
    dist, sample, mass = report.dist, report.sample, report.mass
    bf, floor = report.tokens["bfloat16"], report.tokens["float32_floor"]
    title = f"{report.model} (cpu; best of {len(dist['float32'].timing.runs_s)}; ratio = float32 time / bfloat16 time)"
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("distribution float32", detail(dist["float32"].timing))
    table.add_row("distribution bfloat16", detail(dist["bfloat16"].timing))
    table.add_row("distribution speed ratio", f"{report.ratio(dist):.2f}x")
    table.add_row("mass max rel. error, 101 integers", f"{mass['max_rel']:.2e} (at {mass['max_rel_at']!r})")
    top = f"{mass['top_max_rel']:.2e} (at {mass['top_max_rel_at']!r}; median {mass['top_median_rel']:.1e})"
    table.add_row(f"mass max rel. error, top {mass['top_count']} ({TOP_MASS:.0%} of the mass)", top)
    table.add_row("total variation within the set", f"{mass['tv']:.2e}")
    table.add_row("coverage rel. error", f"{mass['coverage_rel']:.2e}")
    table.add_row("top-1 float32 / bfloat16", f"{dist['float32'].top1!r} / {dist['bfloat16'].top1!r}")
    table.add_section()
    table.add_row(f"sampling {N} x {MAX_TOKENS} float32", detail(sample["float32"].timing))
    table.add_row(f"sampling {N} x {MAX_TOKENS} bfloat16", detail(sample["bfloat16"].timing))
    table.add_row("sampling speed ratio", f"{report.ratio(sample):.2f}x")
    table.add_row("continuations drawn identically (seed 0)", f"{report.same_samples} of {N}")
    table.add_section()
    for label, errors in (("bfloat16 vs float32", bf), ("float32 floor", floor)):
        rel = f"{errors['rel_prob_median']:.1e} / {errors['rel_prob_p99']:.1e} / {errors['rel_prob_max']:.1e}"
        table.add_row(f"{label}: token rel. prob error median / p99 / max", rel)
        nats = f"{errors['abs_logprob_median']:.1e} / {errors['abs_logprob_p99']:.1e} / {errors['abs_logprob_max']:.1e}"
        table.add_row(f"{label}: token |Δ log p| nats median / p99 / max", nats)
        seq = f"{errors['sequence_abs_logprob_median']:.1e} / {errors['sequence_abs_logprob_max']:.1e}"
        table.add_row(f"{label}: continuation |Δ log p| nats median / max", seq)
    return table


def summary_table(reports: list[ModelReport], env: dict[str, Any]) -> Table:
    title = f"Summary: bfloat16 against float32 on the CPU (best of {env['repeats']})"
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    for r in reports:
        table.add_column(r.model, justify="right")
    rows: dict[str, list[str]] = {}
    for r in reports:
        colour = "green" if r.error < VERDICT_LIMIT else "red"
        for measure, value in {
            "distribution speed ratio": f"{r.ratio(r.dist):.2f}x",
            "sampling speed ratio": f"{r.ratio(r.sample):.2f}x",
            "mass max rel. error (101)": f"{r.mass['max_rel']:.1e}",
            "mass max rel. error (top)": f"{r.mass['top_max_rel']:.1e}",
            "total variation": f"{r.mass['tv']:.1e}",
            "token rel. prob error p99": f"{r.tokens['bfloat16']['rel_prob_p99']:.1e}",
            "token |Δ log p| median (nats)": f"{r.tokens['bfloat16']['abs_logprob_median']:.1e}",
            "float32 floor p99": f"{r.tokens['float32_floor']['rel_prob_p99']:.1e}",
            "verdict measure": f"[{colour}]{r.error:.1e}[/]",
        }.items():
            rows.setdefault(measure, []).append(value)
    return add_measure_rows(table, rows)


def verdict(reports: list[ModelReport]) -> str:
    worst = max(r.error for r in reports)
    if worst < VERDICT_LIMIT:
        return (
            f"[green]bfloat16 error {worst:.1e} < {VERDICT_LIMIT:g} relative on every model[/]: it could become the "
            "CPU default"
        )
    return (
        f"[yellow]bfloat16 error up to {worst:.1e} relative, not below {VERDICT_LIMIT:g}[/]: the default stays "
        "float32; --dtype bfloat16 remains an option and its results are labelled reduced precision"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_options(benchmark_parser(__doc__, repeats=2), argv)
    env = prepare_run(console.status, args.repeats)
    console.print(
        f"distribution over {LO}..{HI} on {PROMPT_FILE.name}; sampling n={N} x {MAX_TOKENS} tokens from "
        f"{QUESTION!r}, seed {SEED}; {environment_line(env)}"
    )
    reports: list[ModelReport] = []
    with progress_bar(console) as progress:
        for name in args.models:
            reports.append(bench_model(name, args, progress))
            progress.console.print(model_table(reports[-1]))
    warn_if_busy(console, env)
    console.print(summary_table(reports, env))
    console.print(verdict(reports))
    unlabelled = [r.model for r in reports if not r.labelled]
    figures = {
        "settings": {"candidates": f"{LO}..{HI}", "n": N, "max_tokens": MAX_TOKENS, "seed": SEED, "top_mass": TOP_MASS},
        "verdict_limit": VERDICT_LIMIT,
        "default_may_change": max(r.error for r in reports) < VERDICT_LIMIT,
        "environment": env,
        "models": [r.to_dict() for r in reports],
        "ok": not unlabelled,
    }
    failure = "results without the precision they were computed in: " + ", ".join(unlabelled)
    success = "every result records the precision it was computed in"
    return finish(args.json, figures, console, failure if unlabelled else None, success)


if __name__ == "__main__":
    sys.exit(main())
