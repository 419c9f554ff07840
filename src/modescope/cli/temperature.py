"""`modescope temperature`: diversity against temperature per model, and whether one temperature turns the
base model into the tuned one."""

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
    Tokenizations,
    candidates,
    load_models,
    make_console,
    prepare_output,
    prompt_from_options,
    strict_json,
    user_errors,
)
from modescope.cli.prompt_sets import over_prompt_set, prompt_set_given, refuse_in_prompt_set
from modescope.errors import ModescopeError
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy
from modescope.server_options import MaxConcurrency, MaxLogprobs, Tokenizer

if TYPE_CHECKING:
    from rich.console import Console


def temperature_command(
    model: Models = None,
    prompt: PromptText = None,
    prompt_file: PromptFile = None,
    prompts_file: PromptsFile = None,
    template: Template = None,
    store_path: SetStore = None,
    resume: Resume = False,
    chat: Chat = False,
    temperature: Annotated[
        list[float] | None, typer.Option("--temperature", help="Temperature of the sweep; repeat.")
    ] = None,
    n: Annotated[int, typer.Option("-n", "--n", help="Completions per model and temperature.")] = 16,
    max_tokens: Annotated[int, typer.Option(help="Tokens per completion at most.")] = 48,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    integers: Annotated[
        tuple[int, int] | None, typer.Option(metavar="LO HI", help="Outcome-level test on these integers.")
    ] = None,
    choices: Annotated[list[str] | None, typer.Option("--choices", help="Outcome-level test on these answers.")] = None,
    tokenizations: Annotated[
        Tokenizations, typer.Option(help="Spellings counted by the outcome-level test.")
    ] = Tokenizations.all,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the sweep and the fits as JSON.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG: metrics vs temperature, and divergence vs tau.")
    ] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Diversity vs temperature per model, and "is it just temperature?": can one temperature turn the first
    model (the base) into the second (the tuned one)?"""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes import temperature as probe

        set_args = (prompts_file, prompt, prompt_file, template, store_path, resume)
        if prompt_set_given(*set_args):
            keys: dict[str, Any] = {"temperatures": temperature, "n": n, "max_tokens": max_tokens, "seed": seed}
            keys |= {"integers": integers, "choices": choices, "tokenizations": tokenizations.value}
            refuse_in_prompt_set({"--plot": plot is not None})
            over_prompt_set("temperature", keys, model, chat, None, json_path, None, device, dtype, locals())
            return

        the_prompt = prompt_from_options(prompt, prompt_file, chat)
        temperatures = temperature or list(probe.DEFAULT_TEMPERATURES)
        if any(not (t >= 0) for t in temperatures):
            raise ModescopeError("temperatures must be 0 (greedy) or positive")
        if n < 1 or max_tokens < 1:
            raise ModescopeError("-n and --max-tokens must be at least 1")
        cands = candidates(integers, choices, None, 100_000) if (integers or choices) else None
        prepare_output(json_path, "--json")
        prepare_output(plot, "--plot")
        from modescope import resources

        resources.check_command(  # before any model loads: refuse what cannot fit in memory
            "temperature",
            model or list(DEFAULT_MODELS),
            the_prompt,
            device,
            dtype,
            lambda r: resources.temperature_parts(r, n, max_tokens),
            tokenizer,
        )
        console = make_console()
        policy = load_policy(trust_remote_code, allow_pickle)
        backends = load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        with console.status("sweeping temperatures") as status:
            sweep = probe.temperature_sweep(backends, the_prompt, temperatures, n, max_tokens, seed, status.update)
            fits = []
            if len(backends) >= 2:  # the same fits as ms.temperature_fit
                found = probe.fit_pair(
                    backends[0], backends[1], the_prompt, cands, tokenizations.value, seed=seed, progress=status.update
                )
                fits = found.fits
                for notice in found.notices:
                    if notice.startswith("token-level"):
                        console.print(notice)
                if cands is None and not fits:
                    console.print("outcome-level test skipped: give a candidate set (--integers LO HI or --choices)")
        _print_sweep(sweep, fits, console)
        if json_path is not None:
            json_path.write_text(strict_json(probe.report_dict(sweep, fits)))
            console.print(f"wrote {json_path}")
        if plot is not None:
            from modescope.viz.temperature_plot import plot_temperature

            plot_temperature(sweep, fits, plot)
            console.print(f"wrote {plot}")


def _print_sweep(sweep: Any, fits: list[Any], console: Console) -> None:
    from rich.table import Table

    names = ["mean_entropy_bits", "distinct_2", "self_bleu", "embedding_diversity", "equivalence_classes"]
    table = Table(title="Diversity vs temperature", title_justify="left")
    for column in ["model", "T", *names]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for point in sweep.points:
        table.add_row(
            point.model, f"{point.temperature:g}", *(f"{point.metrics.get(k, float('nan')):.3g}" for k in names)
        )
    console.print(table)
    if fits:
        fit_table = Table(title="Is it just temperature? (divergence in bits)", title_justify="left")
        for column in ["form", "tempered model", "to match", "tau*", "D(tau*)", "D(1)", "explained"]:
            fit_table.add_column(
                column, justify="left" if column in ("form", "tempered model", "to match") else "right"
            )
        for f in fits:
            fit_table.add_row(
                f.form,
                f.source,
                f.target,
                f"{f.tau:.3f}",
                f"{f.divergence_at_tau:.4f}",
                f"{f.divergence_at_one:.4f}",
                f"{f.explained:.1%}",
            )
        console.print(fit_table)
