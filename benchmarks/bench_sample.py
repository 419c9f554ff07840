"""Benchmark sampling with per-token records on the default models against transformers' generate.

For each default model it draws n=32 continuations of exactly 48 new tokens at temperature 1.0 (no other
sampler), with a fixed seed, from "Are bugs real?" (through the chat template where the model has one, else
the plain prompt "Q: Are bugs real?\\nA:"), and records for every generated token its log-probability, the
entropy of the raw next-token distribution and the 10 most likely alternatives, two ways:

1. modescope: `modescope.engine.decode.generate(backend, ids, n=32, max_tokens=48, top_k_alternatives=10,
   seed=0)`, which shares the prompt's KV cache between the rows and records tokens as it goes;
2. the baseline a transformers user would write: `model.generate(num_return_sequences=32, do_sample=True,
   temperature=1.0, top_k=0, top_p=1.0, output_scores=True, output_logits=True, return_dict_in_generate=True)`
   after `torch.manual_seed(0)`, then the same records (the same `TokenRecord` objects) built from what it
   returns, vectorized one step at a time: raw log-probabilities from `output_logits` (the raw model
   distribution), the sampled-from log-probability from `output_scores` (the processed scores), both in float32
   (normalizer summed in float64) as modescope computes them; token texts are decoded once per distinct id.

It also reports the hardware floor of modescope's run (benchmarks/floor.py: its FLOPs at a float32 matmul peak
measured in the same run), a profile of where its time goes, and the time of the matrix products the run makes
(the model's linear layers and LM head at 32 rows for 47 steps) with nothing between them: both sides' forward
makes these very calls, so no run can beat that time, and it bounds the speed-up any sampler built on
transformers' float32 forward can reach. With --long it also decodes 16 rows x 256 tokens with the KV cache
grown in place (modescope's default, models/kv_growth.py) and with transformers' concatenation, interleaved.

Equal work on both sides: EOS must not end a row early, or the side that stops sooner generates fewer tokens.
Both sides run with EOS turned off rather than masked, so both sample from the very same raw distribution
(EOS included: it is drawn now and then and the row simply goes on) and produce exactly 32 x 48 tokens. For
modescope the backend is a shallow copy whose vocabulary lists no EOS id; for the baseline `eos_token_id=None`.
(`min_new_tokens=48` was not used: it masks EOS out of the distribution sampled from, which modescope would
not do.) Token counts are still reported, and speeds are compared per generated token, which is the plain
time ratio when both sides produce the same number of tokens.

Both sides' results are checked: the first continuation of each side is rescored in one full forward pass
(`HFBackend.score_padded`) and must give the recorded raw log-probabilities, and the first position, where
both sides see the same distribution, must give the same entropy and top-10 log-probabilities (1e-3 nats or
bits); otherwise the script exits with status 1.

Timings are the best of --repeats runs per side (the median is reported too), interleaved (modescope,
baseline, modescope, ...) so that drift in the machine's speed hits both alike; each side first has one
untimed warm-up run, reported as "first call". Memory is the peak resident set size (RSS) of the process
during a run, sampled every 5 ms by a psutil thread, and its increase over the RSS just before the run (the
previous run's results are freed first); torch's CPU allocator is invisible to tracemalloc, so RSS is the
only figure that covers both tensors and Python objects. RSS depends on what the allocator kept from earlier
runs, so the increase is a lower bound on what a run needs; the largest over the timed runs is reported.

Run it with `.venv/bin/python benchmarks/bench_sample.py [--models ...] [--repeats N] [--json PATH]`.
The speed target (modescope at least as fast as the baseline per generated token) is reported, not enforced.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import functools
import gc
import io
import math
import pstats
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
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
    finish,
    parse_options,
    prepare_run,
    progress_bar,
    task,
    timed,
    warn_if_busy,
)
from floor import Floor, ModelShape, matmul_peak_gflops, profile_lines, profile_split

if TYPE_CHECKING:
    from modescope.engine.decode import Continuation
    from modescope.models.hf import HFBackend

QUESTION = "Are bugs real?"
PLAIN_PROMPT = f"Q: {QUESTION}\nA:"  # for base models, which have no chat template
N = 32
MAX_TOKENS = 48
TEMPERATURE = 1.0
TOP_K_ALTERNATIVES = 10
SEED = 0
RSS_INTERVAL_S = 0.005
AGREEMENT_LIMIT = 1e-3  # max absolute difference, nats or bits, in the checks (enforced)
SPEEDUP_TARGET = 2.0  # baseline time / modescope time, per generated token
LONG_ROWS, LONG_TOKENS = 16, 256  # the long decode of --long

T = TypeVar("T")
console = Console()


# --- measurements ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run produced, summarized once it is timed (the records themselves are dropped)."""

    tokens: int
    eos_sampled: int  # EOS drawn and ignored (the row went on)
    mean_raw_logprob: float  # nats per token, under the raw model
    mean_entropy_bits: float
    first: Continuation  # kept for the checks
    generate_s: float = math.nan  # baseline only: model.generate alone; the rest is building the records


