"""Benchmark the frontier: the time one point of the remedy grid takes on a real model, and its parts.

For each model, one point of each kind of remedy — `direct` (plain sampling, the baseline), a sampler
(`min_p=0.1`), a prompt strategy (`vary`), Verbalized Sampling (`verbalized=5`), and, for a model given with a
guide (`--guide MODEL=GUIDE`), base-guided decoding (`guided=0.5`) — runs on 8 prompts of the built-in
open-ended set with n=8 texts of at most 32 tokens per prompt, seed 0, through the chat template where the
model has one. A point's time is split into its three parts, timed apart:

1. sampling: the point's texts for every prompt, all prompts decoded together (`sample_point`);
2. fluency: every text scored under the model given the direct prompt, one teacher-forced batch (`fluency`);
3. measures: embedding diversity (MiniLM, loaded before timing), equivalence classes, distinct-2 (`measure`).

Each point is reported as seconds per point, seconds per prompt, and its ratio to the direct point measured in
the same process (run first and last, the mean of the two being the baseline, so drift hits every point
alike). Verbalized Sampling makes ceil(8 / 5) = 2 generations of up to 5 x 48 tokens per prompt instead of 8 of
32 tokens; base-guided decoding runs two models per step (target: at most 2.2x direct sampling).

Run it with `.venv/bin/python benchmarks/bench_frontier.py [--models ...] [--guide MODEL=GUIDE] [--json PATH]`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from common import (
    benchmark_parser,
    environment_line,
    parse_options,
    prepare_run,
    progress_bar,
    warn_if_busy,
    write_figures,
)

console = Console(highlight=False)
PROMPTS = 8
N = 8
MAX_TOKENS = 32
SEED = 0
POINTS = ["min_p=0.1", "vary", "verbalized=5"]


@dataclass
class PointTiming:
    model: str
    label: str
    sampling_s: float
    fluency_s: float
    measures_s: float
    texts: int

    @property
    def total_s(self) -> float:
        return self.sampling_s + self.fluency_s + self.measures_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"total_s": self.total_s}


def time_point(label: str, backend: Any, guide: Any, prompts: list[str]) -> PointTiming:
    from modescope.metrics.diversity import default_embedder
    from modescope.probes.frontier import FrontierSettings, fluency, measure, sample_point
    from modescope.remedies.grid import RemedyPoint, parse_remedy

    point = RemedyPoint("direct") if label == "direct" else parse_remedy(label)[0]
    settings = FrontierSettings(N, MAX_TOKENS, SEED, embedder=default_embedder())
    started = time.perf_counter()
    found = sample_point(point, backend, prompts, settings, guide)
    sampled = time.perf_counter()
    fluent = fluency(backend, prompts, found, backend)
    scored = time.perf_counter()
    for samples, prompt, value in zip(found, prompts, fluent, strict=True):
        measure(samples, prompt, settings, value)
    measured = time.perf_counter()
    texts = sum(len(s.texts) for s in found)
    return PointTiming(backend.name, label, sampled - started, scored - sampled, measured - scored, texts)


def bench_model(name: str, guide_name: str | None, prompts: list[str], progress: Any) -> list[PointTiming]:
    from modescope.models import load

    backend = load(name)
    if backend.has_chat_template:
        backend = backend.with_chat()
    guide = None
    labels = ["direct", *POINTS]
    if guide_name is not None:
        guide = load(guide_name)
        guide = guide.with_chat() if backend.chat_style is not None and guide.has_chat_template else guide
        labels.append("guided=0.5")
    labels.append("direct")  # again at the end: the baseline is the mean of both direct runs
    task = progress.add_task(f"{name}: points", total=len(labels))
    timings = []
    for label in labels:
        timings.append(time_point(label, backend, guide, prompts))
        progress.advance(task)
    progress.remove_task(task)
    return timings


def report(timings: list[PointTiming]) -> Table:
    table = Table(
        title=f"time per frontier point ({PROMPTS} prompts x n={N}, {MAX_TOKENS} tokens)", title_justify="left"
    )
    for column in ("model", "point", "sampling s", "fluency s", "measures s", "total s", "s per prompt", "x direct"):
        table.add_column(column, justify="left" if column in ("model", "point") else "right")
    for model in dict.fromkeys(t.model for t in timings):
        own = [t for t in timings if t.model == model]
        direct = [t.total_s for t in own if t.label == "direct"]
        baseline = sum(direct) / len(direct)
        for t in own[:-1]:  # the closing direct run is only part of the baseline
            table.add_row(
                model,
                t.label,
                f"{t.sampling_s:.1f}",
                f"{t.fluency_s:.1f}",
                f"{t.measures_s:.1f}",
                f"{t.total_s:.1f}",
                f"{t.total_s / PROMPTS:.2f}",
                f"{t.total_s / baseline:.2f}",
            )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, repeats=1)
    parser.add_argument("--guide", action="append", default=[], metavar="MODEL=GUIDE", help="add a guided point")
    args = parse_options(parser, argv)
    env = prepare_run(console.status, args.repeats)
    guides = dict(g.split("=", 1) for g in args.guide)
    models = list(dict.fromkeys([*args.models, *guides]))
    from modescope.metrics.diversity import default_embedder
    from modescope.suites.prompt_sets import load_prompts_file

    items = load_prompts_file("open-ended")
    prompts = [items[k].text for k in range(0, len(items), len(items) // PROMPTS)][:PROMPTS]
    with console.status("loading the MiniLM embedder"):
        default_embedder()
    console.print(
        f"{len(models)} models, {PROMPTS} prompts, n={N}, {MAX_TOKENS} tokens, seed {SEED}; {environment_line(env)}"
    )
    timings: list[PointTiming] = []
    with progress_bar(console) as progress:
        for name in models:
            timings += bench_model(name, guides.get(name), prompts, progress)
    warn_if_busy(console, env)
    console.print(report(timings))
    figures = {
        "settings": {"prompts": prompts, "n": N, "max_tokens": MAX_TOKENS, "seed": SEED},
        "environment": env,
        "points": [t.to_dict() for t in timings],
    }
    write_figures(args.json, figures, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
