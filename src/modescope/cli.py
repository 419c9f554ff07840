"""The `modescope` command. Thin: parses options, calls the library, prints.

Heavy modules (torch, transformers, the probes) are imported inside the commands, so `modescope --help`
answers at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modescope.errors import ModescopeError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from modescope.models.base import Backend
    from modescope.probes.distribution import DistributionResult

app = typer.Typer(
    name="modescope",
    help="Observe, measure and visualize mode collapse and attractors in language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class LeadingSpace(StrEnum):
    optional = "optional"
    required = "required"
    none = "none"


class Tokenizations(StrEnum):
    all = "all"
    canonical = "canonical"


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a user's mistake as one clear line and exit with code 2, without a traceback."""
    try:
        yield
    except ModescopeError as exc:
        _console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        raise typer.Exit(2) from None


def _prepare_output(path: Path | None, what: str) -> None:
    """Refuse an output path that cannot be written before any model time is spent."""
    if path is None:
        return
    if path.is_dir():
        raise ModescopeError(f"{what} path '{path}' is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModescopeError(f"cannot create the folder for {what} '{path}': {exc.strerror}") from exc


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    from modescope.probes.candidates import read_text_file

    if (prompt is None) == (prompt_file is None):
        raise ModescopeError("give exactly one of --prompt and --prompt-file")
    text = prompt if prompt is not None else read_text_file(prompt_file, "prompt file")  # type: ignore[arg-type]
    if not text:
        raise ModescopeError("the prompt is empty; give a non-empty prompt")
    return text


def _candidates(
    integers: tuple[int, int] | None, choices: list[str] | None, choices_file: Path | None, limit: int
) -> list[str]:
    from modescope.probes import candidates as cands

    given = sum(x is not None and x != [] for x in (integers, choices, choices_file))
    if given != 1:
        raise ModescopeError("give exactly one candidate set: --integers LO HI, --choices (repeated) or --choices-file")
    if integers is not None:
        return cands.integers(integers[0], integers[1], limit)
    if choices:
        return cands.choices(choices, limit)
    return cands.choices_from_file(choices_file, limit)  # type: ignore[arg-type]


def _load_models(names: list[str], device: str, dtype: str, console: Console) -> list[Backend]:
    from modescope.models import PRESETS, load, preset_cached

    if len(set(names)) != len(names):
        raise ModescopeError(f"a model is listed twice ({', '.join(names)}); name each model once")
    backends = []
    for name in names:
        first_time = name in PRESETS and PRESETS[name].installed() and not preset_cached(PRESETS[name])
        note = " (first use: converting the GGUF once, about a minute)" if first_time else ""
        with console.status(f"loading {name}{note}"):
            backends.append(load(name, device=device, dtype=dtype))
    return backends


Models = Annotated[
    list[str] | None,
    typer.Option(
        "--model", "-m", help="Preset, folder, .gguf file or HF id; repeat to compare. Default: both presets."
    ),
]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
Dtype = Annotated[str, typer.Option(help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16 or float16.")]


@app.command()
def dist(
    model: Models = None,
    prompt: Annotated[str | None, typer.Option(help="The prompt text.")] = None,
    prompt_file: Annotated[Path | None, typer.Option(help="Read the prompt from a UTF-8 file (kept verbatim).")] = None,
    chat: Annotated[bool, typer.Option(help="Render the prompt as a user message through the chat template.")] = False,
    system: Annotated[str | None, typer.Option(help="System message (with --chat).")] = None,
    prefill: Annotated[str, typer.Option(help="Start of the assistant's reply (with --chat).")] = "",
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
    batch_size: Annotated[int, typer.Option(help="Tree nodes per forward pass.")] = 128,
    device: Device = "auto",
    dtype: Dtype = "auto",
) -> None:
    """Exact probability of every candidate answer under each model, summed over all tokenizations."""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes.distribution import check_temperature

        text = _read_prompt(prompt, prompt_file)
        if not chat and (system is not None or prefill):
            raise ModescopeError("--system and --prefill need --chat")
        cands = _candidates(integers, choices, choices_file, max_candidates)
        check_temperature(temperature)
        if batch_size < 1 or top < 1:
            raise ModescopeError("--batch-size and --top must be at least 1")
        _prepare_output(json_path, "--json")
        _prepare_output(plot, "--plot")
        console = _console()
        backends = _load_models(model or list(DEFAULT_MODELS), device, dtype, console)
        result = _run_distribution(
            backends, text, chat, system, prefill, cands, leading_space, tokenizations, batch_size, temperature
        )
        _print_distribution(result, console, top)
        if json_path is not None:
            json_path.write_text(result.to_json())
            console.print(f"wrote {json_path}")
        if plot is not None:
            from modescope.viz.distribution_plot import plot_distribution

            plot_distribution(result, plot)
            console.print(f"wrote {plot}")


def _run_distribution(
    backends: list[Backend],
    text: str,
    chat: bool,
    system: str | None,
    prefill: str,
    cands: list[str],
    leading_space: LeadingSpace,
    tokenizations: Tokenizations,
    batch_size: int,
    temperature: float,
) -> DistributionResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from modescope.models.base import ChatPrompt
    from modescope.probes.distribution import distribution

    prompt: str | ChatPrompt = ChatPrompt(text, system, prefill) if chat else text
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


def _print_distribution(result: DistributionResult, console: Console, top: int) -> None:
    from rich.table import Table

    tops = Table(title="Top outcomes (probability within the set)", title_justify="left")
    tops.add_column("rank", justify="right")
    for r in result.results:
        tops.add_column(r.model)
    ranked = [sorted(r.outcomes, key=lambda o: -o.prob)[:top] for r in result.results]
    for rank in range(min(top, len(result.candidates))):
        tops.add_row(str(rank + 1), *(f"{o[rank].text!r}  {o[rank].prob:.1%}" for o in ranked))
    console.print(tops)

    # Metrics as rows and models as columns, so that long model names fit an 80-column terminal.
    per_model: list[tuple[str, Callable[[Any], str]]] = [
        ("coverage (mass of the set)", lambda r: f"{r.coverage:.2%}"),
        ("entropy (bits)", lambda r: f"{r.entropy_bits:.3f}"),
        ("normalized entropy", lambda r: f"{r.normalized_entropy:.3f}"),
        ("effective outcomes (2^H)", lambda r: f"{r.effective_outcomes:.1f}"),
        ("top-1", lambda r: f"{r.top1!r} {r.top1_share:.1%}"),
        ("chi² vs uniform", lambda r: f"{r.chi_square:.2f}"),
    ]
    console.print(
        _metric_table("Per model (within the set)", [r.model for r in result.results], per_model, result.results)
    )
    if result.comparisons:
        per_pair: list[tuple[str, Callable[[Any], str]]] = [
            ("KL(a‖b) bits", lambda c: f"{c.kl_ab_bits:.3f}"),
            ("KL(b‖a) bits", lambda c: f"{c.kl_ba_bits:.3f}"),
            ("Jensen-Shannon bits", lambda c: f"{c.js_bits:.3f}"),
            ("total variation", lambda c: f"{c.tv:.3f}"),
            ("Spearman rank corr.", lambda c: f"{c.spearman:+.3f}"),
        ]
        headers = [f"a={c.a}\nb={c.b}" for c in result.comparisons]
        console.print(_metric_table("Between models (within the set)", headers, per_pair, result.comparisons))


def _metric_table(
    title: str, headers: list[str], rows: list[tuple[str, Callable[[Any], str]]], items: list[Any]
) -> Table:
    """A table with one row per metric and one column per item (a model, or a pair of models)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for header in headers:
        table.add_column(header, justify="right")
    for label, cell in rows:
        table.add_row(label, *(cell(item) for item in items))
    return table


@app.command()
def models() -> None:
    """List the preset models, whether each is installed, and whether its converted copy is cached."""
    from rich.table import Table

    from modescope.models import PRESETS, preset_cached

    table = Table(title="Presets (any other model: a Hugging Face id, a folder or a .gguf file)", title_justify="left")
    for column in ["name", "kind", "installed", "cached", "package", "description"]:
        table.add_column(column, no_wrap=column != "description")
    for p in PRESETS.values():
        installed = p.installed()
        table.add_row(
            p.name,
            p.kind,
            "yes" if installed else "no",
            "yes" if preset_cached(p) else "no",
            p.package,
            p.description,
        )
    _console().print(table)


def main() -> None:
    """Entry point of the `modescope` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
