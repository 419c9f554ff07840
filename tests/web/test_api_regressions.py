"""Failures found while fuzzing the API (tests/web/test_api_fuzz.py, and longer random runs of it), each kept as
the example that showed it; a fix that could overreach has a test of what must still work."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from modescope.web.app import create_app
from tests.web.conftest import BASE, toy_models
from tests.web.test_api import PROMPT, error_of, events


def test_the_app_answers_after_its_lifespan_ran_twice() -> None:
    """The lifespan's shutdown stopped the model worker for good: served again (schemathesis starts the
    lifespan per test; a test client can be entered twice), every model call waited forever."""
    app = create_app(toy_models())

    async def serve_twice() -> list[int]:
        statuses = []
        for _ in range(2):
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                    call = client.post("/api/tokenize", json={"model": BASE, "text": " the cat"})
                    statuses.append((await asyncio.wait_for(call, timeout=20)).status_code)
        return statuses

    # a thread of its own: Playwright's sync API keeps an event loop running in the main thread
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, serve_twice()).result() == [200, 200]


MANY = {"models": [BASE], "prompt": PROMPT}
ONE = {"model": BASE, "prompt": PROMPT}


@pytest.mark.parametrize(
    ("path", "request_body", "field"),
    [
        ("/api/generate", MANY | {"sampler": {"temperature": False}}, "sampler.temperature"),
        ("/api/generate", MANY | {"n": True}, "n"),
        ("/api/generate", MANY | {"n": "2"}, "n"),
        ("/api/generate", MANY | {"remedy": {"guide_alpha": False}}, "remedy.guide_alpha"),
        ("/api/next", ONE | {"prefix_ids": [False]}, "prefix_ids.0"),
        ("/api/distribution", MANY | {"choices": ["0"], "temperature": False}, "temperature"),
        ("/api/attractor", MANY | {"threshold": False}, "threshold"),
        ("/api/multiverse", MANY | {"merge": 1}, "merge"),
    ],
)
def test_a_boolean_or_a_string_is_not_a_number(
    client: TestClient, path: str, request_body: dict[str, Any], field: str
) -> None:
    """false was read as 0 (a greedy temperature, token id 0), "2" as 2: the document says number."""
    error_of(client.post(path, json=request_body), 422, f"{field}: Input should be a valid")


def test_a_json_integer_may_carry_a_zero_fraction(client: TestClient) -> None:
    """JSON Schema counts 2.0 as an integer; strict validation must not refuse it."""
    request = {"models": [BASE], "prompt": PROMPT, "n": 2.0, "max_tokens": 3.0}
    body = client.post("/api/generate", json=request).json()
    assert len(body["results"][0]["completions"]) == 2


def test_a_negative_token_id_is_refused_before_a_stream_starts(client: TestClient) -> None:
    """prefix_paths [[-1]] was accepted (200) and only failed inside the stream."""
    request = {"models": [BASE], "prompt": PROMPT, "prefix_paths": [[-1]], "depth": 1}
    error_of(client.post("/api/multiverse", json=request), 422, "prefix_paths.0.0: Input should be greater than")
    error_of(client.post("/api/next", json={"model": BASE, "prompt": PROMPT, "prefix_ids": [-1]}), 422, "prefix_ids.0")


def test_a_seed_beyond_64_bits_is_422_not_a_server_error(client: TestClient) -> None:
    """seed 2**64 reached torch's generator and failed there (500)."""
    request = {"models": [BASE], "prompt": PROMPT, "max_tokens": 2, "seed": 2**64}
    error_of(client.post("/api/generate", json=request), 422, "seed: Input should be less than or equal to")
    request["seed"] = -(2**63)
    assert client.post("/api/generate", json=request).status_code == 200


@pytest.mark.parametrize(
    ("path", "change", "what"),
    [
        ("/api/distribution", {"prompt": {"text": "é?"}, "choices": ["a", "b"]}, "cannot encode the prompt"),
        ("/api/distribution", {"choices": ["é"], "tokenizations": "canonical"}, "cannot encode 'é'"),
        ("/api/multiverse", {"prompt": {"text": "é?"}, "depth": 1}, "cannot encode the prompt"),
        ("/api/attractor", {"prompt": {"text": "é?"}, "max_tokens": 4}, "cannot encode the prompt"),
        ("/api/attractor", {"max_tokens": 4, "edits": [{"start": 0, "end": 1, "text": "é"}]}, "cannot encode 'é'"),
    ],
)
def test_text_the_tokenizer_cannot_encode_ends_a_stream_with_a_400(
    client: TestClient, path: str, change: dict[str, Any], what: str
) -> None:
    """The tokenizer's ValueError ended these streams as an internal error (status 500 in the error event)."""
    request = {"models": [BASE], "prompt": PROMPT} | change
    kind, data = events(client.post(path, json=request))[-1]
    assert kind == "error" and data["status"] == 400, data
    assert what in data["error"] and "internal error" not in data["error"], data


def test_an_error_stays_one_line_when_a_key_holds_a_newline(client: TestClient) -> None:
    """An unknown key was copied into the error as it came, newline included."""
    request = {"model": BASE, "prompt": {"text": "hi", "a\nb": 1}}
    response = client.post("/api/tokenize", json=request)
    error_of(response, 422, "prompt.'a\\nb': Extra inputs are not permitted")
    assert "\n" not in response.json()["error"]