@dataclass
class SideRun:
    """Every run of one side on one model."""

    name: str
    timing: Timing = field(default_factory=lambda: Timing([]))
    peak_rss: list[int] = field(default_factory=list)  # bytes, per timed run
    rss_increase: list[int] = field(default_factory=list)  # bytes over the RSS just before the run
    generate_s: list[float] = field(default_factory=list)  # baseline only
    outcome: Outcome | None = None

    @property
    def tokens(self) -> int:
        assert self.outcome
        return self.outcome.tokens

    @property
    def seconds_per_token(self) -> float:
        return self.timing.best_s / self.tokens

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.timing.best_s

    def to_dict(self) -> dict[str, Any]:
        assert self.outcome
        data: dict[str, Any] = {"timing": self.timing.to_dict(), "tokens": self.tokens}
        data |= {"tokens_per_s": self.tokens_per_s, "ms_per_token": 1000 * self.seconds_per_token}
        data |= {"peak_rss_bytes": self.peak_rss, "rss_increase_bytes": self.rss_increase}
        data |= {k: v for k, v in asdict(self.outcome).items() if k not in ("first", "generate_s")}
        if self.generate_s:
            data["generate_s"] = self.generate_s
        data["first_text"] = self.outcome.first.text
        return data


@dataclass
class ModelReport:
    model: str
    prompt: str
    prompt_tokens: int
    modescope: SideRun
    baseline: SideRun
    rescore_diff: dict[str, float] = field(default_factory=dict)  # side -> max |recorded - rescored| raw logprob
    floor: Floor | None = None  # modescope's run against the hardware floor
    first_position_diff: float = math.nan  # max |difference| of entropy and top-10 logprobs at position 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Baseline time / modescope time, per generated token."""
        return self.baseline.seconds_per_token / self.modescope.seconds_per_token

    @property
    def worst_diff(self) -> float:
        return max([*self.rescore_diff.values(), self.first_position_diff])

    @property
    def agrees(self) -> bool:
        return self.worst_diff <= AGREEMENT_LIMIT  # False for NaN too

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.model, "prompt": self.prompt, "prompt_tokens": self.prompt_tokens}
        data |= {"modescope": self.modescope.to_dict(), "baseline": self.baseline.to_dict()}
        data |= {"speedup_per_token": self.speedup, "rescore_max_abs_diff": self.rescore_diff}
        data |= {"first_position_max_abs_diff": self.first_position_diff, "agrees": self.agrees}
        data |= {"floor": self.floor.to_dict() if self.floor else None}
        return data | self.extra


