"""Benchmark the distribution probe on the default models against naive full-sequence scoring.

For each default model, on examples/random-integer.txt with the integers 0..100 as candidates, it measures:

1. cold load (converting the GGUF into an empty, temporary cache) and warm load (from the normal cache);
2. the engine in canonical mode, and the naive baseline an evaluation harness would run on the very same
   sequences: one right-padded row per (candidate, leading-whitespace variant), scored in full. The two must
   give the same masses (within 1e-4 relative), or the script exits with status 1;
3. the engine with every tokenization (the default);
4. token positions forwarded by the engine, against the minimum its prefix tree needs, and by the baseline;
5. the hardware floor of each engine run (benchmarks/floor.py: the run's FLOPs at a float32 matmul peak
   measured in the same run) and time / floor, with a profile of where the time goes;
6. the engine's float32 masses against the same engine computing its log-softmax in float64 (at most 1e-4
   relative, enforced);
7. a prompt set (`outcome_distributions` on 8 phrasings of the question, canonical tokenizations): each prompt
   on tree calls in its own passes, one after another, against every prompt expanded level by level together
   (the path before tree calls, and still that of backends without them); the two must give the same masses
   (within 1e-4 relative, enforced), and the tree calls' time is put against their floor.

Run it with `.venv/bin/python benchmarks/bench_dist.py [--skip-cold] [--json PATH]` (or `make bench`).
Timings are the best of --repeats runs (the median is reported too); each engine measurement starts with one
untimed warm-up run, reported as "first call", which pays one-off costs such as vocabulary tables. Warm loads
are the best of --repeats loads. Targets are reported, not enforced, except the mass agreement.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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
    from modescope.models.base import Backend
    from modescope.models.hf import HFBackend
    from modescope.probes.distribution import Tokenizations

ROOT = Path(__file__).resolve().parent.parent
PROMPT_FILE = ROOT / "examples" / "random-integer.txt"
LO, HI = 0, 100
WHITESPACE_VARIANTS = ("", " ")  # the engine's default leading_space="optional"
AGREEMENT_LIMIT = 1e-4  # max relative difference between baseline and engine masses (enforced)
WARM_LOAD_TARGET_S = 3.0
SPEEDUP_TARGET = 10.0
TOKEN_RATIO_TARGET = 1.2
FLOOR_TARGET = 2.0  # engine time / hardware floor
FLOAT64_LIMIT = 1e-4  # max relative difference between float32 and float64 log-softmax masses (enforced)

PROMPT_SET = [  # the prompt file's question, then 7 other phrasings of it
    "Q: Pick a number from 0 to 100.\nA: I pick",
    "Q: Give me a random number between 0 and 100.\nA: Sure, here it is:",
    "Q: Think of a number between 0 and 100.\nA: The number I thought of is",
    "Q: Choose any whole number from 0 to 100.\nA: My choice is",
    "Q: Roll a 101-sided die numbered 0 to 100.\nA: It landed on",
    "Q: What is your favourite number between 0 and 100?\nA: My favourite is",
    "Q: Name a random integer in [0, 100].\nA: Ok:",
]

T = TypeVar("T")
console = Console()


# --- measurements ------------------------------------------------------------------------------------------


@dataclass
class EngineRun:
    mode: Tokenizations
    timing: Timing
    nodes: int
    prompt_tokens: int
    tokens_forwarded: int
    minimum_tokens: int
    forward_calls: int
    coverage: float
    masses: list[float]
    levels: int = 0
    floor: Floor | None = None
    float64_rel_diff: float = math.nan  # max over candidates, against a float64 log-softmax
    # best time with transformers' own LM head and log-softmax instead of the fused chunked head (NaN: no fused head)
    unfused_s: float = math.nan
    profile: list[str] = field(default_factory=list)

    @property
    def token_ratio(self) -> float:
        return self.tokens_forwarded / self.minimum_tokens


@dataclass
class BaselineRun:
    timing: Timing
    rows: int
    batch_size: int
    tokens_padded: int  # rows x padded length, summed over batches
    tokens_backend: int  # what backend.stats counted for one run
    masses: list[float]


@dataclass
class PromptSetRun:
    """A prompt set's distributions two ways: tree calls (one prompt after another) and the level path (every
    prompt together)."""

    prompts: int
    tree: Timing
    levels: Timing
    tree_calls: int  # forward passes, summed over the prompts
    level_calls: int
    max_rel_diff: float
    flops: float  # of the tree calls, summed over the prompts
    floor: Floor | None = None

    @property
    def speedup(self) -> float:
        return self.levels.best_s / self.tree.best_s

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("tree", "levels", "floor")}
        return data | {
            "tree": self.tree.to_dict(),
            "levels": self.levels.to_dict(),
            "speedup": self.speedup,
            "floor": self.floor.to_dict() if self.floor else None,
        }


@dataclass
class ModelReport:
    model: str
    cold_load: Timing | None = None
    warm_load: Timing | None = None
    populated_cache: bool = False  # the normal cache had to be filled before the warm loads
    peak_gflops: float = math.nan  # float32 matmul peak, best of before and after the engine runs
    canonical: EngineRun | None = None
    all: EngineRun | None = None
    baseline: BaselineRun | None = None
    prompt_set: PromptSetRun | None = None
    max_rel_diff: float = math.nan
    worst_candidate: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        assert self.baseline and self.canonical
        return self.baseline.timing.best_s / self.canonical.timing.best_s

    @property
    def agrees(self) -> bool:
        runs = [r for r in (self.canonical, self.all) if r]
        precise = all(r.float64_rel_diff <= FLOAT64_LIMIT for r in runs)
        same_set = self.prompt_set is None or self.prompt_set.max_rel_diff <= AGREEMENT_LIMIT
        return self.max_rel_diff <= AGREEMENT_LIMIT and precise and same_set  # False for NaN too

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.model, "populated_cache": self.populated_cache}
        data["peak_gflops"] = self.peak_gflops
        data["cold_load"] = self.cold_load.to_dict() if self.cold_load else None
        data["warm_load"] = self.warm_load.to_dict() if self.warm_load else None
        for name, run in (("canonical", self.canonical), ("all", self.all)):
            if run:
                data[name] = {k: v for k, v in asdict(run).items() if k not in ("timing", "masses", "floor")} | {
                    "timing": run.timing.to_dict(),
                    "token_ratio": run.token_ratio,
                    "floor": run.floor.to_dict() if run.floor else None,
                }
        if self.baseline:
            data["baseline"] = {k: v for k, v in asdict(self.baseline).items() if k not in ("timing", "masses")} | {
                "timing": self.baseline.timing.to_dict()
            }
        if self.baseline and self.canonical:
            data["speedup"] = self.speedup
            data["canonical_masses"] = self.canonical.masses
            data["baseline_masses"] = self.baseline.masses
        data["prompt_set"] = self.prompt_set.to_dict() if self.prompt_set else None
        data["max_rel_diff"] = self.max_rel_diff
        data["worst_candidate"] = self.worst_candidate
        data["agrees"] = self.agrees
        return data | self.extra


def load_cold(name: str, device: str) -> float:
    """Seconds to load `name` into an empty converted-model cache (the GGUF is converted)."""
    import modescope

    saved = os.environ.get("MODESCOPE_CACHE")
    scratch = tempfile.mkdtemp(prefix="modescope-bench-cold-")
    os.environ["MODESCOPE_CACHE"] = scratch
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # transformers' conversion progress bars
            seconds, backend = timed(lambda: modescope.load(name, device=device))
        del backend
        gc.collect()
        return seconds
    finally:
        if saved is None:
            del os.environ["MODESCOPE_CACHE"]
        else:
            os.environ["MODESCOPE_CACHE"] = saved
        shutil.rmtree(scratch, ignore_errors=True)


def engine_run(
    backend: Backend, prompt: str, candidates: list[str], mode: Tokenizations, repeats: int, advance: Callable[[], None]
) -> EngineRun:
    """One untimed warm-up run (it pays one-off costs such as vocabulary tables), then `repeats` timed runs."""
    import modescope

    def run() -> Any:
        result = modescope.distribution(backend, prompt, candidates, tokenizations=mode)
        advance()
        return result

    first_s, result = timed(run)
    runs = [timed(run)[0] for _ in range(repeats)]
    stats = result.results[0].stats
    engine = EngineRun(
        mode=mode,
        timing=Timing(runs, first_s),
        nodes=stats.nodes,
        prompt_tokens=stats.prompt_tokens,
        tokens_forwarded=stats.tokens_forwarded,
        minimum_tokens=stats.minimum_tokens,
        forward_calls=stats.forward_calls,
        coverage=result.results[0].coverage,
        masses=[o.mass for o in result.results[0].outcomes],
        levels=stats.levels,
    )
    engine.profile = profile_lines(*profile_split(run))
    engine.float64_rel_diff = max(relative_differences(float64_masses(backend, run), engine.masses))
    engine.unfused_s = unfused_best(backend, run, repeats)
    return engine


def unfused_best(backend: Backend, run: Callable[[], Any], repeats: int) -> float:
    """Best seconds of `run` with transformers' LM head and log-softmax (the engine before the fused head)."""
    from modescope.models.hf import HFBackend

    if not (isinstance(backend, HFBackend) and backend.fused_head):
        return math.nan
    backend.fused_head = False
    try:
        return min(timed(run)[0] for _ in range(repeats))
    finally:
        backend.fused_head = True


