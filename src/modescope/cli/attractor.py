"""`modescope attractor`: perturb the greedy completion and measure how often and how fast it comes back."""

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
    PromptFile,
    PromptsFile,
    PromptText,
    Resume,
    SetStore,
    Template,
    load_models,
    make_console,
    metric_table,
    prepare_output,
    prompt_from_options,
    user_errors,
)
from modescope.cli.prompt_sets import over_prompt_set, prompt_set_given, refuse_in_prompt_set
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy
from modescope.server_options import MaxConcurrency, MaxLogprobs, Tokenizer

if TYPE_CHECKING:
    from rich.console import Console


class Ending(StrEnum):
    sentence = "sentence"
    edit = "edit"
    embedding = "embedding"


def attractor(
    model: Models = None,
    prompt: PromptText = None,
    prompt_file: PromptFile = None,
    prompts_file: PromptsFile = None,
    template: Template = None,
    store_path: SetStore = None,
    resume: Resume = False,
    chat: Chat = False,
    edit: Annotated[
        list[str] | None, typer.Option("--edit", help="I:J:TEXT replaces characters I..J of the completion; repeat.")
    ] = None,
    swap_positions: Annotated[int, typer.Option(help="Evenly spaced positions for token swaps (0 = none).")] = 5,
    position: Annotated[list[int] | None, typer.Option("--position", help="Swap at this token index; repeat.")] = None,
    alternatives: Annotated[int, typer.Option(help="Swap in the k-th likeliest token for k = 2..K.")] = 3,
    detour: Annotated[
        list[int] | None, typer.Option("--detour", help="Sampled detour at this token index; repeat.")
    ] = None,
    detour_tokens: Annotated[int, typer.Option(help="Tokens sampled per detour.")] = 3,
    max_tokens: Annotated[int, typer.Option(help="Length of the mainline, in tokens.")] = 48,
    ending: Annotated[Ending, typer.Option(help="When an ending counts as converged.")] = Ending.sentence,
    threshold: Annotated[float, typer.Option(help="Similarity threshold for --ending edit or embedding.")] = 0.9,
    seed: Annotated[int, typer.Option(help="Seed of the sampled detours.")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every run and the aggregates as JSON.")
    ] = None,
    html: Annotated[Path | None, typer.Option(help="Write the aligned runs as a self-contained HTML page.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of basin share and distances per model.")] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Perturb the greedy completion, regenerate every perturbation in one batch, and measure how often and how
    fast it comes back to the same text (the basin share)."""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes.attractors import AttractorPlan, Edit, attractor

        set_args = (prompts_file, prompt, prompt_file, template, store_path, resume)
        if prompt_set_given(*set_args):
            keys: dict[str, Any] = {
                "edits": edit or [],
                "swap_positions": swap_positions,
                "alternatives": alternatives,
            }
            keys |= {"detours": detour or [], "max_tokens": max_tokens, "criterion": ending.value}
            keys |= {"threshold": threshold, "seed": seed}
            refuse_in_prompt_set(
                {"--position": bool(position), "--detour-tokens": detour_tokens != 3, "--plot": bool(plot)}
            )
            over_prompt_set("attractor", keys, model, chat, None, json_path, html, device, dtype, locals())
            return

        the_prompt = prompt_from_options(prompt, prompt_file, chat)
        plan = AttractorPlan(
            edits=[Edit.parse(e) for e in edit or []],
            swap_positions=swap_positions,
            positions=position,
            alternatives=alternatives,
            detour_positions=detour or [],
            detour_tokens=detour_tokens,
            seed=seed,
        )
        for path, what in ((json_path, "--json"), (html, "--html"), (plot, "--plot")):
            prepare_output(path, what)
        from modescope import resources

        inserted = max([detour_tokens, *(len(e.text.encode("utf-8")) for e in plan.edits)])
        edits, detours, positions = len(plan.edits), len(plan.detour_positions), len(position) if position else None
        resources.check_command(  # before any model loads: refuse what cannot fit in memory
            "attractor",
            model or list(DEFAULT_MODELS),
            the_prompt,
            device,
            dtype,
            lambda r: resources.attractor_parts(
                r, max_tokens, swap_positions, alternatives, positions, edits, detours, inserted
            ),
            tokenizer,
        )
        console = make_console()
        policy = load_policy(trust_remote_code, allow_pickle)
        backends = load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        with console.status("mainlines and perturbations"):  # the same experiment as ms.attractor
            results = attractor(
                backends,
                the_prompt,
                edits=plan.edits,
                swap_positions=swap_positions,
                positions=position,
                alternatives=alternatives,
                detours=plan.detour_positions,
                detour_tokens=detour_tokens,
                max_tokens=max_tokens,
                ending=ending.value,
                threshold=threshold,
                seed=seed,
            )
        _print_attractors(results.results, console)
        if json_path is not None:
            json_path.write_text(results.to_json())
            console.print(f"wrote {json_path}")
        if html is not None:
            results.save_html(html)
            console.print(f"wrote {html}")
        if plot is not None:
            from modescope.viz.attractor_plot import plot_attractors

            plot_attractors(results.results, plot)
            console.print(f"wrote {plot}")


def _print_attractors(results: list[Any], console: Console) -> None:
    from rich.table import Table

    for result in results:
        console.rule(f"{result.model}: mainline")
        console.print(result.mainline.text, markup=False)
        runs = Table(title_justify="left")
        for column in ["perturbation", "rejoins after", "confidence on detour", "ending"]:
            runs.add_column(column, justify="left" if column == "perturbation" else "right")
        for r in result.runs:
            distance = "never" if r.reconvergence_tokens is None else f"{r.reconvergence_tokens} tokens"
            runs.add_row(
                r.perturbation.label, distance, f"{r.divergent_confidence:.2f}", "same" if r.converged else "differs"
            )
        console.print(runs)
    per_model: list[tuple[str, Callable[[Any], str]]] = [
        ("perturbations", lambda r: str(len(r.runs))),
        ("basin share (rejoined)", lambda r: f"{r.basin_share:.0%}"),
        ("ending converged", lambda r: f"{r.ending_share:.0%}"),
        ("median tokens to rejoin", lambda r: f"{r.median_distance:g}"),
    ]
    console.print(metric_table("Attractors", [r.model for r in results], per_model, results))
