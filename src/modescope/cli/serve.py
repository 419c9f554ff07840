"""`modescope serve`: the web playground.

Kept light at import time (typer and light modules only): fastapi, uvicorn and torch are imported inside the
command, so registering it does not slow down `modescope --help`.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modescope.cli.common import make_console, user_errors
from modescope.errors import ModescopeError
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy
from modescope.server_options import MaxConcurrency, MaxLogprobs, ServerOptions, Tokenizer

if TYPE_CHECKING:
    from modescope.models.safety import LoadPolicy

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
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A host name browsers may use to reach the server (repeat for several; for --host with --token, "
            "or a proxy). Requests naming another host than these, localhost or the server's address are refused "
            "(the DNS-rebinding defence; bound to loopback, only localhost and loopback addresses are answered)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16 or float16.")
    ] = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Web playground: two models side by side, token probabilities, branching, multiverse and probes."""
    from modescope.web.security import check_allowed_hosts

    with user_errors():
        check_binding(host, port, token)
        hosts = [*check_allowed_hosts(allow_host or []), *([host] if is_loopback(host) else [])]
        policy = load_policy(trust_remote_code, allow_pickle)
        app, names = _build(model, device, dtype, token, (tokenizer, max_concurrency, max_logprobs), hosts, policy)
        check_port(host, port)

    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    console = make_console()
    console.print(f"modescope playground serving {', '.join(names)}")
    console.print(f"open {url}  (Ctrl+C stops it)")
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning")


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken (or an address this machine does not have) before the server starts."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        raise ModescopeError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None


def _build(
    model: list[str] | None,
    device: str,
    dtype: str,
    token: str | None,
    server: tuple[list[str] | None, int | None, int | None] = (None, None, None),
    allowed_hosts: Sequence[str] = (),
    policy: LoadPolicy | None = None,
) -> tuple[Any, list[str]]:
    """The app and the names it serves. Explicit models are loaded now; without --model every installed
    preset is served, the two defaults loaded now and the others on first use. `server` holds the
    --tokenizer, --max-concurrency and --max-logprobs values, for the NAME@URL models; `policy` the
    --trust-remote-code and --allow-pickle opt-ins, for every model."""
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
    opt_ins = policy.for_load() if policy is not None else {}
    lazy = [
        LazyModel(n, functools.partial(load, n, device=device, dtype=dtype, **options.for_model(n), **opt_ins))
        for n in names
    ]
    app = create_app(lazy, token=token, allowed_hosts=allowed_hosts)
    eager = names if model else names[:2]
    for name in eager:
        print(f"loading {name} ...", flush=True)
        preload(app, [name])
    return app, names