def float64_masses(backend: Backend, run: Callable[[], Any]) -> list[float]:
    """The masses the engine gives with its log-softmax in float64 (the reference its float32 is checked by)."""
    import torch

    from modescope.models.hf import HFBackend

    assert isinstance(backend, HFBackend)
    saved, backend.logprob_dtype = backend.logprob_dtype, torch.float64
    try:
        return [o.mass for o in run().results[0].outcomes]
    finally:
        backend.logprob_dtype = saved


def engine_floor(backend: HFBackend, run: EngineRun, peak_gflops: float) -> Floor:
    """The run's FLOPs (every forwarded position; logits at every tree node and the prompt's last position;
    attention over at most prompt + deepest level positions) at the measured peak."""
    shape = ModelShape.of(backend)
    flops = shape.flops(run.tokens_forwarded, run.nodes + 1, run.prompt_tokens + run.levels)
    return Floor(flops, peak_gflops, run.timing.best_s)


def prompt_set_run(
    backend: HFBackend, prompts: list[str], candidates: list[str], repeats: int, advance: Callable[[], None]
) -> PromptSetRun:
    """The prompt set on tree calls and on the level path (the backend's tree calls switched off), interleaved
    after one untimed warm-up each; the floor sums each prompt's own (its stats are its own on tree calls)."""
    from modescope.probes.distribution import outcome_distributions

    def run(tree_calls: bool) -> Any:
        if not tree_calls:
            backend.tree_start = lambda *args: None  # type: ignore[method-assign]
        try:
            return outcome_distributions(backend, prompts, candidates, tokenizations="canonical")
        finally:
            vars(backend).pop("tree_start", None)  # the class's method again
            advance()

    tree_first, tree_results = timed(lambda: run(True))
    level_first, level_results = timed(lambda: run(False))
    tree_runs, level_runs = [], []
    for _ in range(repeats):
        tree_runs.append(timed(lambda: run(True))[0])
        level_runs.append(timed(lambda: run(False))[0])
    differences = [
        d
        for a, b in zip(level_results, tree_results, strict=True)
        for d in relative_differences([o.mass for o in a.outcomes], [o.mass for o in b.outcomes])
    ]
    shape = ModelShape.of(backend)
    flops = sum(
        shape.flops(r.stats.tokens_forwarded, r.stats.nodes + 1, r.stats.prompt_tokens + r.stats.levels)
        for r in tree_results
    )
    return PromptSetRun(
        len(prompts),
        Timing(tree_runs, tree_first),
        Timing(level_runs, level_first),
        sum(r.stats.forward_calls for r in tree_results),
        level_results[0].stats.forward_calls,
        max(differences),
        flops,
    )


