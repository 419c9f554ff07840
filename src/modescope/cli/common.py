"""What the commands share: the console, user errors, output paths, prompts, candidate sets, model loading,
strict JSON, metric tables and the typer option aliases.

The bottom of the CLI layer: it imports no other `modescope.cli` module, and only typer and light modescope
modules at the top (the heavy ones load inside the helpers), so every command module can use it freely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modescope.errors import ModescopeError
from modescope.server_options import ServerOptions

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from modescope.models.base import Backend, ChatPrompt
    from modescope.models.safety import LoadPolicy


class Tokenizations(StrEnum):
    all = "all"
    canonical = "canonical"


Models = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        help="Preset, folder, .gguf file, HF id, or NAME@URL (a model behind an OpenAI-compatible server, e.g. "
        "smollm2-135m-instruct@http://127.0.0.1:8000/v1); repeat to compare. Default: both presets.",
    ),
]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
Dtype = Annotated[str, typer.Option(help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16 or float16.")]
PromptText = Annotated[str | None, typer.Option("--prompt", help="The prompt text.")]
PromptFile = Annotated[Path | None, typer.Option(help="Read the prompt from a UTF-8 file (kept verbatim).")]
Chat = Annotated[bool, typer.Option(help="Render the prompt as a user message through the chat template.")]
System = Annotated[str | None, typer.Option(help="System message (with --chat).")]
Prefill = Annotated[str, typer.Option(help="Start of the assistant's reply (with --chat).")]

# The options of a run over a prompt set (see cli/prompt_sets.py), shared by the probe commands and `frontier`.
PromptsFile = Annotated[
    str | None,
    typer.Option(
        "--prompts-file",
        help="Run over a prompt set instead of one prompt: a .jsonl file (id, prompt, other keys kept), a .txt file "
        "(one prompt per line), or a built-in set (open-ended). Stored per prompt and model in --store.",
        rich_help_panel="Prompt sets",
    ),
]
SetStore = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Results store of a --prompts-file run (default ./modescope-results).",
        rich_help_panel="Prompt sets",
    ),
]
Resume = Annotated[
    bool,
    typer.Option(help="Continue an interrupted --prompts-file run of the same probe.", rich_help_panel="Prompt sets"),
]
Template = Annotated[
    str | None,
    typer.Option(help='Wrap each prompt of the set, e.g. "Q: ${prompt}\\nA:".', rich_help_panel="Prompt sets"),
]


def make_console(stderr: bool = False) -> Console:
    """A console that prints text as given (no automatic highlighting of numbers and paths)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a user's mistake as one clear line and exit with code 2, without a traceback."""
    try:
        yield
    except ModescopeError as exc:
        make_console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        raise typer.Exit(2) from None


def prepare_output(path: Path | None, what: str) -> None:
    """Refuse an output path that cannot be written before any model time is spent."""
    if path is None:
        return
    if path.is_dir():
        raise ModescopeError(f"{what} path '{path}' is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModescopeError(f"cannot create the folder for {what} '{path}': {exc.strerror}") from exc


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """The prompt text of --prompt or --prompt-file (exactly one of them), refused when empty."""
    from modescope.probes.candidates import read_text_file

    if (prompt is None) == (prompt_file is None):
        raise ModescopeError("give exactly one of --prompt and --prompt-file")
    text = prompt if prompt is not None else read_text_file(prompt_file, "prompt file")  # type: ignore[arg-type]
    if not text:
        raise ModescopeError("the prompt is empty; give a non-empty prompt")
    return text


def prompt_from_options(
    prompt: str | None, prompt_file: Path | None, chat: bool, system: str | None = None, prefill: str = ""
) -> str | ChatPrompt:
    """The prompt the options describe: plain text, or a chat prompt rendered through each model's template."""
    from modescope.models.base import ChatPrompt

    text = read_prompt(prompt, prompt_file)
    check_chat_options(chat, system, prefill)
    return ChatPrompt(text, system, prefill) if chat else text


def check_chat_options(chat: bool, system: str | None, prefill: str) -> None:
    """Refuse --system and --prefill without --chat."""
    if not chat and (system is not None or prefill):
        raise ModescopeError("--system and --prefill need --chat")


def prompt_text(prompt: str | ChatPrompt) -> str:
    """The text a user gave: the prompt itself, or a chat prompt's user message."""
    return prompt if isinstance(prompt, str) else prompt.user


def candidates(
    integers: tuple[int, int] | None, choices: list[str] | None, choices_file: Path | None, limit: int
) -> list[str]:
    """The candidate set of --integers, --choices or --choices-file (exactly one), at most `limit` of them."""
    from modescope.probes import candidates as cands

    given = sum(x is not None and x != [] for x in (integers, choices, choices_file))
    if given != 1:
        raise ModescopeError("give exactly one candidate set: --integers LO HI, --choices (repeated) or --choices-file")
    if integers is not None:
        return cands.integers(integers[0], integers[1], limit)
    if choices:
        return cands.choices(choices, limit)
    return cands.choices_from_file(choices_file, limit)  # type: ignore[arg-type]


def load_models(
    names: list[str],
    device: str,
    dtype: str,
    console: Console,
    tokenizer: list[str] | None = None,
    max_concurrency: int | None = None,
    max_logprobs: int | None = None,
    policy: LoadPolicy | None = None,
) -> list[Backend]:
    """Load the models of a command; the server options reach the NAME@URL models only, and are checked
    (with the names) before any model loads. `policy` holds --trust-remote-code and --allow-pickle."""
    from modescope.models import PRESETS, load, preset_cached
    from modescope.models.remote import is_remote
    from modescope.precision import is_reduced
    from modescope.precision import label as precision_label

    if len(set(names)) != len(names):
        raise ModescopeError(f"a model is listed twice ({', '.join(names)}); name each model once")
    server = ServerOptions.resolve(tokenizer, max_concurrency, max_logprobs, names)
    backends = []
    for name in names:
        first_time = name in PRESETS and PRESETS[name].installed() and not preset_cached(PRESETS[name])
        note = " (first use: converting the GGUF once, 5-20 s)" if first_time else ""
        doing = "connecting to" if is_remote(name) else "loading"
        with console.status(f"{doing} {name}{note}"):
            opt_ins = policy.for_load() if policy is not None else {}
            backends.append(load(name, device=device, dtype=dtype, **server.for_model(name), **opt_ins))
        if is_reduced(backends[-1].capabilities.precision):  # results say so too (metadata, pages, reports)
            console.print(
                f"{name}: {precision_label(str(backends[-1].capabilities.precision))}", style="yellow", markup=False
            )
    return backends


def strict_json(data: Any) -> str:
    """`data` as JSON, with non-finite numbers written as null (strict JSON has no NaN or Infinity)."""
    from modescope.jsonsafe import finite_json

    return finite_json(data)


def metric_table(
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


def named_metric(name: str, metrics_of: Callable[[Any], dict[str, float]]) -> Callable[[Any], str]:
    """A table cell: the metric `name` of an item, to four significant digits."""
    return lambda item: f"{metrics_of(item)[name]:.4g}"
