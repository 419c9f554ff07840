"""Generate and regenerate streamed as server-sent events, on toy models: each step's tokens arrive as they are
decoded, with everything the page colours them by; the stream ends with exactly the answer of the JSON route
for the same seed; a client that goes away stops the decode (a waiting request is skipped)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from modescope.models.analytic import AnalyticBackend
from modescope.web.app import create_app
from tests.web.conftest import BASE, TOKENS, TUNED, LiveServer
from tests.web.test_api import PROMPT, error_of, events
from tests.web.test_batching import held, wait_until


class SlowToy(AnalyticBackend):
    """A toy model whose every forward pass takes `delay` seconds, so a stream can be watched (and left) mid-way."""

    def __init__(self, name: str, seed: int, delay: float) -> None:
        super().__init__(TOKENS, name=name, seed=seed, sharpness=2.0 + 4.0 * (seed - 1))
        self.delay = delay
        self.encoded: list[tuple[int, ...]] = []  # the prompts encoded

    def start(self, prompt: Sequence[int]) -> Any:
        self.encoded.append(tuple(prompt))
        return super().start(prompt)

    def start_many(self, prompts: Sequence[Sequence[int]]) -> Any:
        self.encoded += [tuple(p) for p in prompts]
        return super().start_many(prompts)

    def next_logprobs(self, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        time.sleep(self.delay)
        return super().next_logprobs(prefixes)


def slow_models(delay: float) -> list[SlowToy]:
    return [SlowToy(BASE, 1, delay), SlowToy(TUNED, 2, delay)]


def streamed_completions(found: Sequence[tuple[str, Any]], models: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The completions as the progress events built them: per model, per completion, its tokens and end."""
    built: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in models}
    for kind, data in found:
        if kind != "progress":
            continue
        for token in data["tokens"]:
            completion = built[data["model"]].setdefault(token["completion"], {"tokens": [], "ends": []})
            completion["ends"].append(token.pop("finish_reason"))
            completion["tokens"].append({k: v for k, v in token.items() if k != "completion"})
    return {m: [built[m][k] for k in sorted(built[m])] for m in models}


def assert_streamed_as_answered(found: list[tuple[str, Any]], results: Sequence[dict[str, Any]]) -> None:
    kinds = [kind for kind, _ in found]
    assert kinds[0] == "queued" and kinds[-1] == "result" and set(kinds[1:-1]) == {"progress"}
    streamed = streamed_completions(found, [r["model"] for r in results])
    for result in results:
        completions = result["completions"]
        assert len(streamed[result["model"]]) == len(completions)
        for built, completion in zip(streamed[result["model"]], completions, strict=True):
            assert built["tokens"] == completion["tokens"]  # ids, texts, probabilities and alternatives
            assert built["ends"] == [None] * (len(completion["tokens"]) - 1) + [completion["finish_reason"]]


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"n": 3, "sampler": {"temperature": 1.5, "top_k": 8}, "stop": [" the"], "seed": 11},
        {"sampler": {"temperature": 0}, "max_tokens": 5},
        {"remedy": {"guide": TUNED, "guide_alpha": 0.3}},
        {"remedy": {"strategy": "verbalized", "k": 2}, "n": 2},
    ],
)
def test_a_streamed_generate_ends_with_the_answer_of_the_json_route(client: TestClient, change: dict[str, Any]) -> None:
    body = {"models": [BASE, TUNED], "prompt": PROMPT, "n": 2, "max_tokens": 12, "seed": 3} | change
    answer = client.post("/api/generate", json=body).json()
    response = client.post("/api/generate/stream", json=body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    found = events(response)
    assert found[-1][1] == answer
    assert_streamed_as_answered(found, answer["results"])
    assert len(found) - 2 >= 2 * max(len(c["tokens"]) for r in answer["results"] for c in r["completions"]) - 1


def test_a_streamed_branch_ends_with_the_answer_of_the_json_route(client: TestClient) -> None:
    body = {"model": TUNED, "prompt": PROMPT, "prefix_ids": [20, 30], "edit": " the cat", "n": 3, "seed": 5}
    answer = client.post("/api/regenerate", json=body).json()
    found = events(client.post("/api/regenerate/stream", json=body))
    assert found[-1] == ("result", answer)
    assert [t["text"] for t in answer["edit_tokens"]] == [" the", " cat"]
    assert_streamed_as_answered(found, [answer])


def test_stream_errors_before_and_after_it_starts(client: TestClient) -> None:
    request = {"models": [BASE], "prompt": PROMPT}
    error_of(client.post("/api/generate/stream", json=request | {"n": 99}), 422, "cap: max_n")
    error_of(client.post("/api/generate/stream", json=request | {"models": ["nope"]}), 404, "not served")
    branch = {"model": BASE, "prompt": PROMPT, "prefix_ids": [10_000]}
    error_of(client.post("/api/regenerate/stream", json=branch), 400, "not in the vocabulary")
    # what only the worker finds (the tokenizer meets the prompt) ends the stream with an error event
    found = events(client.post("/api/generate/stream", json=request | {"prompt": {"text": "é"}}))
    assert [kind for kind, _ in found] == ["queued", "error"]
    assert found[-1][1]["status"] == 400 and "cannot encode" in found[-1][1]["error"]


@pytest.fixture
def slow_server(live_server: Callable[..., LiveServer]) -> Iterator[tuple[LiveServer, list[SlowToy]]]:
    models = slow_models(delay=0.05)
    yield live_server(create_app(models)), models


def read_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    kind = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])


def test_a_client_that_leaves_stops_the_decode(slow_server: tuple[LiveServer, list[SlowToy]]) -> None:
    server, models = slow_server
    body = {"models": [BASE, TUNED], "prompt": PROMPT, "n": 2, "max_tokens": 200, "sampler": {"temperature": 0}}
    body["stop"] = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/api/generate/stream", json=body) as response:
            seen = 0
            for kind, _ in read_events(response):
                seen += kind == "progress"
                if seen == 4:
                    break  # leave mid-way: the connection closes
        calls = [m.stats.calls for m in models]
        wait_until(lambda: client.get("/api/models").json()["queue"]["pending"] == 0)
        time.sleep(1.0)  # 20 forward passes' time: a decode still running would show it
        after = [m.stats.calls for m in models]
    assert all(a - c <= 2 for a, c in zip(after, calls, strict=True)), (calls, after)
    assert max(after) < 50  # nowhere near the 200 steps asked for
    assert server.thread.is_alive()


def test_a_waiting_request_whose_client_left_is_skipped(slow_server: tuple[LiveServer, list[SlowToy]]) -> None:
    server, models = slow_server
    gate = held(server.server.config.app.state.worker)
    body = {"models": [BASE, TUNED], "prompt": PROMPT, "max_tokens": 5}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/api/generate/stream", json=body) as response:
            kind, data = next(read_events(response))
            assert (kind, data) == ("queued", {"ahead": 0})
        wait_until(lambda: all(p.ticket.cancelled for p in waiting_pieces(server)))
        gate.set()
        assert client.post("/api/generate", json=body | {"prompt": {"text": "the cat"}}).status_code == 200
    # the request that left never reached the models: only the other prompt was encoded
    assert [m.encoded for m in models] == [[tuple(m.prompt_ids("the cat"))] for m in models]


def waiting_pieces(server: LiveServer) -> list[Any]:
    queued = list(server.server.config.app.state.worker._queue)
    assert queued, "the request left after the worker had pruned it"
    return queued