def baseline_masses(
    backend: HFBackend, prompt: str, candidates: list[str], batch_size: int, advance: Callable[[], None]
) -> tuple[list[float], int]:
    """Naive scoring: one right-padded row per (candidate, whitespace variant), prompt and target in full.

    The mass of a row is exp(sum of its target tokens' log-probs + log P(a boundary token comes next)); the
    variants of a candidate are summed. Returns the masses and the padded token positions forwarded.
    """
    import torch

    prompt_ids = backend.prompt_ids(prompt)
    owners = [k for k in range(len(candidates)) for _ in WHITESPACE_VARIANTS]
    texts = [variant + c for c in candidates for variant in WHITESPACE_VARIANTS]
    sequences = [prompt_ids + backend.encode(text, add_special_tokens=False) for text in texts]
    boundary = torch.tensor(backend.vocab.boundary_ids, dtype=torch.long)
    masses = [0.0] * len(candidates)
    padded = 0
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        steps, last = backend.score_padded(batch)
        ending = torch.logsumexp(last.index_select(1, boundary), dim=1)
        for row, seq in enumerate(batch):
            # steps[row, t] is log p(seq[t + 1] | seq[: t + 1]): the target tokens are seq[len(prompt_ids):]
            logprob = float(steps[row, len(prompt_ids) - 1 : len(seq) - 1].sum() + ending[row])
            masses[owners[start + row]] += math.exp(logprob)
        padded += len(batch) * max(len(s) for s in batch)
        advance()
    return masses, padded


