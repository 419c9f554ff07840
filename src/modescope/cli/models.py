"""`modescope models`: the presets, or what a model behind an OpenAI-compatible server offers at its tier."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from modescope.cli.common import load_models, make_console, user_errors
from modescope.errors import ModescopeError
from modescope.load_options import TrustRemoteCode, load_policy
from modescope.server_options import MaxConcurrency, MaxLogprobs, Tokenizer

if TYPE_CHECKING:
    from rich.table import Table

    from modescope.models.base import Backend


def models(
    spec: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME@URL",
            help="A model behind an OpenAI-compatible server: connect and show what it offers at its tier.",
        ),
    ] = None,
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """List the preset models, whether each is installed, and whether its converted copy is cached; or, given
    NAME@URL, connect to that server and show its capability tier and which probes work at it."""
    with user_errors():
        if spec is None:
            if tokenizer or max_concurrency is not None or max_logprobs is not None or trust_remote_code:
                raise ModescopeError(
                    "--tokenizer, --max-concurrency, --max-logprobs and --trust-remote-code need a NAME@URL argument"
                )
            _print_presets()
            return
        from modescope.models.remote import is_remote

        if not is_remote(spec):
            raise ModescopeError(
                f"'{spec}' is not NAME@URL; give a model behind a server (the served name, @, then the base URL, "
                "e.g. smollm2-135m-instruct@http://127.0.0.1:8000/v1), or no argument to list the presets"
            )
        console = make_console()
        policy = load_policy(trust_remote_code, allow_pickle=False)  # only the tokenizer loads here
        [backend] = load_models([spec], "auto", "auto", console, tokenizer, max_concurrency, max_logprobs, policy)
        try:
            console.print(_server_table(backend))
        finally:
            backend.close()


def probe_support(capabilities: Any) -> list[tuple[str, str]]:
    """Which probes work at a backend's capability tier, and how (exact numbers, bounds, or not at all)."""
    tier, chat_only, top = capabilities.tier, capabilities.chat_only, capabilities.top_k
    scores = tier != "sample-only" and not chat_only  # probes that ask about given token paths need /completions
    return [
        ("dist", "exact" if tier == "full" else f"bounds (top-{top} shown)" if scores else "no"),
        (
            "sample",
            "yes; no probabilities (text metrics only)"
            if tier == "sample-only"
            else "yes; entropy as bounds from the top alternatives"
            if capabilities.server is not None
            else "yes",
        ),
        ("temperature", "yes" if tier == "full" else "the sweep only (the τ* fits need whole distributions)"),
        ("attractor", "yes" if scores else "no (needs token log-probabilities and /v1/completions)"),
        ("forks", "yes" if scores else "no (needs token log-probabilities and /v1/completions)"),
        (
            "multiverse",
            "exact"
            if tier == "full"
            else f"nodes below the top {top} count as unexpanded"
            if scores
            else "no (needs token log-probabilities and /v1/completions)",
        ),
    ]


def _server_table(backend: Backend) -> Table:
    from rich.table import Table

    from modescope.models.remote import split_remote

    capabilities = backend.capabilities
    served, base_url = split_remote(capabilities.server or backend.name)
    table = Table(title=f"{capabilities.server}: tier {capabilities.tier}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    context = "unknown" if backend.max_context >= 1 << 30 else f"{backend.max_context:,} tokens"
    rows = [
        ("server", base_url),
        ("served name", served),
        ("tier", capabilities.tier),
        ("alternatives shown per position", capabilities.shows),
        ("scores given sequences", "yes" if capabilities.scores_sequences else "no"),
        ("chat-only", "yes" if capabilities.chat_only else "no"),
        ("vocabulary", f"{backend.vocab.size:,} tokens"),
        ("context length", context),
    ]
    rows += [(f"probe: {name}", support) for name, support in probe_support(capabilities)]
    for row in rows:
        table.add_row(*row)
    return table


def _print_presets() -> None:
    from rich.table import Table

    from modescope.models import PRESETS, preset_cached

    table = Table(
        title="Presets (any other model: a Hugging Face id, a folder, a .gguf file or NAME@URL)", title_justify="left"
    )
    for column in ["name", "kind", "installed", "cached", "description (package)"]:
        # preset names are what users type: never cut them, let the description wrap instead
        width = max(len(name) for name in PRESETS) if column == "name" else len(column)
        table.add_column(column, no_wrap=column != "description (package)", min_width=width)
    for p in PRESETS.values():
        installed = p.installed()
        cached = "yes" if preset_cached(p) else "no"
        table.add_row(p.name, p.kind, "yes" if installed else "no", cached, f"{p.description} ({p.package})")
    make_console().print(table)
