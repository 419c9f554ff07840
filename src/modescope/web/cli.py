"""`modescope serve`: the web playground.

Kept light at import time (typer only): fastapi, uvicorn and torch are imported inside the command, so
registering it does not slow down `modescope --help`.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Annotated, Any

import typer

from modescope.errors import ModescopeError
from modescope.server_options import MaxConcurrency, MaxLogprobs, ServerOptions, Tokenizer

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, port: int, token: str | None) -> None:
    """Refuse an exposed address without a token, and a port that is not a port."""
    if not 0 <= port <= 65535:
        raise ModescopeError(f"--port must be between 0 and 65535 (got {port})")
    if not is_loopback(host) and not token:
        raise ModescopeError(
            f"binding {host} makes the playground reachable from other machines; add --token SECRET "
            "(every request must then carry it) or bind 127.0.0.1"
        )
    if token is not None and len(token) < 8:
        raise ModescopeError("--token must be at least 8 characters")


def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Preset, folder, .gguf file, HF id, or NAME@URL (a model behind an OpenAI-compatible server); "
            "repeat to serve several. Default: every preset (the first two are preselected in the page).",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    token: Annotated[
        str | None, typer.Option(help="Secret every API request must carry (open the page as /?token=SECRET).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16 or float16.")
    ] = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
) -> None:
    """Web playground: two models side by side, token probabilities, branching, multiverse and probes."""
    from rich.console import Console

    console = Console(highlight=False)
    try:
        check_binding(host, port, token)
        app, names = _build(model, device, dtype, token, (tokenizer, max_concurrency, max_logprobs))
    except ModescopeError as exc:
        Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        raise typer.Exit(2) from None

    import uvicorn

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        Console(stderr=True, highlight=False).print(
            f"[bold red]error:[/] cannot listen on {host}:{port} ({exc.strerror}); choose another --port",
            markup=True,
            soft_wrap=True,
        )
        raise typer.Exit(2) from None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    console.print(f"modescope playground serving {', '.join(names)}")
    console.print(f"open {url}  (Ctrl+C stops it)")
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning")


def _build(
    model: list[str] | None,
    device: str,
    dtype: str,
    token: str | None,
    server: tuple[list[str] | None, int | None, int | None] = (None, None, None),
) -> tuple[Any, list[str]]:
    """The app and the names it serves. Explicit models are loaded now; without --model every installed
    preset is served, the two defaults loaded now and the others on first use. `server` holds the
    --tokenizer, --max-concurrency and --max-logprobs values, for the NAME@URL models."""
    from modescope.models import DEFAULT_MODELS, PRESETS, load
    from modescope.web.app import LazyModel, create_app, preload

    names = list(model) if model else [n for n in PRESETS if PRESETS[n].installed()]
    if not names:
        raise ModescopeError("no preset is installed; name a model with --model (make setup installs the presets)")
    if len(set(names)) != len(names):
        raise ModescopeError(f"a model is listed twice ({', '.join(names)}); name each model once")
    if not model:  # the defaults first, so they are the preselected pair
        names.sort(key=lambda n: (n not in DEFAULT_MODELS, DEFAULT_MODELS.index(n) if n in DEFAULT_MODELS else 0))
    options = ServerOptions.resolve(*server, names)
    lazy = [LazyModel(n, functools.partial(load, n, device=device, dtype=dtype, **options.for_model(n))) for n in names]
    app = create_app(lazy, token=token)
    eager = names if model else names[:2]
    for name in eager:
        print(f"loading {name} ...", flush=True)
        preload(app, [name])
    return app, names