class PeakRSS:
    """Peak resident set size of this process while the block runs, sampled every RSS_INTERVAL_S by a thread."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self.before = self.peak = 0

    def _rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _watch(self) -> None:
        while not self._done.wait(RSS_INTERVAL_S):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def increase(self) -> int:
        return self.peak - self.before


def without_eos(backend: HFBackend) -> HFBackend:
    """A shallow copy of `backend` (same model and tokenizer) whose vocabulary has no EOS id, so no row ends early.

    EOS stays a special token and can still be sampled; the row then simply goes on.
    """
    vocab = copy.copy(backend.vocab)
    vocab.eos_ids = frozenset()
    clone = copy.copy(backend)
    clone.vocab = vocab
    return clone


# --- the two sides -----------------------------------------------------------------------------------------


def run_modescope(backend: HFBackend, prompt_ids: list[int]) -> tuple[list[Continuation], float]:
    from modescope.engine.decode import generate
    from modescope.engine.samplers import SamplerSettings

    sampler = SamplerSettings.make(temperature=TEMPERATURE)
    continuations = generate(
        backend,
        prompt_ids,
        n=N,
        max_tokens=MAX_TOKENS,
        sampler=sampler,
        top_k_alternatives=TOP_K_ALTERNATIVES,
        seed=SEED,
    )
    return continuations, math.nan


def run_baseline(backend: HFBackend, prompt_ids: list[int]) -> tuple[list[Continuation], float]:
    """transformers' generate, then the per-token records modescope keeps, built from its logits and scores.

    Returns the continuations and the seconds spent in `model.generate` alone.
    """
    import torch

    from modescope.engine.decode import LOG2, Alternative, Continuation, TokenRecord
    from modescope.models.hf import log_softmax_f32

    model, tokenizer = backend.model, backend.tokenizer
    start = time.perf_counter()
    torch.manual_seed(SEED)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long)
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=True,
            temperature=TEMPERATURE,
            top_k=0,
            top_p=1.0,
            max_new_tokens=MAX_TOKENS,
            num_return_sequences=N,
            eos_token_id=None,  # as in modescope's run: no row ends early (see the module docstring)
            pad_token_id=tokenizer.pad_token_id,
            output_scores=True,
            output_logits=True,
            return_dict_in_generate=True,
        )
    generate_s = time.perf_counter() - start

    steps = len(out.logits)
    chosen = out.sequences[:, -steps:]  # [n, steps]
    raw = torch.empty(N, steps, dtype=torch.float64)
    sampled = torch.empty(N, steps, dtype=torch.float64)
    entropy = torch.empty(N, steps, dtype=torch.float64)
    top_ids = torch.empty(N, steps, TOP_K_ALTERNATIVES, dtype=torch.long)
    top_logprobs = torch.empty(N, steps, TOP_K_ALTERNATIVES, dtype=torch.float64)
    for step, (logits, scores) in enumerate(zip(out.logits, out.scores, strict=True)):
        index = chosen[:, step : step + 1]
        logprobs = log_softmax_f32(logits.float())  # raw model distribution, as precise as modescope's
        raw[:, step] = logprobs.gather(1, index).squeeze(1)
        processed = scores.float()  # the distribution actually sampled from
        sampled[:, step] = processed.gather(1, index).squeeze(1) - torch.logsumexp(processed, dim=-1)
        entropy[:, step] = -(logprobs.exp() * logprobs.nan_to_num(neginf=0.0)).sum(-1) / LOG2
        top = logprobs.topk(TOP_K_ALTERNATIVES, dim=-1)
        top_ids[:, step], top_logprobs[:, step] = top.indices, top.values
    del out

    ids, alt_ids = chosen.tolist(), top_ids.tolist()
    distinct = sorted({i for row in ids for i in row} | {i for row in alt_ids for step in row for i in step})
    text = dict(zip(distinct, tokenizer.batch_decode([[i] for i in distinct]), strict=True))
    special = set(tokenizer.all_special_ids)
    raw_l, sampled_l, entropy_l, alt_lp = raw.tolist(), sampled.tolist(), entropy.tolist(), top_logprobs.tolist()
    continuations = []
    for r in range(N):
        records = [
            TokenRecord(
                token,
                text[token],
                sampled_l[r][s],
                raw_l[r][s],
                entropy_l[r][s],
                [Alternative(i, text[i], v) for i, v in zip(alt_ids[r][s], alt_lp[r][s], strict=True)],
                token in special,
            )
            for s, token in enumerate(ids[r])
        ]
        continuations.append(Continuation(records, "length"))
    return continuations, generate_s


Runner = Callable[["HFBackend", list[int]], tuple[list["Continuation"], float]]


def summarize(continuations: list[Continuation], eos_ids: frozenset[int], generate_s: float) -> Outcome:
    tokens = [t for c in continuations for t in c.tokens]
    return Outcome(
        tokens=len(tokens),
        eos_sampled=sum(t.id in eos_ids for t in tokens),
        mean_raw_logprob=math.fsum(t.raw_logprob for t in tokens) / len(tokens),
        mean_entropy_bits=math.fsum(t.entropy_bits for t in tokens) / len(tokens),
        first=continuations[0],
        generate_s=generate_s,
    )


def measure(side: SideRun, runner: Runner, backend: HFBackend, prompt_ids: list[int], eos: frozenset[int]) -> None:
    """One run of `side`: timed, memory sampled, summarized; the first call is the untimed warm-up."""
    gc.collect()  # free the previous run's results before measuring the memory of this one
    with PeakRSS() as rss:
        seconds, (continuations, generate_s) = timed(lambda: runner(backend, prompt_ids))
    outcome = summarize(continuations, eos, generate_s)
    del continuations
    if side.timing.first_call_s is None:
        side.timing.first_call_s = seconds
        side.outcome = outcome
        return
    side.timing.runs_s.append(seconds)
    side.peak_rss.append(rss.peak)
    side.rss_increase.append(rss.increase)
    if not math.isnan(generate_s):
        side.generate_s.append(generate_s)
    side.outcome = outcome


def rescore_diff(backend: HFBackend, prompt_ids: list[int], continuation: Continuation) -> float:
    """Max |recorded - rescored| raw log-probability of a continuation, rescored in one full forward pass."""
    ids = [t.id for t in continuation.tokens]
    steps, _ = backend.score_padded([prompt_ids + ids])
    expected = steps[0, len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(ids)].tolist()
    return max(abs(e - t.raw_logprob) for e, t in zip(expected, continuation.tokens, strict=True))


def first_position_diff(a: Continuation, b: Continuation) -> float:
    """Max |difference| of the entropy and the sorted top-k log-probabilities at the first generated position."""
    x, y = a.tokens[0], b.tokens[0]
    tops = zip(sorted(t.logprob for t in x.top), sorted(t.logprob for t in y.top), strict=True)
    return max([abs(x.entropy_bits - y.entropy_bits), *(abs(p - q) for p, q in tops)])


def profile_modescope(backend: HFBackend, prompt_ids: list[int], lines: int) -> str:
    """cProfile of one modescope run: the functions with the most time of their own."""
    profiler = cProfile.Profile()
    profiler.runcall(run_modescope, backend, prompt_ids)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(lines)
    return text.getvalue()


def products_alone(backend: HFBackend, rows: int, steps: int, repeats: int = 3) -> float:
    """Best seconds of the matrix products `steps` decode steps of `rows` rows make, alone: every linear layer
    of the model, the LM head included, applied to random activations of its width, in the model's order (the
    same MKL calls transformers' forward makes, with nothing between them). No run of the model can be faster,
    so it bounds the speed-up over `generate`, whose forward makes the same calls."""
    import torch

    weights = [m.weight.detach() for m in backend.model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w in weights}

    def run() -> None:
        with torch.inference_mode():
            for _ in range(steps):
                for weight in weights:
                    torch.nn.functional.linear(inputs[weight.shape[1]], weight)

    return min(timed(run)[0] for _ in range(repeats))


def kv_growth_runs(backend: HFBackend, prompt_ids: list[int], repeats: int) -> dict[str, Any]:
    """A long decode (LONG_ROWS x LONG_TOKENS, records and all) with the KV cache grown in place and with
    transformers' concatenation, interleaved, best of `repeats` each; the two must draw the same tokens."""
    from modescope.engine.decode import generate

    times: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, list[list[int]]] = {}
    try:
        for _ in range(repeats):
            for grow in (True, False):
                backend.grow_kv_in_place = grow
                seconds, continuations = timed(
                    lambda: generate(backend, prompt_ids, n=LONG_ROWS, max_tokens=LONG_TOKENS, seed=SEED)
                )
                times[grow].append(seconds)
                tokens[grow] = [[t.id for t in c.tokens] for c in continuations]
    finally:
        backend.grow_kv_in_place = True
    if tokens[True] != tokens[False]:
        raise SystemExit("the KV cache grown in place drew other tokens than transformers' concatenation")
    return {
        "rows": LONG_ROWS,
        "tokens": LONG_TOKENS,
        "in_place_s": min(times[True]),
        "concatenated_s": min(times[False]),
    }


