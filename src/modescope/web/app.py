"""The playground's FastAPI app: a JSON API over the probes, and the single page that uses it.

Every model call goes through one worker thread with a bounded queue (`worker.py`); a full queue answers
503 at once. Generate and regenerate requests waiting for the same model are decoded together, each with its
own seed and options, as it would have been alone up to float rounding (`batching.py`); the long calls run one
at a time. The long calls (distribution,
multiverse, attractor) answer with server-sent events: `queued`, then `progress` events, then one `result` or
`error` event; so do /api/generate/stream and /api/regenerate/stream, whose `progress` events carry each
step's new tokens per model as they are decoded (a client that leaves stops the decode), and whose `result`
is the answer of /api/generate or /api/regenerate for the same seed. Errors are JSON objects
`{"error": message}` with a 4xx status: 400 for a request the models cannot serve (the library's
ModescopeError), 401 without the token, 404 for a model that is not served, 413 for a body over the size cap,
422 for a malformed body or a value over a cap, 503 when the queue is full.

/api/generate and /api/regenerate take an optional `remedy` for mode collapse (a prompt strategy, a guide
model; see `remedy.py`); a request without one is answered exactly as before remedies existed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modescope.engine.decode import Continuation, DecodeRequest, StepToken, TokenRecord
from modescope.errors import ModescopeError
from modescope.jsonsafe import finite
from modescope.models.base import Backend, ChatPrompt
from modescope.web.batching import Piece
from modescope.web.remedy import Remedy, check_remedy, remedy_options, sent_prompt
from modescope.web.schemas import (
    GENERATE_LINKS,
    REGENERATE_LINKS,
    TOKENIZE_LINKS,
    AttractorIn,
    AttractorOut,
    Decoding,
    DistributionIn,
    DistributionOut,
    ExpandedProgressOut,
    GenerateIn,
    GenerateOut,
    Limits,
    ModelProgressOut,
    ModelsOut,
    MultiverseIn,
    MultiverseOut,
    NextIn,
    NextOut,
    PromptIn,
    RegenerateIn,
    RegenerateOut,
    RemedyIn,
    TokenizeIn,
    TokenizeOut,
    TokensOut,
    openapi_document,
    route_docs,
    stream_docs,
)
from modescope.web.security import Hardening, check_allowed_hosts
from modescope.web.worker import Busy, Worker

STATIC = Path(__file__).parent / "static"
Emit = Callable[[dict[str, Any]], None]


class ApiError(Exception):
    """An error answered as `{"error": message}` with this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class LazyModel:
    """A model served by name and loaded (in the worker thread) the first time a request needs it."""

    name: str
    load: Callable[[], Backend]


class Registry:
    """The served models by name; lazy ones are loaded on first use, in the worker thread only."""

    def __init__(self, models: Sequence[Backend | LazyModel]) -> None:
        self.order = [m.name for m in models]
        if len(set(self.order)) != len(self.order):
            raise ModescopeError(f"a model is listed twice ({', '.join(self.order)}); name each model once")
        self.loaded: dict[str, Backend] = {m.name: m for m in models if isinstance(m, Backend)}
        self.lazy: dict[str, LazyModel] = {m.name: m for m in models if isinstance(m, LazyModel)}
        self._lock = threading.Lock()

    def check(self, names: Sequence[str], limits: Limits) -> None:
        if not names:
            raise ApiError(422, "give at least one model")
        if len(names) > limits.max_models:
            raise ApiError(422, f"{len(names)} models is more than the cap of {limits.max_models} (max_models)")
        if len(set(names)) != len(names):
            raise ApiError(422, "a model is listed twice; name each model once")
        for name in names:
            if name not in self.order:
                raise ApiError(404, f"model {name!r} is not served here; served: {', '.join(self.order)}")

    def get(self, name: str) -> Backend:
        with self._lock:
            if name not in self.loaded:
                self.loaded[name] = self.lazy[name].load()
            return self.loaded[name]


# --- JSON helpers -------------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(finite(data), status_code=status)


