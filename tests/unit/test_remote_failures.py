"""The remote backend against a small fake OpenAI-compatible server, for the failures a real server cannot
produce on demand: 429 storms, 5xx, malformed answers, dropped connections, wrong keys, slow answers,
chat-only and sample-only servers, wrong URLs.

The fake behaves like vLLM serving smollm2-135m-instruct (same tokenizer, token ids in, `token_id:N` out)
with a fixed next-token distribution that does not depend on the prompt. Each test switches its behaviour
through the `Fake` object; requests are counted at the fake.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from modescope.engine.decode import generate, generate_many
from modescope.errors import ModescopeError
from modescope.models import PRESETS, preset_folder, remote
from modescope.models.base import ChatPrompt
from modescope.models.hf import load_tokenizer
from modescope.models.remote import RemoteBackend, RemoteOptions, connect
from modescope.probes.distribution import distribution

NAME = "smollm2-135m-instruct"
SECRET = "sk-test-0123456789-do-not-leak"
TOKENIZER, VOCAB = load_tokenizer(str(preset_folder(PRESETS[NAME])), "x")
assert VOCAB is not None
V = VOCAB.size
EOS = 2
# the fake model: one fixed, normalized next-token distribution (float64), best first in RANKED ...
_logits = np.random.default_rng(0).standard_normal(V) * 3.0
LOGP = _logits - np.logaddexp.reduce(_logits)
RANKED = [int(i) for i in np.argsort(-LOGP)]
CHAT_IDS = TOKENIZER.encode(" the cat sat on")  # what the chat fake always answers


def logp(context: int) -> np.ndarray:
    """... shifted by the context length, so that answers for different prefixes differ (a mix-up shows)."""
    return np.roll(LOGP, context)


def ranked(context: int) -> list[int]:
    return [(i + context) % V for i in RANKED]


@dataclass
class Fake:
    """The fake server's switches and counters (reset for every test)."""

    max_logprobs: int | None = 20  # vLLM's default (a top-k tier); None: any number (--max-logprobs -1), full
    failures: int = 0  # the next N /completions answer `fail_status`
    fail_status: int = 429
    drops: int = 0  # the next N /completions drop the connection after the headers
    malformed: bool = False  # /completions answers 200 "not json"
    delay: float = 0.0  # seconds each /completions takes
    chat_only: bool = False  # 404 on /completions
    chat_logprobs: bool = True  # the chat endpoint shows log-probabilities
    api_key: str | None = None  # required as a Bearer token when set
    models: str = "ok"  # "ok", "404" or "html"
    attempts: int = 0  # /completions requests received (answered or not)
    in_flight: int = 0
    peak: int = 0
    auth_seen: list[str] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)  # alternatives asked for per position, by every request

    def reset(self) -> None:
        vars(self).update(vars(Fake()))

    # --- what a vLLM server would answer ------------------------------------------------------------------
    def top(self, k: int, context: int, chosen: int | None = None) -> dict[str, float]:
        """The k best alternatives, plus the chosen token when it is not among them (as vLLM does)."""
        lp = logp(context)
        shown = {f"token_id:{i}": float(lp[i]) for i in ranked(context)[:k]}
        if chosen is not None:
            shown.setdefault(f"token_id:{chosen}", float(lp[chosen]))
        return shown

    def sample(self, rng: np.random.Generator, context: int, max_tokens: int, temperature: float) -> list[int]:
        ids: list[int] = []
        while len(ids) < max_tokens and EOS not in ids:
            lp = logp(context + len(ids))
            if temperature == 0:
                ids.append(int(lp.argmax()))
            else:
                p = np.exp((lp - lp.max()) / temperature)
                ids.append(int(rng.choice(V, p=p / p.sum())))
        return ids

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        logprobs, n = body.get("logprobs"), int(body.get("n", 1))
        self.asked.append(0 if logprobs is None else int(logprobs))
        wanted = None if logprobs is None else V if logprobs == -1 else int(logprobs)
        if wanted is not None and self.max_logprobs is not None and wanted > self.max_logprobs:
            raise BadRequest(f"Requested logprobs of {wanted}, which is greater than max allowed: {self.max_logprobs}")
        rng = np.random.default_rng(body.get("seed"))
        choices = []
        for p, prompt in enumerate(body["prompt"]):
            for s in range(n):
                ids = self.sample(rng, len(prompt), int(body.get("max_tokens", 16)), float(body.get("temperature", 1)))
                choice: dict[str, Any] = {
                    "index": p * n + s,
                    "text": TOKENIZER.decode(ids),
                    "logprobs": None,
                    "finish_reason": "stop" if ids[-1] == EOS else "length",
                    "stop_reason": None,
                    "token_ids": ids,
                    "prompt_logprobs": None,
                }
                if wanted is not None:
                    choice["logprobs"] = {
                        "tokens": [f"token_id:{i}" for i in ids],
                        "token_logprobs": [float(logp(len(prompt) + j)[i]) for j, i in enumerate(ids)],
                        "top_logprobs": [self.top(wanted, len(prompt) + j, i) for j, i in enumerate(ids)],
                    }
                if body.get("prompt_logprobs") is not None:
                    choice["prompt_logprobs"] = [None] + [
                        {str(t): {"logprob": float(logp(j)[t]), "decoded_token": f"token_id:{t}"}}
                        for j, t in enumerate(prompt)
                        if j
                    ]
                choices.append(choice)
        return {"id": "cmpl-fake", "object": "text_completion", "model": NAME, "choices": choices}

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = CHAT_IDS[: int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)]
        k = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
        self.asked.append(k)

        def entry(i: int) -> dict[str, Any]:
            data = VOCAB.token_bytes[i]
            return {"token": data.decode(errors="replace"), "logprob": float(LOGP[i]), "bytes": list(data)}

        logprobs = None
        if self.chat_logprobs and body.get("logprobs"):
            logprobs = {"content": [entry(i) | {"top_logprobs": [entry(j) for j in RANKED[:k]]} for i in ids]}
        message = {"role": "assistant", "content": TOKENIZER.decode(ids)}
        choices = [
            {"index": s, "message": message, "logprobs": logprobs, "finish_reason": "length"}
            for s in range(int(body.get("n", 1)))
        ]
        return {"id": "chatcmpl-fake", "object": "chat.completion", "model": NAME, "choices": choices}


