"""Benchmark base-guided decoding: sampling a tuned model guided by its base, against sampling it alone.

The pair shares a tokenizer: `smollm2-135m-sentiment-rl` (a LoRA preset of smollm2-135m-instruct) is the tuned
model and `smollm2-135m-instruct` its guide. Both sides draw n=16 continuations of exactly 48 new tokens at
temperature 1.0, seed 0, with per-token records (top-10 alternatives), from "Are bugs real?" through the chat
template:

1. plain: `generate(tuned, ids, n=16, ...)`, one forward pass per step;
2. guided: `generate(guided(tuned, guide, alpha=0.5, mix="geometric"), ids, n=16, ...)`, one forward pass of each
   model per step (each on its own KV cache), their next-token log-probabilities mixed before sampling.

Base-guided decoding does twice the model work, so the guided side should take about twice the plain time; the
target is at most 2.2x (the mixing itself, and its sampling over a whole distribution, staying within 10% of a
step). Equal work on both sides: EOS is turned off (shallow copies whose vocabularies list no EOS id, as in
bench_sample.py), so every row generates exactly 48 tokens.

Timings are medians of --repeats runs per side, interleaved in one process (plain, guided, plain, ...) after one
untimed warm-up each, so that drift in the machine's speed (another process on a shared core) hits both alike;
the best run is reported too. The process's CPU seconds per run are reported beside them: with one torch thread
(OMP_NUM_THREADS=1) they measure the work done, which waiting for a shared core does not inflate. The first
token's recorded log-probability is checked against the mixture of the two models' own first distributions
(1e-6 nats), or the script exits with status 1. With --profile, one extra guided run is profiled and its most
expensive functions are printed.

Run it with `.venv/bin/python benchmarks/bench_guided.py [--repeats N] [--alpha A] [--mix M] [--json PATH]`.
The speed target is reported, not enforced.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import math
import pstats
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from common import (
    Timing,
    add_measure_rows,
    against,
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
    from modescope.models.base import Backend
    from modescope.models.hf import HFBackend

TUNED = "smollm2-135m-sentiment-rl"
GUIDE = "smollm2-135m-instruct"
QUESTION = "Are bugs real?"
N = 16
MAX_TOKENS = 48
TEMPERATURE = 1.0
TOP_K_ALTERNATIVES = 10
SEED = 0
RATIO_TARGET = 2.2  # guided time / plain time, medians
CHECK_LIMIT = 1e-6  # nats

console = Console()


@dataclass
class Side:
    name: str
    timing: Timing = field(default_factory=lambda: Timing([]))
    cpu: Timing = field(default_factory=lambda: Timing([]))  # CPU seconds of this process: less noisy when shared
    forward_calls: int = 0  # per run
    tokens: int = 0
    first: Continuation | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "timing": self.timing.to_dict(),
            "cpu_timing": self.cpu.to_dict(),
            "forward_calls": self.forward_calls,
            "tokens": self.tokens,
        }


def without_eos(backend: HFBackend) -> HFBackend:
    """A shallow copy (same model and tokenizer) whose vocabulary has no EOS id, so no row ends early."""
    vocab = copy.copy(backend.vocab)
    vocab.eos_ids = frozenset()
    clone = copy.copy(backend)
    clone.vocab = vocab
    return clone


def sample(backend: Backend, prompt_ids: list[int]) -> list[Continuation]:
    from modescope.engine.decode import generate

    options = {"max_tokens": MAX_TOKENS, "temperature": TEMPERATURE, "top_k_alternatives": TOP_K_ALTERNATIVES}
    return generate(backend, prompt_ids, n=N, seed=SEED, **options)


def warm_up(backend: Backend, prompt_ids: list[int]) -> float:
    """Seconds of one untimed run (one-off costs: allocator growth, lazy initialization)."""
    return timed(lambda: sample(backend, prompt_ids))[0]


def measure(side: Side, backend: Backend, prompt_ids: list[int]) -> None:
    calls, cpu = backend.stats.calls, time.process_time()
    seconds, continuations = timed(lambda: sample(backend, prompt_ids))
    side.cpu.runs_s.append(time.process_time() - cpu)
    side.timing.runs_s.append(seconds)
    side.forward_calls = backend.stats.calls - calls
    side.tokens = sum(len(c.tokens) for c in continuations)
    side.first = continuations[0]


def first_token_error(
    tuned: Backend, guide: Backend, prompt_ids: list[int], side: Side, alpha: float, mix: str
) -> float:
    """|recorded - expected| log-probability of the guided side's first token, the expectation mixed from the
    two models' own first distributions."""
    import torch

    assert side.first is not None
    token = side.first.tokens[0]
    p_tuned, p_guide = tuned.start(prompt_ids)[1][0], guide.start(prompt_ids)[1][0]
    if mix == "geometric":
        mixed = torch.log_softmax((1 - alpha) * p_tuned + alpha * p_guide, dim=-1)[token.id]
    else:
        mixed = torch.logaddexp(p_tuned[token.id] + math.log1p(-alpha), p_guide[token.id] + math.log(alpha))
    return abs(token.logprob - float(mixed))