def baseline_run(
    backend: HFBackend, prompt: str, candidates: list[str], batch_size: int, repeats: int, advance: Callable[[], None]
) -> BaselineRun:
    """`repeats` timed runs (the engine's warm-up already paid the shared one-off costs)."""
    runs: list[float] = []
    masses: list[float] = []
    padded = tokens = 0
    for _ in range(repeats):
        before = backend.stats.tokens
        seconds, (masses, padded) = timed(lambda: baseline_masses(backend, prompt, candidates, batch_size, advance))
        runs.append(seconds)
        tokens = backend.stats.tokens - before
    rows = len(candidates) * len(WHITESPACE_VARIANTS)
    return BaselineRun(Timing(runs), rows, batch_size, padded, tokens, masses)


def relative_differences(reference: list[float], other: list[float]) -> list[float]:
    return [abs(o - r) / abs(r) if r else (0.0 if o == r else math.inf) for r, o in zip(reference, other, strict=True)]


def bench_model(
    name: str, prompt: str, candidates: list[str], args: argparse.Namespace, progress: Progress
) -> ModelReport:
    import modescope
    from modescope.models import PRESETS, preset_cached
    from modescope.models.hf import HFBackend

    report = ModelReport(name)
    if not args.skip_cold:
        with task(progress, f"{name}: cold load (converting the GGUF)", None):
            report.cold_load = Timing([load_cold(name, args.device)])

    if name in PRESETS and not preset_cached(PRESETS[name]):
        with task(progress, f"{name}: filling the converted-model cache", None):
            modescope.load(name, device=args.device)
            gc.collect()
        report.populated_cache = True
    loads: list[float] = []
    backend: Backend | None = None
    with task(progress, f"{name}: warm loads", args.repeats) as advance:
        for _ in range(args.repeats):
            backend = None  # drop the previous copy before timing the next load
            gc.collect()
            seconds, backend = timed(lambda: modescope.load(name, device=args.device))
            loads.append(seconds)
            advance()
    report.warm_load = Timing(loads)
    if not isinstance(backend, HFBackend):
        raise SystemExit(f"{name} did not load as a transformers model; the baseline needs HFBackend.score_padded")
    report.extra = {"device": str(backend.device), "dtype": str(next(backend.model.parameters()).dtype)}
    report.extra["vocab_size"] = backend.vocab.size
    report.extra["prompt_tokens"] = len(backend.prompt_ids(prompt))

    with task(progress, f"{name}: float32 matmul peak", None):
        peak_before = matmul_peak_gflops()
    with task(progress, f"{name}: engine, canonical tokenizations", args.repeats + 3) as advance:
        report.canonical = engine_run(backend, prompt, candidates, "canonical", args.repeats, advance)
    batches = math.ceil(len(candidates) * len(WHITESPACE_VARIANTS) / args.batch_size)
    with task(progress, f"{name}: baseline, padded full sequences", batches * args.repeats) as advance:
        report.baseline = baseline_run(backend, prompt, candidates, args.batch_size, args.repeats, advance)
    differences = relative_differences(report.canonical.masses, report.baseline.masses)
    worst = max(range(len(differences)), key=lambda k: differences[k])
    report.max_rel_diff, report.worst_candidate = differences[worst], candidates[worst]
    with task(progress, f"{name}: engine, all tokenizations", args.repeats + 3) as advance:
        report.all = engine_run(backend, prompt, candidates, "all", args.repeats, advance)
    prompts = [prompt, *PROMPT_SET]
    with task(
        progress, f"{name}: prompt set of {len(prompts)}, tree calls and levels", 2 * (args.repeats + 1)
    ) as advance:
        report.prompt_set = prompt_set_run(backend, prompts, candidates, args.repeats, advance)
    with task(progress, f"{name}: float32 matmul peak", None):
        report.peak_gflops = max(peak_before, matmul_peak_gflops())
    report.canonical.floor = engine_floor(backend, report.canonical, report.peak_gflops)
    report.all.floor = engine_floor(backend, report.all, report.peak_gflops)
    report.prompt_set.floor = Floor(report.prompt_set.flops, report.peak_gflops, report.prompt_set.tree.best_s)
    del backend
    gc.collect()
    return report


