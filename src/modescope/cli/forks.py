"""`modescope forks`: the forking tokens along the greedy completion, where the final outcome gets decided."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modescope.cli.common import (
    Chat,
    Device,
    Dtype,
    Models,
    PromptFile,
    PromptsFile,
    PromptText,
    Resume,
    SetStore,
    Template,
    load_models,
    make_console,
    prepare_output,
    prompt_from_options,
    user_errors,
)
from modescope.cli.prompt_sets import over_prompt_set, prompt_set_given, refuse_in_prompt_set
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy
from modescope.server_options import MaxConcurrency, MaxLogprobs, Tokenizer

if TYPE_CHECKING:
    from rich.console import Console


def forks(
    model: Models = None,
    prompt: PromptText = None,
    prompt_file: PromptFile = None,
    prompts_file: PromptsFile = None,
    template: Template = None,
    store_path: SetStore = None,
    resume: Resume = False,
    chat: Chat = False,
    samples: Annotated[int, typer.Option(help="Continuations sampled per alternative token.")] = 8,
    threshold: Annotated[float, typer.Option(help="Alternatives at or above this probability are followed.")] = 0.05,
    max_alternatives: Annotated[int, typer.Option(help="Alternatives per position, the mainline token included.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Length of the mainline, in tokens.")] = 32,
    outcome_regex: Annotated[
        str | None, typer.Option(help="Outcome = this regex's group 1 (or match); default: the last sentence.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    top: Annotated[int, typer.Option(help="Forking positions to list.")] = 5,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every position's outcomes as JSON.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the mainline shaded by outcome shift as HTML.")] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Forking tokens: where along the greedy completion the final outcome gets decided."""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes.forks import forks

        set_args = (prompts_file, prompt, prompt_file, template, store_path, resume)
        if prompt_set_given(*set_args):
            keys: dict[str, Any] = {
                "samples": samples,
                "threshold": threshold,
                "max_alternatives": max_alternatives,
            }
            keys |= {"max_tokens": max_tokens, "outcome_regex": outcome_regex, "seed": seed}
            refuse_in_prompt_set({"--top": top != 5})
            over_prompt_set("forks", keys, model, chat, None, json_path, html, device, dtype, locals())
            return

        the_prompt = prompt_from_options(prompt, prompt_file, chat)
        prepare_output(json_path, "--json")
        prepare_output(html, "--html")
        from modescope import resources

        resources.check_command(  # before any model loads: refuse what cannot fit in memory
            "forks",
            model or list(DEFAULT_MODELS),
            the_prompt,
            device,
            dtype,
            lambda r: resources.forks_parts(r, max_tokens, samples, threshold, max_alternatives),
            tokenizer,
        )
        console = make_console()
        policy = load_policy(trust_remote_code, allow_pickle)
        backends = load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        with console.status("sampling from every alternative along each model's mainline"):  # as ms.forks
            found = forks(
                backends,
                the_prompt,
                samples=samples,
                threshold=threshold,
                max_alternatives=max_alternatives,
                max_tokens=max_tokens,
                outcome_regex=outcome_regex,
                seed=seed,
            )
        for name, result in found.results.items():
            _print_forks(name, result, console, top)
        if json_path is not None:
            json_path.write_text(found.to_json())
            console.print(f"wrote {json_path}")
        if html is not None:
            found.save_html(html)
            console.print(f"wrote {html}")


def _print_forks(name: str, result: Any, console: Console, top: int) -> None:
    from rich.table import Table

    table = Table(title=f"{name}: forking tokens (largest shift of the outcome distribution)", title_justify="left")
    for column in ["position", "token", "shift (TV)", "most likely outcome after it"]:
        table.add_column(column, justify="right" if column in ("position", "shift (TV)") else "left")
    for fork in result.forks(top):
        best = max(fork.outcomes.items(), key=lambda kv: kv[1]) if fork.outcomes else ("", 0.0)
        table.add_row(str(fork.position), repr(fork.token), f"{fork.change_score:.2f}", f"{best[1]:.0%} {best[0]!r}")
    console.print(table)