def profile(backend: Backend, prompt_ids: list[int]) -> str:
    profiler = cProfile.Profile()
    profiler.runcall(sample, backend, prompt_ids)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
    return out.getvalue()


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    result.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to this JSON file")
    result.add_argument("--repeats", type=int, default=5, help="timed runs per side; the median is compared")
    result.add_argument("--alpha", type=float, default=0.5, help="the guide's weight")
    result.add_argument("--mix", default="geometric", help="geometric or arithmetic")
    result.add_argument("--profile", action="store_true", help="profile one more guided run")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_options(parser(), argv)
    env = prepare_run(console.status, args.repeats)
    console.print(
        f"{TUNED} guided by {GUIDE} (alpha {args.alpha:g}, {args.mix}) against {TUNED} alone: n={N} continuations "
        f"of {MAX_TOKENS} tokens at temperature {TEMPERATURE:g}, seed {SEED}, EOS off; {environment_line(env)}"
    )
    import modescope
    from modescope.models.hf import HFBackend
    from modescope.remedies.guided import guided

    plain, mixed = Side("plain"), Side("guided")
    with progress_bar(console) as progress:
        with task(progress, "loading both models", None):
            loaded = [modescope.load(name, device="cpu") for name in (TUNED, GUIDE)]
        if not all(isinstance(b, HFBackend) for b in loaded):
            raise SystemExit("the models did not load as transformers models")
        tuned, guide = (without_eos(b) for b in loaded)
        mixture = guided(tuned, guide, args.alpha, args.mix)
        prompt_ids = tuned.prompt_ids(modescope.ChatPrompt(QUESTION))
        sides: list[tuple[Side, Backend]] = [(plain, tuned), (mixed, mixture)]
        with task(progress, "warm-up", None):
            first_s = [warm_up(backend, prompt_ids) for _, backend in sides]
        with task(progress, "plain and guided, interleaved", 2 * args.repeats) as advance:
            for _ in range(args.repeats):
                for side, backend in sides:
                    measure(side, backend, prompt_ids)
                    advance()
        plain.timing.first_call_s, mixed.timing.first_call_s = first_s
        error = first_token_error(tuned, guide, prompt_ids, mixed, args.alpha, args.mix)
        profiled = profile(mixture, prompt_ids) if args.profile else ""
    warn_if_busy(console, env)
    ratio = mixed.timing.median_s / plain.timing.median_s
    cpu_ratio = mixed.cpu.median_s / plain.cpu.median_s
    table = Table(title=f"n={N} x {MAX_TOKENS} tokens, cpu, {args.repeats} runs per side", title_justify="left")
    table.add_column("measure")
    table.add_column(mixture.name, justify="right")
    add_measure_rows(
        table,
        {
            "plain (tuned alone)": [detail(plain.timing)],
            "guided": [detail(mixed.timing)],
            "ratio guided / plain (medians)": [
                f"{ratio:.2f}x, {against(ratio <= RATIO_TARGET, f'<= {RATIO_TARGET}x')}"
            ],
            "CPU seconds, plain / guided (medians)": [f"{plain.cpu.median_s:.2f} / {mixed.cpu.median_s:.2f}"],
            "ratio of CPU seconds (medians)": [f"{cpu_ratio:.2f}x"],
            "forward calls per run, plain / guided": [f"{plain.forward_calls} / {mixed.forward_calls}"],
            "tokens per run, plain / guided": [f"{plain.tokens} / {mixed.tokens}"],
            "first token |log-prob - hand mix|": [f"{error:.1e}"],
        },
    )
    console.print(table)
    if profiled:
        console.print(profiled, markup=False, highlight=False)
    figures = {
        "settings": {"tuned": TUNED, "guide": GUIDE, "alpha": args.alpha, "mix": args.mix, "question": QUESTION}
        | {"n": N, "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE, "seed": SEED},
        "timing": f"median of {args.repeats}, interleaved, after one warm-up each",
        "environment": env,
        "plain": plain.to_dict(),
        "guided": mixed.to_dict(),
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "ratio_target": RATIO_TARGET,
        "first_token_abs_error": error,
    }
    write_figures(args.json, figures, console)
    if not error <= CHECK_LIMIT:
        console.print(f"[red]the guided log-probability is off by {error:.1e} nats[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
