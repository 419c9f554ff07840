"""`modescope dist`: the exact probability of every candidate answer under each model, summed over all
tokenizations, and its tables (bounded models behind a top-k server shown as intervals)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modescope.cli.common import (
    Chat,
    Device,
    Dtype,
    Models,
    Prefill,
    PromptFile,
    PromptsFile,
    PromptText,
    Resume,
    SetStore,
    System,
    Template,
    Tokenizations,
    candidates,
    load_models,
    make_console,
    metric_table,
    prepare_output,
    prompt_from_options,
    user_errors,
)
from modescope.cli.prompt_sets import over_prompt_set, prompt_set_given, refuse_in_prompt_set
from modescope.errors import ModescopeError
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy
from modescope.server_options import MaxConcurrency, MaxLogprobs, Tokenizer

if TYPE_CHECKING:
    from rich.console import Console

    from modescope.models.base import Backend, ChatPrompt
    from modescope.probes.distribution import DistributionResult


class LeadingSpace(StrEnum):
    optional = "optional"
    required = "required"
    none = "none"


def dist(
    model: Models = None,
    prompt: PromptText = None,
    prompt_file: PromptFile = None,
    prompts_file: PromptsFile = None,
    template: Template = None,
    store_path: SetStore = None,
    resume: Resume = False,
    chat: Chat = False,
    system: System = None,
    prefill: Prefill = "",
    integers: Annotated[
        tuple[int, int] | None, typer.Option(metavar="LO HI", help="Every integer from LO to HI inclusive.")
    ] = None,
    choices: Annotated[list[str] | None, typer.Option("--choices", help="One candidate; repeat for more.")] = None,
    choices_file: Annotated[Path | None, typer.Option(help="Candidates, one per line.")] = None,
    leading_space: Annotated[
        LeadingSpace, typer.Option(help="Whitespace before the answer: both variants summed, required, or none.")
    ] = LeadingSpace.optional,
    tokenizations: Annotated[
        Tokenizations, typer.Option(help="Sum over every token sequence that spells a candidate, or the canonical one.")
    ] = Tokenizations.all,
    temperature: Annotated[
        float, typer.Option(help="Apply this temperature to every next-token distribution along every path.")
    ] = 1.0,
    max_candidates: Annotated[int, typer.Option(help="Refuse larger candidate sets.")] = 100_000,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the distributions.")] = None,
    top: Annotated[int, typer.Option(help="Outcomes to show per model.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Tree nodes per forward pass.")] = 256,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Exact probability of every candidate answer under each model, summed over all tokenizations."""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes.distribution import check_temperature

        set_args = (prompts_file, prompt, prompt_file, template, store_path, resume)
        if prompt_set_given(*set_args):
            cands = candidates(integers, choices, choices_file, max_candidates)
            keys: dict[str, Any] = {"leading_space": leading_space.value, "tokenizations": tokenizations.value}
            keys |= {"temperature": temperature, "prefill": prefill, "choices": cands}
            refuse_in_prompt_set({"--plot": plot is not None, "--top": top != 10, "--batch-size": batch_size != 256})
            over_prompt_set("distribution", keys, model, chat, system, json_path, None, device, dtype, locals())
            return

        the_prompt = prompt_from_options(prompt, prompt_file, chat, system, prefill)
        cands = candidates(integers, choices, choices_file, max_candidates)
        check_temperature(temperature)
        if batch_size < 1 or top < 1:
            raise ModescopeError("--batch-size and --top must be at least 1")
        prepare_output(json_path, "--json")
        prepare_output(plot, "--plot")
        from modescope import resources

        resources.check_command(  # before any model loads: refuse what cannot fit in memory
            "dist",
            model or list(DEFAULT_MODELS),
            the_prompt,
            device,
            dtype,
            lambda r: resources.distribution_parts(r, cands, batch_size, leading_space.value),
            tokenizer,
        )
        console = make_console()
        policy = load_policy(trust_remote_code, allow_pickle)
        backends = load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        result = _run_distribution(backends, the_prompt, cands, leading_space, tokenizations, batch_size, temperature)
        print_distribution(result, console, top)
        if json_path is not None:
            json_path.write_text(result.to_json())
            console.print(f"wrote {json_path}")
        if plot is not None:
            from modescope.viz.distribution_plot import plot_distribution

            plot_distribution(result, plot)
            console.print(f"wrote {plot}")