class BadRequest(Exception):
    pass


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": status}}, status, headers)


async def pause(request: Request, seconds: float) -> None:
    """Take a while like a busy server, but stop once the client has gone (no request outlives its test)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not await request.is_disconnected():
        await asyncio.sleep(0.01)


def fake_app(fake: Fake) -> Any:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> Response:
        if fake.models == "404":
            return error(404, "Not Found")
        if fake.models == "html":
            return Response("<html><body>Welcome</body></html>", media_type="text/html")
        return JSONResponse({"object": "list", "data": [{"id": NAME, "object": "model", "max_model_len": 8192}]})

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        body = await request.json()
        ids = TOKENIZER(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": 8192})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        fake.attempts += 1
        if fake.chat_only:
            return error(404, "Not Found")
        fake.in_flight += 1
        fake.peak = max(fake.peak, fake.in_flight)
        try:
            body = await request.json()
            await pause(request, fake.delay)
            if fake.failures > 0:
                fake.failures -= 1
                retry_after = {"Retry-After": "0"} if fake.failures % 2 else None
                return error(fake.fail_status, "the server is overloaded", retry_after)
            if fake.malformed:
                return Response("not json", media_type="application/json")
            try:
                answer = fake.completions(body)
            except BadRequest as exc:
                return error(400, str(exc))
            return Response(json.dumps(answer), media_type="application/json")
        finally:
            fake.in_flight -= 1

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return JSONResponse(fake.chat(await request.json()))

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        """Checks the key, and drops connections, before the app sees the request."""
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            fake.auth_seen.append(headers.get(b"authorization", b"").decode())
            if fake.api_key and fake.auth_seen[-1] != f"Bearer {fake.api_key}":
                # as OpenAI does, the message shows the key it was given
                await error(401, f"Incorrect API key provided: {fake.auth_seen[-1]}")(scope, receive, send)
                return
            if fake.drops and scope["path"] == "/v1/completions":
                fake.drops -= 1
                fake.attempts += 1
                # the headers promise a body that never comes: uvicorn closes the connection
                await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"999")]})
                return
        await app(scope, receive, send)

    return outer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[SimpleNamespace]:
    """The fake, served by uvicorn on 127.0.0.1 in a thread for the whole module."""
    fake, port = Fake(), free_port()
    config = uvicorn.Config(fake_app(fake), host="127.0.0.1", port=port, log_level="critical")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the fake server did not start"
        time.sleep(0.02)
    root = f"http://127.0.0.1:{port}"
    yield SimpleNamespace(fake=fake, root=root, spec=f"{NAME}@{root}/v1")
    uv.should_exit = True
    thread.join(20)


@pytest.fixture
def fake(server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> Fake:
    """The fake, reset for this test; no API key in the environment. connect() gets the tokenizer already
    loaded (loading it takes about a second a time; the tests of real servers cover that step)."""
    monkeypatch.delenv("MODESCOPE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(remote, "_resolve_tokenizer", lambda name, options: (TOKENIZER, VOCAB))
    server.fake.reset()
    return server.fake


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's backoff and Retry-After sleeps, recorded instead of slept (this module only)."""
    slept: list[float] = []
    monkeypatch.setattr(remote, "time", SimpleNamespace(sleep=slept.append))
    return slept


