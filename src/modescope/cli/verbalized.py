"""`modescope verbalized`: Verbalized Sampling's stated probabilities against the model's real ones.

Only typer and light modules are imported at the top; the library and torch load inside the command. The
model option is its own (one model, a default preset), not the shared one of the probe commands.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modescope.cli.common import check_chat_options, load_models, make_console, prepare_output, user_errors
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy

if TYPE_CHECKING:
    from rich.console import Console

    from modescope.remedies.stated import StatedVsReal

Model = Annotated[
    str,
    typer.Option("--model", "-m", help="Preset, folder, .gguf file, HF id, or NAME@URL (a model behind a server)."),
]
ChatOption = Annotated[bool, typer.Option(help="Render both prompts as the user message through the chat template.")]
SystemOption = Annotated[str | None, typer.Option(help="System message (with --chat).")]


def verbalized_command(
    prompt: Annotated[str, typer.Argument(help="The prompt, e.g. 'Name a colour.'")],
    model: Model = "smollm2-135m-instruct",
    k: Annotated[int, typer.Option("-k", help="Responses asked for per generation (2 to 20).")] = 5,
    n: Annotated[int, typer.Option("-n", "--n", help="Verbalized Sampling generations.")] = 8,
    direct_n: Annotated[int, typer.Option("--direct-n", help="Direct samples the frequencies come from.")] = 64,
    max_tokens: Annotated[int, typer.Option(help="Tokens per generation at most (both kinds).")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed of both samplings.")] = 0,
    chat: ChatOption = False,
    system: SystemOption = None,
    png: Annotated[Path | None, typer.Option(help="Write the calibration plot (PNG).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every row and generation as JSON.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Ask for k responses with probabilities (Verbalized Sampling), and compare the stated probabilities with
    the model's exact ones under the plain prompt and with how often it gives each response when sampled."""
    with user_errors():
        from modescope.errors import ModescopeError
        from modescope.models.base import ChatPrompt
        from modescope.remedies.stated import check_settings, stated_vs_real

        check_settings(k, n, direct_n, max_tokens)
        if not prompt.strip():
            raise ModescopeError("the prompt is empty; give a non-empty prompt")
        check_chat_options(chat, system, "")
        prepare_output(png, "--png")
        prepare_output(json_path, "--json")
        console = make_console()
        policy = load_policy(trust_remote_code, allow_pickle)
        (backend,) = load_models([model], device, dtype, console, policy=policy)
        the_prompt = ChatPrompt(prompt, system) if chat else prompt
        with console.status("sampling") as status:
            result = stated_vs_real(backend, the_prompt, k, n, direct_n, max_tokens, seed, progress=status.update)
        print_stated(result, console)
        if json_path is not None:
            from modescope.jsonsafe import finite_json

            json_path.write_text(finite_json(result.to_dict()))
            console.print(f"wrote {json_path}")
        if png is not None:
            from modescope.viz.calibration_plot import plot_calibration

            plot_calibration(result, png)
            console.print(f"wrote {png}")


def _number(value: float, form: str) -> str:
    return format(value, form) if math.isfinite(value) else "–"


def print_stated(result: StatedVsReal, console: Console) -> None:
    """The rows (most stated first), then the parse rate, what could not be read, and both correlations."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{result.model}: stated vs real ({result.k} responses × {result.n_vs} generations)")
    for column in ("response", "listed", "stated", "stated share", "exact share", "log P exact", "direct freq"):
        table.add_column(column, justify="left" if column == "response" else "right")
    for row in sorted(result.rows, key=lambda r: -r.stated_share):
        table.add_row(
            Text(row.text),  # Text: a response like "[red]" is shown, not read as markup
            f"{row.listed}/{result.n_vs}",
            _number(row.stated, ".2f"),
            _number(row.stated_share, ".3f"),
            _number(row.exact_share, ".3f"),
            _number(row.exact_logprob, ".2f"),
            f"{row.direct_count}/{result.n_direct}",
        )
    console.print(table)
    complete = sum(p.complete for p in result.parses)
    console.print(
        f"parse rate {_number(result.parse_rate, '.0%')} ({complete}/{len(result.parses)} generations complete); "
        f"{result.responses_parsed} responses read, {result.unparsed} unparsed pieces",
        highlight=False,
    )
    problems = Counter(p.problem for p in result.parses if p.problem)
    for problem, count in problems.most_common(3):
        console.print(Text(f"  {count}× {problem}"))
    for name, value, reason in (
        ("exact share", result.spearman_exact, result.spearman_exact_reason),
        ("direct frequency", result.spearman_frequency, result.spearman_frequency_reason),
    ):
        shown = _number(value, "+.2f") if math.isfinite(value) else f"n/a ({reason})"
        console.print(Text(f"Spearman stated vs {name}: {shown}"))
    console.print(f"direct samples equal to a listed response: {_number(result.direct_matched, '.0%')}")
    for note in result.notes:
        console.print(Text(f"note: {note}"))