def _run_distribution(
    backends: list[Backend],
    prompt: str | ChatPrompt,
    cands: list[str],
    leading_space: LeadingSpace,
    tokenizations: Tokenizations,
    batch_size: int,
    temperature: float,
) -> DistributionResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from modescope.probes.distribution import distribution

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
        tasks: dict[str, Any] = {}

        def report(model: str, done: int, total: int) -> None:
            if model not in tasks:
                tasks[model] = bar.add_task(f"{model}: tree nodes", total=total)
            bar.update(tasks[model], completed=done, total=total)

        return distribution(
            backends,
            prompt,
            cands,
            leading_space=leading_space.value,
            tokenizations=tokenizations.value,
            batch_size=batch_size,
            progress=report,
            temperature=temperature,
        )


def _percent(p: float) -> str:
    """A probability as a percentage, with two significant digits below 0.1% (bounds are often tiny)."""
    v = 100 * p
    return f"{v:.1f}%" if v >= 10 else f"{v:.2f}%" if v >= 0.1 or v == 0 else f"{v:#.2g}%"


def _interval(low: float, high: float) -> str:
    return f"[{_percent(low)}, {_percent(high)}]"


UNDECIDED_RELATIVE = 1e-6  # an exact model's mass_upper above its mass by more than this (relative) is noted


def print_distribution(result: DistributionResult, console: Console, top: int) -> None:
    """Tables of the top outcomes, per-model metrics and pair divergences. A bounded model (behind a top-k
    server) shows each outcome's absolute mass as [lower, upper] and is labelled; its metrics come from the
    lower bounds, marked with *."""
    from rich.table import Table
    from rich.text import Text

    bounded = {r.model for r in result.results if r.bounds is not None}
    title = "Top outcomes (probability within the set"
    title += "; bounded models: absolute mass [lower, upper], ranked by lower)" if bounded else ")"
    tops = Table(title=Text(title), title_justify="left")
    tops.add_column("rank", justify="right")
    for r in result.results:
        tops.add_column(Text(r.model + (f"\n{r.bounds}" if r.bounds is not None else "")))
    ranked = [sorted(r.outcomes, key=lambda o: -o.prob)[:top] for r in result.results]

    def cell(r: Any, o: Any) -> Text:  # Text: a candidate like "[red]" is shown, not read as markup
        shown = _interval(o.mass, o.mass_upper) if r.bounds is not None else f"{o.prob:.1%}"
        return Text(f"{o.text!r}  {shown}")

    for rank in range(min(top, len(result.candidates))):
        tops.add_row(str(rank + 1), *(cell(r, o[rank]) for r, o in zip(result.results, ranked, strict=True)))
    console.print(tops)

    def mark(r: Any, text: str) -> str:
        return f"{text} *" if r.model in bounded else text

    # Metrics as rows and models as columns, so that long model names fit an 80-column terminal.
    per_model: list[tuple[str, Callable[[Any], str]]] = [
        (
            "coverage (mass of the set)",
            lambda r: _interval(r.coverage, r.coverage_upper) if r.bounds is not None else f"{r.coverage:.2%}",
        ),
        ("entropy (bits)", lambda r: mark(r, f"{r.entropy_bits:.3f}")),
        ("normalized entropy", lambda r: mark(r, f"{r.normalized_entropy:.3f}")),
        ("effective outcomes (2^H)", lambda r: mark(r, f"{r.effective_outcomes:.1f}")),
        ("top-1", lambda r: mark(r, f"{r.top1!r} {r.top1_share:.1%}")),
        ("chi² vs uniform", lambda r: mark(r, f"{r.chi_square:.2f}")),
    ]
    console.print(
        metric_table("Per model (within the set)", [r.model for r in result.results], per_model, result.results)
    )
    if result.comparisons:

        def pair(c: Any, text: str) -> str:
            return f"{text} *" if {c.a, c.b} & bounded else text

        per_pair: list[tuple[str, Callable[[Any], str]]] = [
            ("KL(a‖b) bits", lambda c: pair(c, f"{c.kl_ab_bits:.3f}")),
            ("KL(b‖a) bits", lambda c: pair(c, f"{c.kl_ba_bits:.3f}")),
            ("Jensen-Shannon bits", lambda c: pair(c, f"{c.js_bits:.3f}")),
            ("total variation", lambda c: pair(c, f"{c.tv:.3f}")),
            ("Spearman rank corr.", lambda c: pair(c, f"{c.spearman:+.3f}")),
        ]
        headers = [f"a={c.a}\nb={c.b}" for c in result.comparisons]
        console.print(metric_table("Between models (within the set)", headers, per_pair, result.comparisons))
    for r in result.results:
        if r.bounds is not None:
            console.print(Text(f"* {r.model}: {r.bounds}; numbers within the set come from the lower bounds"))
        elif any(o.mass_upper - o.mass > UNDECIDED_RELATIVE * o.mass for o in r.outcomes):
            undecided = r.coverage_upper - r.coverage
            console.print(
                Text(f"note: {r.model}: undecided UTF-8 mass up to {undecided:.2g} (absolute), counted in mass_upper")
            )