# --- output ------------------------------------------------------------------------------------------------


def best(timing: Timing | None) -> str:
    return f"{timing.best_s:.2f} s" if timing else "skipped"


def model_table(report: ModelReport) -> Table:
    assert report.warm_load and report.canonical and report.all and report.baseline
    canonical, every, baseline = report.canonical, report.all, report.baseline
    title = (
        f"{report.model} ({report.extra['device']}, {report.extra['dtype']}; best of {len(canonical.timing.runs_s)})"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target")
    table.add_row("cold load (converts GGUF)", best(report.cold_load), "")
    runs = ", ".join(f"{s:.2f}" for s in report.warm_load.runs_s)
    met = report.warm_load.best_s < WARM_LOAD_TARGET_S
    table.add_row("warm load", f"{best(report.warm_load)} (runs {runs})", against(met, f"< {WARM_LOAD_TARGET_S:g} s"))
    table.add_section()
    table.add_row("engine, canonical", detail(canonical.timing), "")
    table.add_row(f"baseline, batches of {baseline.batch_size}", detail(baseline.timing), "")
    met = report.speedup >= SPEEDUP_TARGET
    table.add_row("speed-up baseline/canonical", f"{report.speedup:.1f}x", against(met, f">= {SPEEDUP_TARGET:g}x"))
    table.add_row("engine, all tokenizations", detail(every.timing), "")
    diff = f"{report.max_rel_diff:.1e} (at {report.worst_candidate!r})"
    met = report.max_rel_diff <= AGREEMENT_LIMIT
    table.add_row("mass max relative diff", diff, against(met, f"<= {AGREEMENT_LIMIT:g}"))
    table.add_section()
    table.add_row("float32 matmul peak", f"{report.peak_gflops:.0f} GFLOPS", "")
    for run in (canonical, every):
        assert run.floor
        value = f"{run.floor.floor_s:.2f} s ({run.floor.flops / 1e9:.0f} GFLOP); time / floor {run.floor.ratio:.1f}x"
        table.add_row(f"floor, {run.mode}", value, against(run.floor.ratio <= FLOOR_TARGET, f"<= {FLOOR_TARGET:g}x"))
        met = run.float64_rel_diff <= FLOAT64_LIMIT
        table.add_row(f"vs float64, {run.mode}", f"{run.float64_rel_diff:.1e}", against(met, f"<= {FLOAT64_LIMIT:g}"))
        if not math.isnan(run.unfused_s):
            gain = run.unfused_s / run.timing.best_s
            table.add_row(
                f"transformers' head, {run.mode}", f"{run.unfused_s:.2f} s (fused head {gain:.2f}x faster)", ""
            )
    if report.prompt_set:
        table.add_section()
        ps = report.prompt_set
        table.add_row(f"prompt set of {ps.prompts}, tree calls", f"{detail(ps.tree)}; {ps.tree_calls} passes", "")
        table.add_row("prompt set, levels together", f"{detail(ps.levels)}; {ps.level_calls} passes", "")
        table.add_row("prompt set speed-up levels/tree", f"{ps.speedup:.2f}x", "")
        if ps.floor:
            value = f"{ps.floor.floor_s:.2f} s; time / floor {ps.floor.ratio:.1f}x"
            table.add_row("floor, prompt set", value, against(ps.floor.ratio <= FLOOR_TARGET, f"<= {FLOOR_TARGET:g}x"))
        met = ps.max_rel_diff <= AGREEMENT_LIMIT
        table.add_row(
            "prompt set masses max rel. diff", f"{ps.max_rel_diff:.1e}", against(met, f"<= {AGREEMENT_LIMIT:g}")
        )
    table.add_section()
    for run in (canonical, every):
        value = f"{run.tokens_forwarded} / {run.minimum_tokens} = {run.token_ratio:.2f}x"
        met = run.token_ratio <= TOKEN_RATIO_TARGET
        table.add_row(f"tokens {run.mode} (fwd / min)", value, against(met, f"<= {TOKEN_RATIO_TARGET:g}x"))
    ratio = baseline.tokens_padded / canonical.minimum_tokens
    table.add_row(f"tokens baseline ({baseline.rows} rows)", f"{baseline.tokens_padded} = {ratio:.1f}x min", "")
    table.add_row("tree nodes canonical / all", f"{canonical.nodes} / {every.nodes}", "")
    table.add_row("coverage canonical / all", f"{canonical.coverage:.4f} / {every.coverage:.4f}", "")
    for run in (canonical, every):
        table.add_section()
        for k, line in enumerate(run.profile):
            table.add_row(f"profile, {run.mode}" if k == 0 else "", line, "")
    return table


def summary_table(reports: list[ModelReport], env: dict[str, Any]) -> Table:
    title = f"Summary (best of {env['repeats']}; imports {env['imports_s']:.1f} s, not in the load times)"
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    for r in reports:
        table.add_column(r.model, justify="right")
    rows: dict[str, list[str]] = {}
    for r in reports:
        assert r.warm_load and r.canonical and r.all and r.baseline
        colour = "green" if r.agrees else "red"
        for measure, value in {
            "cold load": best(r.cold_load),
            "warm load": best(r.warm_load),
            "engine canonical": best(r.canonical.timing),
            "baseline": best(r.baseline.timing),
            "speed-up": f"{r.speedup:.1f}x",
            "engine all": best(r.all.timing),
            "time / floor canonical": f"{r.canonical.floor.ratio:.1f}x" if r.canonical.floor else "",
            "time / floor all": f"{r.all.floor.ratio:.1f}x" if r.all.floor else "",
            "prompt set tree / levels": (
                f"{r.prompt_set.tree.best_s:.2f} / {r.prompt_set.levels.best_s:.2f} s" if r.prompt_set else ""
            ),
            "time / floor prompt set": (
                f"{r.prompt_set.floor.ratio:.1f}x" if r.prompt_set and r.prompt_set.floor else ""
            ),
            "tokens canonical": f"{r.canonical.tokens_forwarded} ({r.canonical.token_ratio:.2f}x min)",
            "tokens all": f"{r.all.tokens_forwarded} ({r.all.token_ratio:.2f}x min)",
            "tokens baseline": f"{r.baseline.tokens_padded}",
            "mass max rel. diff": f"[{colour}]{r.max_rel_diff:.1e}[/]",
        }.items():
            rows.setdefault(measure, []).append(value)
    return add_measure_rows(table, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, repeats=3)
    parser.add_argument("--skip-cold", action="store_true", help="skip cold loads (each converts a GGUF: 5-20 s)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward pass of the baseline")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    args = parse_options(parser, argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = prepare_run(console.status, args.repeats)
    import modescope

    prompt = PROMPT_FILE.read_text(encoding="utf-8")
    candidates = modescope.integers(LO, HI)
    console.print(f"prompt {prompt!r}")
    console.print(f"candidates {LO}..{HI} with optional leading space; {environment_line(env)}")

    reports: list[ModelReport] = []
    with progress_bar(console) as progress:
        for name in args.models:
            report = bench_model(name, prompt, candidates, args, progress)
            reports.append(report)
            progress.console.print(model_table(report))
    warn_if_busy(console, env)
    console.print(summary_table(reports, env))

    failed = [r.model for r in reports if not r.agrees]
    figures = {
        "prompt": prompt,
        "candidates": f"{LO}..{HI}",
        "leading_whitespace_variants": list(WHITESPACE_VARIANTS),
        "timing": f"best of {args.repeats} (median and every run included)",
        "targets": {
            "warm_load_s": WARM_LOAD_TARGET_S,
            "speedup": SPEEDUP_TARGET,
            "token_ratio": TOKEN_RATIO_TARGET,
            "max_rel_diff": AGREEMENT_LIMIT,
            "time_over_floor": FLOOR_TARGET,
            "float64_max_rel_diff": FLOAT64_LIMIT,
        },
        "environment": env,
        "models": [r.to_dict() for r in reports],
        "ok": not failed,
    }
    failure = (
        f"baseline and engine masses (or the prompt set's two ways) differ by more than {AGREEMENT_LIMIT:g} "
        f"relative, or float32 and float64 engine masses by more than {FLOAT64_LIMIT:g}, for " + ", ".join(failed)
    )
    success = (
        f"baseline and engine masses agree within {AGREEMENT_LIMIT:g} relative, float32 and float64 engine masses "
        f"within {FLOAT64_LIMIT:g}"
    )
    return finish(args.json, figures, console, failure if failed else None, success)


if __name__ == "__main__":
    sys.exit(main())
