"""Benchmark batching across prompts: n samples of each of many prompts, one prompt at a time vs all together.

For each model it draws n=8 continuations of exactly 32 new tokens at temperature 1.0, seed 0, with per-token
records (top-10 alternatives), for each of 20 prompts (questions of different lengths, through the chat
template where the model has one, else as "Q: ...\\nA:"), two ways:

1. baseline, one prompt at a time: `generate(backend, ids, n=8, ...)` for each prompt in turn, which is what a
   probe over a prompt set did before batching (each prompt's 8 rows share its KV cache);
2. batched: `generate_groups(backend, prompts, n=8, ...)`: all 20 x 8 = 160 rows decoded together (left-padded
   prompts, one forward pass per step for every prompt), each prompt on its own generator seeded with 0.

Equal work on both sides: EOS is turned off (the backend is a shallow copy whose vocabulary lists no EOS id, as
in bench_sample.py), so every row generates exactly 32 tokens on both sides.

The sides should give the same samples (the contract of `generate_groups`). The script reports for how many
prompts every token agrees, and the largest raw log-probability difference over positions where both sides
chose the same token so far. In float32 on CPU a handful of prompts can differ: the matmul kernels round a row
by its place in the batch (~3e-5 nats), and an inverse-CDF draw that lands in the low-probability tail of the
vocabulary then picks a neighbouring token; tests/unit/test_batched_prompts.py checks exact agreement in float64.

Timings are the best of --repeats runs per side, interleaved (baseline, batched, baseline, ...) after one short
untimed warm-up; the ratio is baseline time / batched time. Memory is the peak RSS of the process during each
run (sampled every 5 ms) and its increase over the RSS just before the run.

Run it with `.venv/bin/python benchmarks/bench_batched_prompts.py [--models ...] [--repeats N] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench_sample import PeakRSS
from common import (
    Timing,
    add_measure_rows,
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
    from modescope.engine.decode import Continuation
    from modescope.models.hf import HFBackend

QUESTIONS = [
    "Are bugs real?",
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Name a colour.",
    "Tell me a joke about programmers.",
    "Why is the sky blue?",
    "Give me three tips for sleeping better at night, and explain why each one works.",
    "What is 17 times 23?",
    "Describe your ideal weekend.",
    "Translate 'good morning' into Spanish.",
    "Suggest a name for a pet turtle.",
    "Is it better to rent or to buy a house? Weigh the main arguments on both sides.",
    "What happens when you mix baking soda and vinegar?",
    "Pick a random number between 1 and 100.",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "What should I cook for dinner tonight?",
    "Explain recursion to a five-year-old.",
    "Hi!",
    "List the planets of the solar system in order from the sun, with one fact about each.",
    "What is your favourite book and why?",
]
N = 8
MAX_TOKENS = 32
TEMPERATURE = 1.0
SEED = 0
TOP_K_ALTERNATIVES = 10

console = Console()
Groups = list[list["Continuation"]]


@dataclass
class Side:
    name: str
    timing: Timing = field(default_factory=lambda: Timing([]))
    peak_rss: list[int] = field(default_factory=list)  # bytes, per timed run
    rss_increase: list[int] = field(default_factory=list)
    forward_calls: int = 0
    groups: Groups = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        tokens = sum(len(c.tokens) for g in self.groups for c in g)
        data: dict[str, Any] = {"timing": self.timing.to_dict(), "tokens": tokens, "forward_calls": self.forward_calls}
        return data | {"peak_rss_bytes": self.peak_rss, "rss_increase_bytes": self.rss_increase}


@dataclass
class Report:
    model: str
    prompt_tokens: list[int]
    baseline: Side
    batched: Side
    agreement: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.baseline.timing.best_s / self.batched.timing.best_s

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.model, "prompt_tokens": self.prompt_tokens, "speedup": self.speedup}
        data |= {"baseline": self.baseline.to_dict(), "batched": self.batched.to_dict()}
        return data | {"agreement": self.agreement} | self.extra


def without_eos(backend: HFBackend) -> HFBackend:
    """A shallow copy whose vocabulary has no EOS id, so every row generates MAX_TOKENS tokens on both sides."""
    vocab = copy.copy(backend.vocab)
    vocab.eos_ids = frozenset()
    clone = copy.copy(backend)
    clone.vocab = vocab
    return clone


def options() -> dict[str, Any]:
    from modescope.engine.samplers import SamplerSettings

    sampler = SamplerSettings.make(temperature=TEMPERATURE)
    return {"max_tokens": MAX_TOKENS, "sampler": sampler, "top_k_alternatives": TOP_K_ALTERNATIVES, "seed": SEED}


def one_at_a_time(backend: HFBackend, prompts: Sequence[list[int]]) -> Groups:
    from modescope.engine.decode import generate

    return [generate(backend, p, N, **options()) for p in prompts]


def batched(backend: HFBackend, prompts: Sequence[list[int]]) -> Groups:
    from modescope.engine.decode import generate_groups

    return generate_groups(backend, prompts, N, **options())


def measure(side: Side, runner: Callable[..., Groups], backend: HFBackend, prompts: Sequence[list[int]]) -> None:
    side.groups = []
    gc.collect()  # free the previous run's results before measuring this one's memory
    backend.stats.calls = 0
    with PeakRSS() as rss:
        seconds, side.groups = timed(lambda: runner(backend, prompts))
    side.timing.runs_s.append(seconds)
    side.peak_rss.append(rss.peak)
    side.rss_increase.append(rss.increase)
    side.forward_calls = backend.stats.calls


def agreement(baseline: Groups, batched: Groups) -> dict[str, Any]:
    """Prompts whose every token agrees, and the largest raw log-probability difference while tokens agree."""
    same, worst = 0, 0.0
    for ours, theirs in zip(batched, baseline, strict=True):
        ids = [[t.id for t in c.tokens] for c in ours]
        same += ids == [[t.id for t in c.tokens] for c in theirs]
        for a, b in zip(ours, theirs, strict=True):
            for x, y in zip(a.tokens, b.tokens, strict=True):
                if x.id != y.id:
                    break
                worst = max(worst, abs(x.raw_logprob - y.raw_logprob))
    return {"prompts_identical": same, "prompts": len(baseline), "max_abs_raw_logprob_diff": worst}


def bench_model(name: str, args: argparse.Namespace, progress: Progress) -> Report:
    import modescope
    from modescope.engine.decode import generate
    from modescope.models.hf import HFBackend

    with task(progress, f"{name}: loading", None):
        loaded = modescope.load(name, device="cpu")
    if not isinstance(loaded, HFBackend):
        raise SystemExit(f"{name} did not load as a transformers model")
    backend = without_eos(loaded)
    chat = backend.has_chat_template
    prompts = [backend.prompt_ids(modescope.ChatPrompt(q) if chat else f"Q: {q}\nA:") for q in QUESTIONS]
    report = Report(name, [len(p) for p in prompts], Side("one prompt at a time"), Side("generate_groups"))
    report.extra = {"dtype": str(next(backend.model.parameters()).dtype), "vocab_size": backend.vocab.size}
    with task(progress, f"{name}: warm-up", None):
        generate(backend, prompts[0], 2, max_tokens=2, temperature=1.0, seed=0)
    sides: list[tuple[Side, Callable[..., Groups]]] = [(report.baseline, one_at_a_time), (report.batched, batched)]
    with task(progress, f"{name}: one at a time and batched, interleaved", 2 * args.repeats) as advance:
        for _ in range(args.repeats):
            for side, runner in sides:
                measure(side, runner, backend, prompts)
                advance()
    report.agreement = agreement(report.baseline.groups, report.batched.groups)
    report.baseline.groups = report.batched.groups = []
    del backend, loaded
    gc.collect()
    return report


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def summary_table(reports: list[Report], env: dict[str, Any]) -> Table:
    title = (
        f"{len(QUESTIONS)} prompts x n={N} x {MAX_TOKENS} tokens, temperature {TEMPERATURE:g}, cpu, "
        f"best of {env['repeats']}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    for r in reports:
        table.add_column(f"{r.model} ({r.extra['dtype']}, vocab {r.extra['vocab_size']})", justify="right")
    rows: dict[str, list[str]] = {}
    for r in reports:
        a = r.agreement
        for measure, value in {
            "one prompt at a time": detail(r.baseline.timing),
            "generate_groups": detail(r.batched.timing),
            "speed-up (one at a time / batched)": f"[green]{r.speedup:.2f}x[/]",
            "forward calls, one at a time / batched": f"{r.baseline.forward_calls} / {r.batched.forward_calls}",
            "peak RSS, one at a time": gib(max(r.baseline.peak_rss)),
            "peak RSS, batched": gib(max(r.batched.peak_rss)),
            "peak RSS increase, one at a time": gib(max(r.baseline.rss_increase)),
            "peak RSS increase, batched": gib(max(r.batched.rss_increase)),
            "prompts with identical samples": f"{a['prompts_identical']} / {a['prompts']}",
            "max |raw log-prob diff| (same tokens)": f"{a['max_abs_raw_logprob_diff']:.1e}",
        }.items():
            rows.setdefault(measure, []).append(value)
    return add_measure_rows(table, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_options(benchmark_parser(__doc__, repeats=1), argv)
    env = prepare_run(console.status, args.repeats)
    console.print(
        f"{len(QUESTIONS)} prompts, n={N} continuations of {MAX_TOKENS} tokens at temperature {TEMPERATURE:g}, "
        f"seed {SEED}, top-{TOP_K_ALTERNATIVES} alternatives, EOS off; {environment_line(env)}"
    )
    reports = []
    with progress_bar(console) as progress:
        for name in args.models:
            reports.append(bench_model(name, args, progress))
    warn_if_busy(console, env)
    console.print(summary_table(reports, env))
    figures = {
        "settings": {"prompts": QUESTIONS, "n": N, "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE, "seed": SEED},
        "timing": f"best of {args.repeats}, interleaved, after a short warm-up",
        "environment": env,
        "models": [r.to_dict() for r in reports],
    }
    write_figures(args.json, figures, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