def modescope_floor(backend: HFBackend, report: ModelReport, peak_gflops: float) -> Floor:
    """The FLOPs of modescope's run at the peak: the prompt once, then one position per row and step after the
    first (the last token chosen is never forwarded), logits at each of those and at the prompt's end."""
    positions = N * (MAX_TOKENS - 1)
    context = report.prompt_tokens + MAX_TOKENS / 2
    flops = ModelShape.of(backend).flops(report.prompt_tokens + positions, positions + 1, context)
    return Floor(flops, peak_gflops, report.modescope.timing.best_s)


def bench_model(name: str, args: argparse.Namespace, progress: Progress) -> ModelReport:
    import modescope
    from modescope.models.hf import HFBackend

    with task(progress, f"{name}: loading", None):
        loaded = modescope.load(name, device="cpu")
    if not isinstance(loaded, HFBackend):
        raise SystemExit(f"{name} did not load as a transformers model; the baseline needs model.generate")
    backend = without_eos(loaded)
    prompt = modescope.ChatPrompt(QUESTION) if backend.has_chat_template else PLAIN_PROMPT
    prompt_ids = backend.prompt_ids(prompt)
    eos = loaded.vocab.eos_ids
    report = ModelReport(
        name, backend.tokenizer.decode(prompt_ids), len(prompt_ids), SideRun("modescope"), SideRun("baseline")
    )
    report.extra = {"dtype": str(next(backend.model.parameters()).dtype), "vocab_size": backend.vocab.size}
    sides: list[tuple[SideRun, Runner]] = [(report.modescope, run_modescope), (report.baseline, run_baseline)]
    with task(progress, f"{name}: modescope and baseline, interleaved", 2 * (args.repeats + 1)) as advance:
        for _ in range(args.repeats + 1):
            for side, runner in sides:
                measure(side, runner, backend, prompt_ids, eos)
                advance()
    with task(progress, f"{name}: checks", None):
        for side, _ in sides:
            assert side.outcome
            report.rescore_diff[side.name] = rescore_diff(backend, prompt_ids, side.outcome.first)
        assert report.modescope.outcome and report.baseline.outcome
        report.first_position_diff = first_position_diff(report.modescope.outcome.first, report.baseline.outcome.first)
    with task(progress, f"{name}: float32 matmul peak, profile", None):
        peak = matmul_peak_gflops()
        report.extra["profile_split"] = profile_lines(
            *profile_split(functools.partial(run_modescope, backend, prompt_ids))
        )
        peak = max(peak, matmul_peak_gflops())
        report.floor = modescope_floor(backend, report, peak)
    with task(progress, f"{name}: the matrix products alone", None):
        report.extra["products_alone_s"] = products_alone(backend, N, MAX_TOKENS - 1)
    if args.long:
        with task(progress, f"{name}: {LONG_ROWS} x {LONG_TOKENS} tokens, KV cache in place / concatenated", None):
            report.extra["kv_growth"] = kv_growth_runs(backend, prompt_ids, args.repeats)
    if args.profile:
        with task(progress, f"{name}: profiling one modescope run", None):
            report.extra["profile"] = profile_modescope(backend, prompt_ids, args.profile)
    del backend, loaded
    gc.collect()
    return report