@pytest.fixture
def open_backend(server: SimpleNamespace) -> Iterator[Any]:
    """connect() to the fake; every backend opened is closed at the end of the test."""
    opened: list[RemoteBackend] = []

    def open_(options: RemoteOptions | None = None, spec: str | None = None) -> RemoteBackend:
        backend = connect(spec or server.spec, options)
        opened.append(backend)
        return backend

    yield open_
    for backend in opened:
        backend.client.close()


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text, text
    return text


def probe_ids() -> list[int]:
    return TOKENIZER.encode("Q: what next?")


# --- the tests ------------------------------------------------------------------------------------------------


def test_connect_detects_the_full_tier_and_reads_the_distribution(fake: Fake, open_backend: Any) -> None:
    """The baseline the failure tests build on: the fake is a valid vLLM stand-in."""
    fake.max_logprobs = None
    backend = open_backend()
    assert (backend.capabilities.tier, backend.capabilities.scores_sequences) == ("full", True)
    assert backend.max_context == 8192
    prefixes = [probe_ids()[:2], probe_ids()]  # each row belongs to its own prefix
    rows = backend.next_logprobs(prefixes).numpy()
    for prefix, row in zip(prefixes, rows, strict=True):
        assert np.allclose(row, logp(len(prefix)), atol=1e-9)


def test_429_storm_is_retried_then_succeeds(fake: Fake, open_backend: Any, sleeps: list[float]) -> None:
    """A fake is needed to answer 429 on demand: real servers only do it under load."""
    backend = open_backend(RemoteOptions(retries=4))
    fake.attempts, fake.failures = 0, 3
    answer = backend.query([probe_ids()], 20, False)[0]
    assert answer.shown_ids is not None and answer.shown_ids.tolist() == ranked(len(probe_ids()))[:20]
    assert fake.attempts == 4  # three refused, one answered: no extra requests
    assert 0.0 in sleeps and max(sleeps) <= 8.0  # Retry-After: 0 is honoured; the backoff stays short


@pytest.mark.parametrize("status", [429, 503])
def test_persistent_overload_fails_after_exactly_retries_plus_one(
    status: int, fake: Fake, open_backend: Any, sleeps: list[float]
) -> None:
    """A fake is needed for a server that never recovers."""
    backend = open_backend(RemoteOptions(retries=2))
    fake.attempts, fake.failures, fake.fail_status = 0, 1000, status
    with pytest.raises(ModescopeError) as exc:
        backend.query([probe_ids()], 5, False)
    text = one_line(exc)
    assert fake.attempts == 3
    assert "failed after 3 attempts" in text and f"HTTP {status}" in text and "check that the server is up" in text


def test_malformed_json_is_one_clear_error_without_retries(fake: Fake, open_backend: Any, sleeps: list[float]) -> None:
    """A fake is needed: no real OpenAI-compatible server answers 200 with a body that is not JSON."""
    backend = open_backend()
    fake.attempts, fake.malformed = 0, True
    with pytest.raises(ModescopeError) as exc:
        backend.query([probe_ids()], 5, False)
    assert "malformed JSON" in one_line(exc)
    assert fake.attempts == 1


def test_dropped_connection_is_retried_then_reported(fake: Fake, open_backend: Any, sleeps: list[float]) -> None:
    """A fake is needed to close the connection mid-answer (a crashed or restarted server)."""
    backend = open_backend(RemoteOptions(retries=2))
    fake.attempts, fake.drops = 0, 2
    answer = backend.query([probe_ids()], 5, False)[0]
    assert answer.shown_ids is not None and answer.shown_ids.tolist() == ranked(len(probe_ids()))[:5]
    assert fake.attempts == 3

    fake.attempts, fake.drops = 0, 1000
    with pytest.raises(ModescopeError) as exc:
        backend.query([probe_ids()], 5, False)
    text = one_line(exc)
    assert fake.attempts == 3
    assert "failed after 3 attempts" in text and "connection dropped" in text