def _error(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": "2"} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _token(t: TokenRecord) -> dict[str, Any]:
    return {
        "id": t.id,
        "text": t.text,
        "logprob": t.logprob,
        "raw_logprob": t.raw_logprob,
        "entropy_bits": t.entropy_bits,
        "special": t.special,
        "top": [{"id": a.id, "text": a.text, "logprob": a.logprob} for a in t.top],
    }


def _continuations(completions: Sequence[Continuation]) -> list[dict[str, Any]]:
    return [
        {"text": c.text, "finish_reason": c.finish_reason, "tokens": [_token(t) for t in c.tokens]} for c in completions
    ]


# --- request checks ------------------------------------------------------------------------------------------


def _location(loc: Sequence[Any]) -> str:
    """A field's path in a one-line error; a name that would break the line (a key holding a newline) is quoted."""
    return ".".join(str(p) if str(p).isprintable() else repr(p) for p in loc) or "body"


def _cap(what: str, value: int, low: int, high: int, name: str) -> None:
    if not low <= value <= high:
        raise ApiError(422, f"{what} must be between {low} and {high} (got {value}; cap: {name})")


def _text_cap(what: str, text: str | None, limits: Limits) -> None:
    if text is not None and len(text) > limits.max_prompt_chars:
        raise ApiError(
            422,
            f"{what} has {len(text):,} characters, more than the cap of {limits.max_prompt_chars:,} (max_prompt_chars)",
        )


def _prompt(spec: PromptIn, limits: Limits) -> str | ChatPrompt:
    for what, text in (("the prompt", spec.text), ("the system message", spec.system), ("the prefill", spec.prefill)):
        _text_cap(what, text, limits)
    if not spec.text:
        raise ApiError(422, "the prompt is empty; give a non-empty prompt")
    if not spec.chat:
        if spec.system is not None or spec.prefill:
            raise ApiError(422, "system and prefill need chat: true")
        return spec.text
    return ChatPrompt(spec.text, spec.system, spec.prefill)


def _decoding(spec: Decoding, limits: Limits) -> Any:
    from modescope.engine.samplers import SamplerSettings

    _cap("n", spec.n, 1, limits.max_n, "max_n")
    _cap("max_tokens", spec.max_tokens, 1, limits.max_tokens, "max_tokens")
    _cap("top_k", spec.top_k, 0, limits.max_top_k, "max_top_k")
    _cap("the number of stop strings", len(spec.stop), 0, limits.max_stop, "max_stop")
    for stop in spec.stop:
        _text_cap("a stop string", stop, limits)
    try:
        return SamplerSettings.make(**spec.sampler.model_dump())
    except ModescopeError as exc:
        raise ApiError(422, str(exc)) from None


def _prefix(backend: Backend, ids: Sequence[int], limits: Limits) -> list[int]:
    _cap("the prefix length", len(ids), 0, limits.max_prefix_tokens, "max_prefix_tokens")
    bad = [i for i in ids if not 0 <= i < backend.vocab.size]
    if bad:
        raise ModescopeError(
            f"token id {bad[0]} is not in the vocabulary of '{backend.name}' (0..{backend.vocab.size - 1})"
        )
    return list(ids)


def _encode_text(backend: Backend, text: str) -> list[int]:
    try:
        return backend.encode(text, add_special_tokens=False)
    except (ValueError, KeyError) as exc:
        raise ModescopeError(f"the tokenizer of '{backend.name}' cannot encode {text!r} ({exc})") from None


def _prompt_ids(backend: Backend, prompt: str | ChatPrompt) -> list[int]:
    try:
        return backend.prompt_ids(prompt)
    except (ValueError, KeyError) as exc:
        raise ModescopeError(f"the tokenizer of '{backend.name}' cannot encode the prompt ({exc})") from None


def _encodable(backends: Sequence[Backend], prompt: str | ChatPrompt, texts: Sequence[str] = ()) -> None:
    """Refuse (400) a prompt or text a model's tokenizer cannot encode before a probe meets it half-way, where
    the tokenizer's own error would end the stream as an internal error."""
    for backend in backends:
        _prompt_ids(backend, prompt)
        for text in texts:
            _encode_text(backend, text)


# --- remedies ------------------------------------------------------------------------------------------------


def _remedy(spec: RemedyIn | None, registry: Registry) -> Remedy | None:
    """The request's checked remedy (None without one): 422 for a value to change, 404 for a guide not served."""
    if spec is None:
        return None
    try:
        remedy = check_remedy(spec)
    except ModescopeError as exc:
        raise ApiError(422, str(exc)) from None
    if remedy.guide is not None and remedy.guide not in registry.order:
        served = ", ".join(registry.order)
        raise ApiError(404, f"remedy.guide {remedy.guide!r} is not served here; guide with one of: {served}")
    return remedy


def _sampled(
    registry: Registry, name: str, prompt: str | ChatPrompt, remedy: Remedy | None
) -> tuple[Backend, str | ChatPrompt]:
    """The backend to sample (the model, or its mixture with the guide) and the prompt it gets (rewritten)."""
    backend = registry.get(name)
    if remedy is None:
        return backend, prompt
    guide = registry.get(remedy.guide) if remedy.guide is not None else None
    return remedy.backend(backend, guide), remedy.rewrite(prompt)


def _remedied(
    result: dict[str, Any], backend: Backend, prompt: str | ChatPrompt, remedy: Remedy, before: str = ""
) -> dict[str, Any]:
    """A model's result with what the remedy did: the prompt sent, the backend sampled, the verbalized reads."""
    completions = [remedy.annotate(c, before) for c in result["completions"]]
    return result | {
        "completions": completions,
        "sent_prompt": sent_prompt(backend, prompt),
        "sampled_from": backend.name,
    }


# --- generate and regenerate: pieces for the worker's batches -------------------------------------------------


@dataclass
class _Found:
    """What a piece found when the worker prepared it (the backend sampled, the prompt sent, the branch's ids),
    for its answer."""

    backend: Backend | None = None
    sent: str | ChatPrompt = ""
    kept: list[int] = field(default_factory=list)
    edit: list[int] = field(default_factory=list)

    def sampled(self) -> Backend:
        assert self.backend is not None, "a piece answers only after the worker prepared it"
        return self.backend


@dataclass
class Plan:
    """A generate or regenerate request as the worker runs it: one piece per model (`models`, in order) and how
    its answer is made of their continuations."""

    pieces: list[Piece]
    models: list[str]
    answer: Callable[[list[list[Continuation]]], dict[str, Any]]


def _key(name: str, remedy: Remedy | None) -> Hashable:
    """Pieces with equal keys sample the same backend object, so they may share a batch: a model's own. A guide's
    mixture is a new object per request, so a guided piece shares with none."""
    return name if remedy is None or remedy.guide is None else object()


def _request(spec: Decoding, ids: list[int], sampler: Any, stop: Sequence[str]) -> DecodeRequest:
    return DecodeRequest(
        ids, spec.n, spec.max_tokens, sampler=sampler, top_k_alternatives=spec.top_k, seed=spec.seed, stop=stop
    )


def generate_plan(spec: GenerateIn, registry: Registry, limits: Limits) -> Plan:
    """n completions of the prompt per model (checked here; 4xx ApiError), one piece per model."""
    registry.check(spec.models, limits)
    prompt = _prompt(spec.prompt, limits)
    sampler = _decoding(spec, limits)
    remedy = _remedy(spec.remedy, registry)
    stop = remedy.stops(spec.stop) if remedy is not None else spec.stop
    found = [_Found() for _ in spec.models]

    def prepare(name: str, into: _Found) -> tuple[Backend, DecodeRequest]:
        into.backend, into.sent = _sampled(registry, name, prompt, remedy)
        return into.backend, _request(spec, _prompt_ids(into.backend, into.sent), sampler, stop)

    def answer(groups: list[list[Continuation]]) -> dict[str, Any]:
        results = []
        for name, into, completions in zip(spec.models, found, groups, strict=True):
            result = {"model": name, "completions": _continuations(completions)}
            results.append(result if remedy is None else _remedied(result, into.sampled(), into.sent, remedy))
        return {"results": results} | ({} if remedy is None else {"remedy": remedy.describe()})

    pieces = [
        Piece(_key(name, remedy), spec.n, functools.partial(prepare, name, into))
        for name, into in zip(spec.models, found, strict=True)
    ]
    return Plan(pieces, list(spec.models), answer)


def regenerate_plan(spec: RegenerateIn, registry: Registry, limits: Limits) -> Plan:
    """n continuations of the prompt, the kept token ids and the edited text (checked here; 4xx ApiError)."""
    registry.check([spec.model], limits)
    prompt = _prompt(spec.prompt, limits)
    sampler = _decoding(spec, limits)
    _text_cap("the edit", spec.edit, limits)
    remedy = _remedy(spec.remedy, registry)
    stop = remedy.stops(spec.stop) if remedy is not None else spec.stop
    loaded = registry.loaded.get(spec.model)
    if loaded is not None:  # refused before a stream starts, as the document's bounds say
        _prefix(loaded, spec.prefix_ids, limits)
    into = _Found()

    def prepare() -> tuple[Backend, DecodeRequest]:
        into.backend, into.sent = backend, sent = _sampled(registry, spec.model, prompt, remedy)
        into.kept = _prefix(backend, spec.prefix_ids, limits)
        into.edit = _encode_text(backend, spec.edit) if spec.edit else []
        return backend, _request(spec, [*_prompt_ids(backend, sent), *into.kept, *into.edit], sampler, stop)

    def answer(groups: list[list[Continuation]]) -> dict[str, Any]:
        backend = into.sampled()
        result = {
            "model": spec.model,
            "edit_tokens": [{"id": i, "text": backend.token_text(i)} for i in into.edit],
            "completions": _continuations(groups[0]),
        }
        if remedy is None:
            return result
        before = backend.decode([*into.kept, *into.edit])
        return _remedied(result, backend, into.sent, remedy, before) | {"remedy": remedy.describe()}

    return Plan([Piece(_key(spec.model, remedy), spec.n, prepare)], [spec.model], answer)


# --- server-sent events ---------------------------------------------------------------------------------------


class _Events:
    """Events emitted from the worker thread, read by a stream in the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def emit(self, event: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def _tokens_event(emit: Emit, model: str, tokens: Sequence[StepToken]) -> None:
    """A `progress` event of a generate stream: the tokens a model's completions just took (`TokensOut`)."""
    new = [_token(t.record) | {"completion": t.continuation, "finish_reason": t.finish_reason} for t in tokens]
    emit({"model": model, "tokens": new})


def _frame(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(finite(data), separators=(',', ':'))}\n\n"


def _last_frame(done: asyncio.Future[Any]) -> str:
    """The `result` event, or the `error` event with the status the failure would have had before the stream."""
    try:
        return _frame("result", done.result())
    except ModescopeError as exc:
        return _frame("error", {"error": str(exc), "status": 400})
    except ApiError as exc:
        return _frame("error", {"error": exc.message, "status": exc.status})
    except Exception as exc:  # an unexpected failure still ends the stream with a message
        return _frame("error", {"error": f"internal error: {type(exc).__name__}: {exc}", "status": 500})


def event_stream(
    outcome: Callable[[], Awaitable[Any]], events: _Events, waiting: int, cleanup: Callable[[], object]
) -> StreamingResponse:
    """Answer with server-sent events: `queued` (with the requests `waiting` ahead), a `progress` event per
    emitted event, then the `result` (what `outcome` answers) or an `error`. `cleanup` runs when the stream
    ends, however it ends: a client that went away stops the work it asked for."""

    async def body() -> AsyncIterator[str]:
        done = asyncio.ensure_future(outcome())
        getter: asyncio.Future[dict[str, Any]] | None = None
        try:
            yield _frame("queued", {"ahead": waiting})
            while True:
                getter = asyncio.ensure_future(events.queue.get())
                finished, _ = await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in finished:
                    break
                yield _frame("progress", getter.result())
            while not events.queue.empty():  # emitted before the end, not read yet: the worker emits in order
                yield _frame("progress", events.queue.get_nowait())
            yield _last_frame(done)
        finally:
            cleanup()
            for task in (getter, done):
                if task is not None and not task.done():
                    task.cancel()
            if done.done() and not done.cancelled():
                done.exception()  # read, so that a failure the client left before is not logged as unread

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


# --- middleware -------------------------------------------------------------------------------------------


class BodyLimit:
    """Refuse request bodies over the cap with 413, whether they announce their length or stream it.

    The body is read (up to the cap) before the app sees it, then replayed: a cap of a few hundred KiB makes
    that cheap, and the app never works on a truncated body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = _error(413, f"the request body is larger than the cap of {self.max_bytes:,} bytes (max_body_bytes)")
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await too_large(scope, receive, send)
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: only the disconnect is left to wait for
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


# --- the app ------------------------------------------------------------------------------------------------


def create_app(
    backends: Sequence[Backend | LazyModel],
    *,
    preselect: int = 2,
    limits: Limits | None = None,
    token: str | None = None,
    allowed_hosts: Sequence[str] = (),
    batching: bool = True,
) -> FastAPI:
    """The playground app serving `backends` (loaded models, or `LazyModel`s loaded on first use).

    The first `preselect` models are chosen in the page when it opens. With `token`, every API request must
    carry it (header `Authorization: Bearer TOKEN` or `X-Modescope-Token`); the page reads it from its
    own URL (`/?token=TOKEN`). Requests must name this server in their Host header (localhost, a loopback
    address, the address they arrived at, or one of `allowed_hosts`; see `security.host_allowed`).

    Generate and regenerate requests waiting for the same model are decoded together in batches; without
    `batching` every one decodes alone, one at a time (the behaviour bench_serve compares with).
    """
    limits = limits or Limits()
    registry = Registry(backends)
    if not registry.order:
        raise ModescopeError("serve at least one model")

    def new_worker() -> Worker:
        return Worker(limits.queue_size, limits.max_batch_rows, limits.max_models, batching)

    worker = new_worker()
    stopped = False

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal worker, stopped
        if stopped:  # served again after a shutdown (a test client entered twice): the old worker has ended
            worker = app.state.worker = new_worker()
        yield
        worker.close()
        stopped = True

    app = FastAPI(
        title="modescope playground",
        summary="Compare models token by token: probabilities, alternatives, branches, distributions, multiverses.",
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.registry = registry
    app.state.limits = limits

    def openapi() -> dict[str, Any]:
        """FastAPI's document, completed once with the stream payloads, the served models and the caps."""
        if app.openapi_schema is None:
            loaded = [registry.loaded[name] for name in registry.order if name in registry.loaded]
            vocab = max(b.vocab.size for b in loaded) if len(loaded) == len(registry.order) else None
            app.openapi_schema = openapi_document(FastAPI.openapi(app), registry.order, limits, vocab)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    docs = [app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url]
    app.add_middleware(Hardening, allowed_hosts=check_allowed_hosts(allowed_hosts), docs_paths=docs)  # outermost

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(ModescopeError)
    async def _user_error(_: Request, exc: ModescopeError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{_location(e['loc'][1:])}: {' '.join(e['msg'].split())}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(problems) or "malformed request"}, status_code=422)

    async def authorized(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("x-modescope-token") or ""
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            given = given or bearer[7:]
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "this server needs its token: open the page as /?token=TOKEN or send X-Modescope-Token")

    guard = [Depends(authorized)]

    async def run(call: Callable[[], Any]) -> Any:
        """Run a model call in the worker and wait for it (a client that goes away cancels a queued call)."""
        return await asyncio.wrap_future(worker.submit(call))

    def stream(call: Callable[[Emit], Any]) -> StreamingResponse:
        """Queue a long call and answer with its events. A full queue raises Busy (503) before any byte is
        sent; a failure inside the call becomes an `error` event with the status it would have had."""
        events = _Events(asyncio.get_running_loop())
        waiting = worker.pending
        future = worker.submit(lambda: call(events.emit))
        # cancelling skips the call when the client left while it waited (a no-op once it ran)
        return event_stream(lambda: asyncio.wrap_future(future), events, waiting, future.cancel)

    async def decode(plan: Plan) -> dict[str, Any]:
        """Queue a generate request's pieces and wait for its answer; a request that ends early (a failed piece,
        a client gone) cancels what is left of it."""
        ticket = worker.submit_pieces(plan.pieces)
        try:
            groups = await asyncio.gather(*(asyncio.wrap_future(piece.future) for piece in plan.pieces))
        finally:
            ticket.cancel()
        return plan.answer(list(groups))

    def decode_stream(plan: Plan) -> StreamingResponse:
        """Queue a generate request's pieces and answer with events: each step's new tokens per model as a
        `progress` event, then the answer `decode` gives. A client that goes away cancels the request: a piece
        waiting is skipped, a piece decoding leaves its batch at the next step."""
        events = _Events(asyncio.get_running_loop())
        for piece, model in zip(plan.pieces, plan.models, strict=True):
            piece.on_tokens = functools.partial(_tokens_event, events.emit, model)
        waiting = worker.pending
        ticket = worker.submit_pieces(plan.pieces)

        async def outcome() -> dict[str, Any]:
            groups = await asyncio.gather(*(asyncio.wrap_future(piece.future) for piece in plan.pieces))
            return plan.answer(list(groups))

        return event_stream(outcome, events, waiting, ticket.cancel)

    # --- routes -------------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get(
        "/api/models",
        dependencies=guard,
        summary="Served models, the preselected ones, and the caps",
        **route_docs("models", ModelsOut, errors=[401, 403]),
    )
    async def models() -> JSONResponse:
        listed = []
        for i, name in enumerate(registry.order):
            backend = registry.loaded.get(name)
            listed.append(
                {
                    "name": name,
                    "preselected": i < preselect,
                    "loaded": backend is not None,
                    "chat": backend.has_chat_template if backend is not None else None,
                    # what the model shows (tier full, top-k or sample-only); None until it is loaded
                    "capabilities": backend.capabilities.metadata() if backend is not None else None,
                }
            )
        queue = {"pending": worker.pending}
        return _json({"models": listed, "limits": asdict(limits), "queue": queue, "remedies": remedy_options()})

    @app.post(
        "/api/tokenize",
        dependencies=guard,
        summary="Tokens of a prompt (with BOS or chat template) or of text",
        **route_docs("tokenize", TokenizeOut, TOKENIZE_LINKS),
    )
    async def tokenize(spec: TokenizeIn) -> JSONResponse:
        registry.check([spec.model], limits)
        if (spec.prompt is None) == (spec.text is None):
            raise ApiError(422, "give exactly one of prompt and text")
        prompt = _prompt(spec.prompt, limits) if spec.prompt is not None else None
        _text_cap("the text", spec.text, limits)

        def call() -> dict[str, Any]:
            backend = registry.get(spec.model)
            ids = _prompt_ids(backend, prompt) if prompt is not None else _encode_text(backend, spec.text or "")
            special = backend.vocab.special_ids
            return {
                "model": backend.name,
                "tokens": [{"id": i, "text": backend.token_text(i), "special": i in special} for i in ids],
            }

        return _json(await run(call))

    @app.post(
        "/api/generate",
        dependencies=guard,
        summary="n completions per model with per-token records",
        **route_docs("generate", GenerateOut, GENERATE_LINKS),
    )
    async def generate_route(spec: GenerateIn) -> JSONResponse:
        return _json(await decode(generate_plan(spec, registry, limits)))

    @app.post(
        "/api/generate/stream",
        dependencies=guard,
        summary="Generate, answered with each step's tokens as they are decoded (server-sent events)",
        **stream_docs("generate_stream", TokensOut, GenerateOut),
    )
    async def generate_stream(spec: GenerateIn) -> StreamingResponse:
        return decode_stream(generate_plan(spec, registry, limits))

    @app.post(
        "/api/regenerate",
        dependencies=guard,
        summary="Branch: continue from kept tokens plus edited text, n times",
        **route_docs("regenerate", RegenerateOut, REGENERATE_LINKS),
    )
    async def regenerate(spec: RegenerateIn) -> JSONResponse:
        return _json(await decode(regenerate_plan(spec, registry, limits)))

    @app.post(
        "/api/regenerate/stream",
        dependencies=guard,
        summary="Regenerate, answered with each step's tokens as they are decoded (server-sent events)",
        **stream_docs("regenerate_stream", TokensOut, RegenerateOut),
    )
    async def regenerate_stream(spec: RegenerateIn) -> StreamingResponse:
        return decode_stream(regenerate_plan(spec, registry, limits))

    @app.post(
        "/api/next",
        dependencies=guard,
        summary="The next-token distribution at a position of a branch",
        **route_docs("next", NextOut),
    )
    async def next_token(spec: NextIn) -> JSONResponse:
        registry.check([spec.model], limits)
        prompt = _prompt(spec.prompt, limits)
        _cap("top_k", spec.top_k, 1, limits.max_top_k, "max_top_k")

        def call() -> dict[str, Any]:
            from modescope.engine.decode import entropy_bits

            backend = registry.get(spec.model)
            ids = [*_prompt_ids(backend, prompt), *_prefix(backend, spec.prefix_ids, limits)]
            _, logprobs = backend.start(ids)
            top = logprobs[0].topk(min(spec.top_k, logprobs.shape[-1]))
            return {
                "model": spec.model,
                "entropy_bits": float(entropy_bits(logprobs)[0]),
                "top": [
                    {"id": i, "text": backend.token_text(i), "logprob": v, "special": i in backend.vocab.special_ids}
                    for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)
                ],
            }

        return _json(await run(call))

    @app.post(
        "/api/distribution",
        dependencies=guard,
        summary="Exact probability of every answer in a set, per model (server-sent events)",
        **stream_docs("distribution", ModelProgressOut, DistributionOut),
    )
    async def distribution_route(spec: DistributionIn) -> StreamingResponse:
        from modescope.probes import candidates as cands
        from modescope.probes.distribution import distribution

        registry.check(spec.models, limits)
        prompt = _prompt(spec.prompt, limits)
        if (spec.integers is None) == (spec.choices is None):
            raise ApiError(422, "give exactly one of integers [LO, HI] and choices")
        if spec.integers is not None:
            lo, hi = spec.integers
            _cap("the number of candidates", max(hi - lo + 1, 0), 1, limits.max_candidates, "max_candidates")
            candidates = cands.integers(lo, hi)
        else:
            choices = spec.choices or []
            _cap("the number of candidates", len(choices), 1, limits.max_candidates, "max_candidates")
            for choice in choices:
                _text_cap("a choice", choice, limits)
            candidates = cands.choices(choices)

        def call(emit: Emit) -> dict[str, Any]:
            backends = [registry.get(name) for name in spec.models]
            # canonical tokenizations encode every answer ("all" spells them from token bytes instead)
            _encodable(backends, prompt, candidates if spec.tokenizations == "canonical" else ())
            result = distribution(
                backends,
                prompt,
                candidates,
                leading_space=spec.leading_space,
                tokenizations=spec.tokenizations,
                temperature=spec.temperature,
                progress=lambda model, done, total: emit({"model": model, "done": done, "total": total}),
            )
            return result.to_dict()

        return stream(call)

    @app.post(
        "/api/multiverse",
        dependencies=guard,
        summary="Block multiverse below the prompt and a branch, with its interactive page (server-sent events)",
        **stream_docs("multiverse", ExpandedProgressOut, MultiverseOut),
    )
    async def multiverse_route(spec: MultiverseIn) -> StreamingResponse:
        from modescope.probes.multiverse import ExpansionOptions, multiverse
        from modescope.viz.multiverse_html import multiverse_html

        registry.check(spec.models, limits)
        prompt = _prompt(spec.prompt, limits)
        _text_cap("the prefix", spec.prefix, limits)
        _cap("depth", spec.depth, 1, limits.max_depth, "max_depth")
        _cap("max_nodes", spec.max_nodes, 1, limits.max_nodes, "max_nodes")
        try:
            ExpansionOptions(spec.depth, spec.cutoff, spec.max_nodes).check()
        except ModescopeError as exc:
            raise ApiError(422, str(exc).replace("--", "")) from None
        if spec.prefix_paths is not None and len(spec.prefix_paths) != len(spec.models):
            raise ApiError(422, "prefix_paths needs one list of token ids per model")

        def call(emit: Emit) -> dict[str, Any]:
            backends = [registry.get(name) for name in spec.models]
            _encodable(backends, prompt)
            paths = None
            if spec.prefix_paths is not None:
                paths = [_prefix(b, p, limits) for b, p in zip(backends, spec.prefix_paths, strict=True)]
            expanded = [0]

            def report(count: int) -> None:
                expanded[0] += count
                emit({"expanded": expanded[0]})

            tree = multiverse(
                backends,
                prompt,
                prefix=spec.prefix,
                prefix_paths=paths,
                depth=spec.depth,
                cutoff=spec.cutoff,
                max_nodes=spec.max_nodes,
                merge=spec.merge,
                progress=report,
            )
            data = tree.to_dict()
            return {"tree": data, "size": tree.size, "html": multiverse_html(data, "Block multiverse")}

        return stream(call)

    @app.post(
        "/api/attractor",
        dependencies=guard,
        summary="Attractor experiment: perturb each model's greedy completion and see it return (server-sent events)",
        **stream_docs("attractor", ModelProgressOut, AttractorOut),
    )
    async def attractor_route(spec: AttractorIn) -> StreamingResponse:
        from modescope.probes.attractors import AttractorPlan, Edit, run_attractor

        registry.check(spec.models, limits)
        prompt = _prompt(spec.prompt, limits)
        _cap("max_tokens", spec.max_tokens, 2, limits.max_attractor_tokens, "max_attractor_tokens")
        planned = spec.swap_positions * max(spec.alternatives - 1, 0) + len(spec.edits) + len(spec.detours)
        _cap("the number of perturbations", planned, 0, limits.max_perturbations, "max_perturbations")
        _cap("detour_tokens", spec.detour_tokens, 1, limits.max_tokens, "max_tokens")
        for edit in spec.edits:
            _text_cap("an edit", edit.text, limits)
        plan = AttractorPlan(
            edits=[Edit(e.start, e.end, e.text) for e in spec.edits],
            swap_positions=spec.swap_positions,
            alternatives=spec.alternatives,
            detour_positions=list(spec.detours),
            detour_tokens=spec.detour_tokens,
        )

        def call(emit: Emit) -> dict[str, Any]:
            results = []
            for k, name in enumerate(spec.models):
                emit({"model": name, "done": k, "total": len(spec.models)})
                _encodable([registry.get(name)], prompt, [edit.text for edit in spec.edits])
                result = run_attractor(
                    registry.get(name), prompt, plan, spec.max_tokens, spec.criterion, spec.threshold
                )
                results.append(result.to_dict() | {"mainline_tokens": _continuations([result.mainline])[0]["tokens"]})
            return {"results": results}

        return stream(call)

    return app


def preload(app: FastAPI, names: Sequence[str]) -> None:
    """Load these lazy models in the worker now, so the first request does not wait for them."""
    registry: Registry = app.state.registry
    worker: Worker = app.state.worker
    for name in names:
        worker.submit(functools.partial(registry.get, name)).result()