# --- output ------------------------------------------------------------------------------------------------


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def model_table(report: ModelReport) -> Table:
    ours, base = report.modescope, report.baseline
    assert ours.outcome and base.outcome
    title = (
        f"{report.model} (cpu, {report.extra['dtype']}, vocabulary {report.extra['vocab_size']}; "
        f"{report.prompt_tokens} prompt tokens; n={N} x {MAX_TOKENS} tokens; best of {len(ours.timing.runs_s)})"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("modescope", justify="right")
    table.add_column("baseline (HF generate)", justify="right")
    table.add_column("target")
    table.add_row("time", detail(ours.timing), detail(base.timing), "")
    split = f"generate {min(base.generate_s):.2f} s + records {base.timing.best_s - min(base.generate_s):.2f} s"
    table.add_row("  of which", "", split, "")
    table.add_row("tokens generated", f"{ours.tokens}", f"{base.tokens}", "")
    table.add_row("tokens / s", f"{ours.tokens_per_s:.1f}", f"{base.tokens_per_s:.1f}", "")
    ms = f"{1000 * ours.seconds_per_token:.2f} ms", f"{1000 * base.seconds_per_token:.2f} ms"
    table.add_row("time per generated token", *ms, "")
    met = report.speedup >= SPEEDUP_TARGET
    table.add_row("speed-up baseline/modescope", f"{report.speedup:.2f}x", "", against(met, f">= {SPEEDUP_TARGET:g}x"))
    table.add_section()
    table.add_row("peak RSS", gib(max(ours.peak_rss)), gib(max(base.peak_rss)), "")
    table.add_row("peak RSS increase in a run", gib(max(ours.rss_increase)), gib(max(base.rss_increase)), "")
    table.add_section()
    table.add_row("EOS sampled (row went on)", f"{ours.outcome.eos_sampled}", f"{base.outcome.eos_sampled}", "")
    lp = f"{ours.outcome.mean_raw_logprob:.3f}", f"{base.outcome.mean_raw_logprob:.3f}"
    table.add_row("mean raw log-prob / token (nats)", *lp, "")
    ent = f"{ours.outcome.mean_entropy_bits:.3f}", f"{base.outcome.mean_entropy_bits:.3f}"
    table.add_row("mean entropy (bits)", *ent, "")
    ok = report.rescore_diff["modescope"] <= AGREEMENT_LIMIT and report.rescore_diff["baseline"] <= AGREEMENT_LIMIT
    diffs = f"{report.rescore_diff['modescope']:.1e}", f"{report.rescore_diff['baseline']:.1e}"
    table.add_row("row 1 rescored, max |diff|", *diffs, against(ok, f"<= {AGREEMENT_LIMIT:g}"))
    met = report.first_position_diff <= AGREEMENT_LIMIT
    diff = f"{report.first_position_diff:.1e}"
    table.add_row("position 1 entropy/top-10, max |diff|", diff, "", against(met, f"<= {AGREEMENT_LIMIT:g}"))
    if report.floor:
        table.add_section()
        floor = report.floor
        value = f"{floor.floor_s:.2f} s at {floor.peak_gflops:.0f} GFLOPS; time / floor {floor.ratio:.1f}x"
        table.add_row("hardware floor", value, "", "")
    if "products_alone_s" in report.extra:
        budget = base.timing.best_s / SPEEDUP_TARGET
        value = f"{report.extra['products_alone_s']:.2f} s; {SPEEDUP_TARGET:g}x needs the run under {budget:.2f} s"
        table.add_row(f"matrix products alone ({N} rows x {MAX_TOKENS - 1} steps)", value, "", "")
    if "kv_growth" in report.extra:
        kv = report.extra["kv_growth"]
        value = (
            f"{kv['in_place_s']:.2f} / {kv['concatenated_s']:.2f} s ({kv['concatenated_s'] / kv['in_place_s']:.2f}x)"
        )
        table.add_row(f"{kv['rows']} x {kv['tokens']} tokens, KV cache in place / concatenated", value, "", "")
    for k, line in enumerate(report.extra.get("profile_split", [])):
        table.add_row("profile" if k == 0 else "", line, "", "")
    return table


def summary_table(reports: list[ModelReport], env: dict[str, Any]) -> Table:
    title = f"Summary (n={N} x {MAX_TOKENS} tokens, temperature {TEMPERATURE:g}, best of {env['repeats']})"
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    for r in reports:
        table.add_column(r.model, justify="right")
    rows: dict[str, list[str]] = {}
    for r in reports:
        ours, base = r.modescope, r.baseline
        colour = "green" if r.speedup >= SPEEDUP_TARGET else "red"
        for measure, value in {
            "modescope": f"{ours.timing.best_s:.2f} s ({ours.tokens_per_s:.0f} tok/s)",
            "baseline": f"{base.timing.best_s:.2f} s ({base.tokens_per_s:.0f} tok/s)",
            "speed-up per token": f"[{colour}]{r.speedup:.2f}x[/]",
            "modescope time / floor": f"{r.floor.ratio:.1f}x" if r.floor else "",
            "matrix products alone": f"{r.extra['products_alone_s']:.2f} s" if "products_alone_s" in r.extra else "",
            "peak RSS increase modescope": gib(max(ours.rss_increase)),
            "peak RSS increase baseline": gib(max(base.rss_increase)),
            "checks max |diff|": f"[{'green' if r.agrees else 'red'}]{r.worst_diff:.1e}[/]",
        }.items():
            rows.setdefault(measure, []).append(value)
    return add_measure_rows(table, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, repeats=3)
    parser.add_argument(
        "--profile", type=int, default=0, metavar="LINES", help="also cProfile one modescope run; print LINES rows"
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help=f"also decode {LONG_ROWS} x {LONG_TOKENS} tokens with the KV cache grown in place and concatenated",
    )
    return parse_options(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = prepare_run(console.status, args.repeats)
    console.print(
        f"question {QUESTION!r}: n={N} continuations of {MAX_TOKENS} tokens at temperature {TEMPERATURE:g}, seed "
        f"{SEED}, top-{TOP_K_ALTERNATIVES} alternatives; {environment_line(env)}"
    )

    reports: list[ModelReport] = []
    with progress_bar(console) as progress:
        for name in args.models:
            report = bench_model(name, args, progress)
            reports.append(report)
            progress.console.print(model_table(report))
            if "profile" in report.extra:
                progress.console.print(f"cProfile of one modescope run on {name}:", report.extra["profile"])
    warn_if_busy(console, env)
    console.print(summary_table(reports, env))

    failed = [r.model for r in reports if not r.agrees]
    figures = {
        "question": QUESTION,
        "plain_prompt": PLAIN_PROMPT,
        "settings": {
            "n": N,
            "max_tokens": MAX_TOKENS,
            "temperature": TEMPERATURE,
            "top_k_alternatives": TOP_K_ALTERNATIVES,
            "seed": SEED,
            "eos": "off on both sides",
        },
        "timing": f"best of {args.repeats}, interleaved (median and every run included)",
        "memory": f"peak RSS sampled every {RSS_INTERVAL_S * 1000:g} ms, and its increase within the run",
        "targets": {"speedup_per_token": SPEEDUP_TARGET, "max_abs_diff": AGREEMENT_LIMIT},
        "environment": env,
        "models": [r.to_dict() for r in reports],
        "ok": not failed,
    }
    failure = f"recorded and rescored log-probabilities differ by more than {AGREEMENT_LIMIT:g} for " + ", ".join(
        failed
    )
    success = f"both sides' records agree with rescoring within {AGREEMENT_LIMIT:g}"
    return finish(args.json, figures, console, failure if failed else None, success)


if __name__ == "__main__":
    sys.exit(main())
