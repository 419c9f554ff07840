"""The playground's web hardening: a Host check against DNS rebinding, and security headers on every answer.

DNS rebinding: a page on attacker.example can make its own name resolve to 127.0.0.1; the browser then
treats the playground as the same origin as the attacker's page and lets it read every answer. Only the Host
header gives that away (it still says attacker.example), so, as Jupyter does, the playground answers only
requests whose Host names this server (`host_allowed`); anything else gets 403 with a JSON error.

Headers: no response carries a CORS header, so other origins can send requests but never read the answers
(a cross-origin JSON POST is stopped by its failed preflight). Every response says `nosniff`, sends no
Referer (the page URL may hold the token), may not be framed, and is not readable as a resource by other
origins. HTML gets `PAGE_POLICY`, anything else (JSON, scripts, styles) a policy that allows nothing.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from collections.abc import Collection, Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modescope.errors import ModescopeError


def _source_hash(text: str) -> str:
    """The CSP source expression allowing exactly this inline script or style element."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def _page_policy() -> str:
    # The multiverse panel shows the multiverse page in a srcdoc iframe, which inherits this policy: its
    # one inline script and style element are allowed by hash, so no other inline code can run.
    from modescope.viz.multiverse_html import SCRIPT, STYLE

    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' {_source_hash(SCRIPT)}",
            f"style-src 'self' {_source_hash(STYLE)}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


PAGE_POLICY = _page_policy()
# JSON, scripts and styles are never documents of ours: opened directly, they may run and load nothing.
RESOURCE_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
# FastAPI's /docs and /redoc pages load Swagger UI / ReDoc from jsdelivr and start it with an inline script.
# They hold no model text and no token; they keep working, and still may not be framed.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "worker-src blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",  # frame-ancestors 'none' for browsers that predate it
    "cross-origin-resource-policy": "same-origin",
}


# --- the Host check ------------------------------------------------------------------------------------------


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # a dual-stack socket reports an IPv4 connection as ::ffff:a.b.c.d
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def _is_loopback_ip(text: str) -> bool:
    address = _ip(text)
    return address is not None and address.is_loopback


def host_name(host: str) -> str:
    """The name or address in a Host header, without port, brackets, case or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def host_allowed(host: str | None, local: str | None, allowed: Collection[str] = ()) -> bool:
    """Whether a request whose Host header is `host`, arriving at local address `local`, names this server.

    Always accepted: localhost, a loopback address, and the address the connection arrived at (a real
    server's is an IP address, which no DNS answer can rebind; an in-process test client's is its own host
    name), then every name in `allowed`. Any other Host is refused, except on a connection that came in over
    a network interface while no names are listed: the CLI exposes a server only with a token, which a page
    rebound to its address does not have, so the API stays closed to it.
    """
    if not host:
        return False
    name = host_name(host)
    if name == "localhost" or _is_loopback_ip(name) or (local is not None and name == local.lower()):
        return True
    if allowed:
        return name in allowed
    return local is not None and _ip(local) is not None and not _is_loopback_ip(local)


def check_allowed_hosts(names: Iterable[str]) -> tuple[str, ...]:
    """The --allow-host names, normalized; a URL, a port or an empty name is refused with what to give."""
    checked = []
    for name in names:
        plain = host_name(name)
        if not plain or any(c in name for c in "/@?#* ") or plain != name.strip().lower().strip("[]").rstrip("."):
            raise ModescopeError(
                f"--allow-host takes a host name or address, without scheme, port or path (got {name!r})"
            )
        checked.append(plain)
    return tuple(checked)


def _refusal(host: str | None) -> bytes:
    shown = repr(host) if host else "none"
    message = (
        f"this playground answers only requests for its own address (Host {shown} is not one): open it as "
        "http://127.0.0.1:PORT/ or http://localhost:PORT/, or start it with --allow-host NAME"
    )
    return json.dumps({"error": message}).encode("utf-8")


# --- the middleware ------------------------------------------------------------------------------------------


class Hardening:
    """ASGI middleware: refuse requests whose Host does not name this server, add the security headers."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = (), docs_paths: Iterable[str | None] = ()) -> None:
        self.app = app
        self.allowed = frozenset(check_allowed_hosts(allowed_hosts))
        self.docs_paths = frozenset(path for path in docs_paths if path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
        local = scope.get("server")
        if not host_allowed(host, str(local[0]) if local else None, self.allowed):
            await self._refuse(scope, send, host)
            return
        if scope["type"] == "http":
            send = self._secured(scope["path"], send)
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, host: str | None) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = _refusal(host)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self._secured(scope["path"], send)({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _secured(self, path: str, send: Send) -> Send:
        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in HEADERS.items():
                    headers.setdefault(key, value)
                headers.setdefault("content-security-policy", self._policy(path, headers.get("content-type", "")))
            await send(message)

        return secured

    def _policy(self, path: str, content_type: str) -> str:
        if not content_type.startswith("text/html"):
            return RESOURCE_POLICY
        return DOCS_POLICY if path in self.docs_paths else PAGE_POLICY