def test_a_wrong_key_is_refused_without_leaking_it(
    fake: Fake, open_backend: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fake is needed to check exactly which Authorization header arrives."""
    caplog.set_level(logging.DEBUG)
    fake.api_key = SECRET
    monkeypatch.setenv("MODESCOPE_API_KEY", SECRET[::-1])
    with pytest.raises(ModescopeError) as exc:
        open_backend()
    text = one_line(exc)
    assert "MODESCOPE_API_KEY" in text and "401" in text
    assert SECRET[::-1] not in text and SECRET not in text

    monkeypatch.setenv("MODESCOPE_API_KEY", SECRET)
    backend = open_backend()
    assert backend.capabilities.tier == "top-k"
    fake.malformed = True  # an error after connecting must not carry the key either
    with pytest.raises(ModescopeError) as exc:
        backend.query([probe_ids()], 5, False)
    assert SECRET not in one_line(exc)
    assert any(record.name.startswith("httpx") for record in caplog.records)  # the client's logs were captured
    for record in caplog.records:
        assert SECRET not in record.getMessage() and SECRET[::-1] not in record.getMessage()
    assert SECRET not in caplog.text and SECRET[::-1] not in caplog.text

    monkeypatch.delenv("MODESCOPE_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    fake.malformed = False
    fake.auth_seen.clear()
    open_backend()
    assert fake.auth_seen and set(fake.auth_seen) == {f"Bearer {SECRET}"}


def test_a_key_with_a_stray_carriage_return(
    fake: Fake, open_backend: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fake is needed to see what arrives. A key read from a file saved on Windows ends in \\r: either it is
    stripped and works, or it is refused as a key problem; it is never logged, and the server is not blamed."""
    caplog.set_level(logging.DEBUG)
    fake.api_key = SECRET
    monkeypatch.setenv("MODESCOPE_API_KEY", SECRET + "\r")
    try:
        open_backend(RemoteOptions(retries=1))
    except ModescopeError as exc:
        assert "MODESCOPE_API_KEY" in str(exc) and "check that the server is up" not in str(exc)
        assert SECRET not in str(exc)
    assert SECRET not in caplog.text


def test_concurrency_is_bounded_and_real(fake: Fake, open_backend: Any) -> None:
    """A fake is needed to count requests in flight at the server."""
    backend = open_backend(RemoteOptions(max_concurrency=3))
    fake.attempts, fake.delay = 0, 0.2
    prompts = [probe_ids()[:length] for length in range(1, 13)]  # one request each
    continuations = generate_many(backend, prompts, max_tokens=2, temperature=0.0)
    # each answer comes back to its own prompt
    assert [c.tokens[0].id for c in continuations] == [ranked(len(p))[0] for p in prompts]
    assert fake.attempts == 12
    assert 1 < fake.peak <= 3


def test_a_slow_server_times_out_clearly(fake: Fake, open_backend: Any, sleeps: list[float]) -> None:
    """A fake is needed for a server that accepts the request and then does not answer in time."""
    backend = open_backend(RemoteOptions(timeout=0.5, retries=1))
    fake.attempts, fake.delay = 0, 2.0
    started = time.monotonic()
    with pytest.raises(ModescopeError) as exc:
        backend.query([probe_ids()], 5, False)
    text = one_line(exc)
    assert "failed after 2 attempts" in text and "no answer within 0.5 s" in text
    assert time.monotonic() - started < 3.5  # it did not wait for the 2 s answers
    assert fake.attempts == 2
    deadline = time.monotonic() + 1.0
    while fake.in_flight and time.monotonic() < deadline:  # the client hung up on both
        time.sleep(0.01)
    assert fake.in_flight == 0


@pytest.mark.parametrize("logprobs", [True, False])
def test_chat_only_server(logprobs: bool, fake: Fake, open_backend: Any) -> None:
    """A fake is needed: the vLLM test server always offers /completions."""
    fake.chat_only, fake.chat_logprobs = True, logprobs
    backend = open_backend()
    capabilities = backend.capabilities
    assert capabilities.chat_only
    assert (capabilities.tier, capabilities.top_k) == (("top-k", 20) if logprobs else ("sample-only", None))
    continuations = generate(backend, backend.prompt_ids(ChatPrompt("hi")), n=2, max_tokens=4, temperature=1.0)
    assert len(continuations) == 2
    for continuation in continuations:
        assert [t.id for t in continuation.tokens] == CHAT_IDS
        assert continuation.text == " the cat sat on" and continuation.finish_reason == "length"
        if logprobs:
            assert [a.id for a in continuation.tokens[0].top[:3]] == RANKED[:3]
            assert math.isclose(continuation.tokens[1].raw_logprob, float(LOGP[CHAT_IDS[1]]))
        else:
            assert all(math.isnan(t.raw_logprob) and not t.top for t in continuation.tokens)
    with pytest.raises(ModescopeError) as exc:
        backend.prompt_ids("hi")
    assert "use --chat" in one_line(exc)


def test_sample_only_tier_refuses_probabilities(fake: Fake, open_backend: Any) -> None:
    """A fake stands in for a server without log-probabilities (here: asked for none with max_logprobs=0)."""
    backend = open_backend(RemoteOptions(max_logprobs=0))
    assert backend.capabilities.tier == "sample-only"
    with pytest.raises(ModescopeError) as exc:
        distribution(backend, "Q", ["a", "b"])
    text = one_line(exc)
    assert "token log-probabilities" in text and "tier sample-only" in text
    with pytest.raises(ModescopeError) as exc:
        backend.next_logprobs([probe_ids()])
    text = one_line(exc)
    assert "whole next-token distributions" in text and "tier sample-only" in text
    assert len(generate(backend, probe_ids(), n=2, max_tokens=3, temperature=1.0, seed=0)) == 2  # sampling works


def test_top_k_server_is_detected(fake: Fake, open_backend: Any) -> None:
    """A fake is needed to cap logprobs as vLLM's default (20) does, on the same model."""
    backend = open_backend()
    assert (backend.capabilities.tier, backend.capabilities.top_k) == ("top-k", 20)
    with pytest.raises(ModescopeError) as exc:
        backend.next_logprobs([probe_ids()])
    assert "tier top-k" in one_line(exc)


@pytest.mark.parametrize(("server_shows", "cap"), [(20, 3), (20, 10), (None, 10)])
def test_max_logprobs_caps_the_alternatives(server_shows: int | None, cap: int, fake: Fake, open_backend: Any) -> None:
    """A fake is needed to offer a server that shows more than the user's cap (vLLM's default 20, or -1)."""
    fake.max_logprobs = server_shows
    backend = open_backend(RemoteOptions(max_logprobs=cap))
    assert (backend.capabilities.tier, backend.capabilities.top_k) == ("top-k", cap)
    fake.asked.clear()
    generate(backend, probe_ids(), n=1, max_tokens=2, temperature=1.0, seed=0)
    assert fake.asked == [cap]


@pytest.mark.parametrize("cap", [0, 5])
def test_max_logprobs_on_a_chat_only_server(cap: int, fake: Fake, open_backend: Any) -> None:
    """A fake is needed for a chat-only server (no /completions) under a user's cap on log-probabilities."""
    fake.chat_only = True
    backend = open_backend(RemoteOptions(max_logprobs=cap))
    capabilities = backend.capabilities
    assert capabilities.chat_only
    assert (capabilities.tier, capabilities.top_k) == (("top-k", cap) if cap else ("sample-only", None))
    fake.asked.clear()
    generate(backend, backend.prompt_ids(ChatPrompt("hi")), n=1, max_tokens=2, temperature=1.0)
    assert fake.asked == [cap]


def test_connection_refused(sleeps: list[float]) -> None:
    """A closed port: nothing listens there."""
    with pytest.raises(ModescopeError) as exc:
        connect(f"{NAME}@http://127.0.0.1:{free_port()}/v1", RemoteOptions(retries=1))
    text = one_line(exc)
    assert "connection refused" in text and "check that the server is up" in text


@pytest.mark.parametrize("models", ["404", "html"])
def test_a_url_that_is_not_an_api(models: str, fake: Fake, open_backend: Any) -> None:
    """A fake is needed for a web page or a 404 where the API should be."""
    fake.models = models
    with pytest.raises(ModescopeError) as exc:
        open_backend()
    text = one_line(exc)
    assert ("HTTP 404" in text and "/v1" in text) if models == "404" else "malformed JSON" in text


def test_the_url_without_v1(server: SimpleNamespace, fake: Fake, open_backend: Any) -> None:
    """The server root instead of the API base: /models is not found there."""
    with pytest.raises(ModescopeError) as exc:
        open_backend(spec=f"{NAME}@{server.root}")
    assert "HTTP 404" in one_line(exc) and "http://HOST:PORT/v1" in str(exc.value)


def test_a_model_the_server_does_not_serve(server: SimpleNamespace, fake: Fake, open_backend: Any) -> None:
    """The fake serves one name; another is refused with what it serves."""
    with pytest.raises(ModescopeError) as exc:
        open_backend(spec=f"other-model@{server.root}/v1")
    text = one_line(exc)
    assert "does not serve 'other-model'" in text and NAME in text
