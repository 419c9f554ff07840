"""`modescope multiverse`: the tree of likely continuations as nested blocks, its tables and figures."""

from __future__ import annotations

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
    load_models,
    make_console,
    prepare_output,
    prompt_from_options,
    strict_json,
    user_errors,
)
from modescope.cli.prompt_sets import over_prompt_set, prompt_set_given, refuse_in_prompt_set
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy
from modescope.server_options import MaxConcurrency, MaxLogprobs, Tokenizer

if TYPE_CHECKING:
    from rich.console import Console

    from modescope.models.base import Backend, ChatPrompt


def multiverse(
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
    prefix: Annotated[str, typer.Option(help="Start from this branch: text that follows the prompt.")] = "",
    depth: Annotated[int, typer.Option(help="Deepest step (tokens below the prompt and prefix).")] = 4,
    cutoff: Annotated[float, typer.Option(help="Joint probability a node needs to be listed and expanded.")] = 0.01,
    max_nodes: Annotated[int, typer.Option(help="Most nodes in the tree; expansion stops there, and says so.")] = 2000,
    merge: Annotated[
        bool, typer.Option(help="Merge sibling tokens whose text is equal after whitespace normalization.")
    ] = True,
    stop_at_eos: Annotated[bool, typer.Option(help="End a branch at the end-of-text token.")] = True,
    zoom: Annotated[
        list[str] | None,
        typer.Option(help="Renormalize the figures to the node reached by these step texts (repeat per step)."),
    ] = None,
    svg: Annotated[Path | None, typer.Option(help="Write the block figure as SVG.")] = None,
    png: Annotated[Path | None, typer.Option(help="Write the block figure as PNG.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the interactive page (click a block to zoom).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the trees as nested JSON.")] = None,
    cache: Annotated[bool, typer.Option(help="Reuse expansions cached on disk (same models, prompt, options).")] = True,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Block multiverse: the tree of likely continuations as nested blocks, for each model and their difference."""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes.multiverse import ExpansionOptions

        set_args = (prompts_file, prompt, prompt_file, template, store_path, resume)
        if prompt_set_given(*set_args):
            keys: dict[str, Any] = {
                "prefix": prefix,
                "depth": depth,
                "cutoff": cutoff,
                "max_nodes": max_nodes,
                "merge": merge,
            }
            keys["prefill"] = prefill
            unsupported = {"--no-stop-at-eos": not stop_at_eos, "--zoom": bool(zoom), "--svg": bool(svg)}
            refuse_in_prompt_set(unsupported | {"--png": bool(png), "--no-cache": not cache})
            over_prompt_set("multiverse", keys, model, chat, system, json_path, html, device, dtype, locals())
            return

        options = ExpansionOptions(depth, cutoff, max_nodes, merge, stop_at_eos)
        options.check()  # before any model is loaded
        the_prompt = prompt_from_options(prompt, prompt_file, chat, system, prefill)
        outputs = {"--svg": svg, "--png": png, "--html": html, "--json": json_path}
        for option, path in outputs.items():
            prepare_output(path, option)
        from modescope import resources

        resources.check_command(  # before any model loads: refuse what cannot fit in memory
            "multiverse",
            model or list(DEFAULT_MODELS),
            the_prompt,
            device,
            dtype,
            lambda r: resources.multiverse_parts(r, depth, cutoff, max_nodes),
            tokenizer,
            extra_text=prefix,
        )
        console = make_console()
        policy = load_policy(trust_remote_code, allow_pickle)
        backends = load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        tree = _run_multiverse(backends, the_prompt, prefix, options, cache)
        view = tree.view(tree.find(zoom)) if zoom else None
        _print_multiverse(tree, console)
        if view is not None:
            console.print(
                f"figures zoomed to {view.node.path_text()!r}: p = {view.joint:.3g}, {view.bits_gained:.2f} bits"
            )
        _write_multiverse(tree, view, svg, png, html, json_path, console)


def _run_multiverse(
    backends: list[Backend],
    prompt: str | ChatPrompt,
    prefix: str,
    options: Any,
    cache: bool,
) -> Any:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from modescope.models.hf import cache_root
    from modescope.probes.multiverse import multiverse as expand

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("expanding: 0 nodes", total=None)
        done = [0]

        def report(count: int) -> None:
            done[0] += count
            bar.update(task, description=f"expanding: {done[0]} nodes (best first, all models in each batch)")

        return expand(
            backends,
            prompt,
            prefix=prefix,
            depth=options.depth,
            cutoff=options.cutoff,
            max_nodes=options.max_nodes,
            merge=options.merge,
            stop_at_eos=options.stop_at_eos,
            cache_dir=cache_root() / "multiverse" if cache else None,
            progress=report,
        )


def _print_multiverse(tree: Any, console: Console) -> None:
    from rich.table import Table

    source = " (from the cache)" if tree.cached else f" in {tree.seconds:.1f} s"
    console.print(f"{tree.size} nodes, depth {tree.depth}, cutoff {tree.cutoff:g}{source}")
    for m, name in enumerate(tree.models):
        table = Table(title=f"{name}: most likely paths", title_justify="left")
        for column in ["joint p", "path", "entropy at the end (bits)"]:
            table.add_column(column, justify="left" if column == "path" else "right")
        leaves = [n for n in tree.nodes() if not n.listed_children(m, tree.cutoff) and (n.joint(m) or 0) >= tree.cutoff]
        for node in sorted(leaves, key=lambda n: -(n.joint(m) or 0))[:8]:
            entropy = node.values[m].entropy_bits if node.values[m] is not None else None
            table.add_row(f"{node.joint(m):.3f}", repr(node.path_text(m)), "-" if entropy is None else f"{entropy:.2f}")
        console.print(table)
    for notice in tree.notices:
        console.print(f"[yellow]note:[/] {notice}", markup=True)


def _write_multiverse(
    tree: Any,
    view: Any,
    svg: Path | None,
    png: Path | None,
    html: Path | None,
    json_path: Path | None,
    console: Console,
) -> None:
    figures = [p for p in (svg, png) if p is not None]
    if figures:
        from modescope.viz.multiverse_plot import plot_multiverse

        plot_multiverse(tree, figures, view=view)
    if html is not None:
        from modescope.viz.multiverse_html import write_multiverse_html

        write_multiverse_html(tree.to_dict(), html)
    if json_path is not None:
        json_path.write_text(strict_json(tree.to_dict()))
    for path in [*figures, html, json_path]:
        if path is not None:
            console.print(f"wrote {path}")
