"""Generate requests batched by the worker, on toy models: requests that wait together decode in one batch per
model, each answered exactly as it would have been alone; the oldest piece goes first (no request starves);
long calls still run alone; the queue refuses (503) only beyond its cap."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI

from modescope.engine.decode import DecodeRequest, generate
from modescope.engine.samplers import SamplerSettings
from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend
from modescope.models.base import Backend, Rows
from modescope.web.app import create_app
from modescope.web.batching import Piece
from modescope.web.schemas import Limits
from modescope.web.worker import Worker
from tests.web.conftest import BASE, TOKENS, TUNED
from tests.web.test_api import PROMPT, error_of


class Recording(AnalyticBackend):
    """A toy model that logs, in a list it shares with others, every batch it starts: (name, prompts)."""

    def __init__(self, name: str, seed: int, log: list[tuple[str, int]]) -> None:
        super().__init__(TOKENS, name=name, seed=seed, sharpness=2.0 + 4.0 * (seed - 1))
        self.log = log

    def start(self, prompt: Sequence[int]) -> tuple[Rows, torch.Tensor]:
        self.log.append((self.name, 1))
        return super().start(prompt)

    def start_many(self, prompts: Sequence[Sequence[int]]) -> tuple[Rows, torch.Tensor]:
        self.log.append((self.name, len(prompts)))
        return super().start_many(prompts)


def recording_models(log: list[tuple[str, int]]) -> list[Recording]:
    return [Recording(BASE, 1, log), Recording(TUNED, 2, log)]


def held(worker: Worker) -> threading.Event:
    """Occupy the worker with a call until the returned event is set, so that what is submitted next waits."""
    gate = threading.Event()
    running = worker.submit(lambda: gate.wait(20))
    while not running.running():
        time.sleep(0.001)
    return gate


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def post_together(app: FastAPI, path: str, bodies: Sequence[dict[str, Any]]) -> list[httpx.Response]:
    """POST every body at once while the worker is held, then let it go: the requests wait together."""
    gate = held(app.state.worker)

    async def post_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as client:
            calls = [asyncio.ensure_future(client.post(path, json=body)) for body in bodies]
            while app.state.worker.pending < len(bodies):
                await asyncio.sleep(0.005)
            gate.set()
            return list(await asyncio.gather(*calls))

    # a thread of its own: Playwright's sync API keeps an event loop running in the main thread
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, post_all()).result()


PROMPTS = ["Q: is it a cat?\nA:", "the cat sat", "Q: a dog?\nA: yes", "no"]


def mixed_bodies(count: int) -> list[dict[str, Any]]:
    """Generate requests that differ in prompt, n, seed, sampler and length (both models each)."""
    samplers = [{"temperature": 1.0}, {"temperature": 0.7, "min_p": 0.05}, {"temperature": 0}, {"top_k": 5}]
    return [
        {
            "models": [BASE, TUNED],
            "prompt": {"text": PROMPTS[k % len(PROMPTS)]},
            "n": 1 + k % 3,
            "max_tokens": 4 + k % 5,
            "seed": k,
            "sampler": samplers[k % len(samplers)],
            "top_k": 3 + k % 4,
            "stop": ["."] if k % 2 else [],
        }
        for k in range(count)
    ]


def test_requests_waiting_together_decode_in_one_batch_each_answered_as_alone() -> None:
    log: list[tuple[str, int]] = []
    bodies = mixed_bodies(12)
    answers = post_together(create_app(recording_models(log)), "/api/generate", bodies)
    assert [a.status_code for a in answers] == [200] * len(bodies)
    # one batch per model, every distinct prompt encoded once
    assert log == [(BASE, len(PROMPTS)), (TUNED, len(PROMPTS))]

    unbatched_log: list[tuple[str, int]] = []
    alone = post_together(create_app(recording_models(unbatched_log), batching=False), "/api/generate", bodies)
    assert len(unbatched_log) == 2 * len(bodies)  # the baseline: every request and model alone
    assert [a.json() for a in answers] == [a.json() for a in alone]  # identical, to the last bit
    # and that is `generate` alone, as the API answered before batching
    models = recording_models([])
    for body, answer in zip(bodies[:4], answers[:4], strict=True):
        for backend, result in zip(models, answer.json()["results"], strict=True):
            sampler = SamplerSettings.make(**body["sampler"])
            options = {"max_tokens": body["max_tokens"], "top_k_alternatives": body["top_k"], "stop": body["stop"]}
            ids = backend.prompt_ids(body["prompt"]["text"])
            expected = generate(backend, ids, body["n"], sampler=sampler, seed=body["seed"], **options)
            assert [c["text"] for c in result["completions"]] == [c.text for c in expected]
            assert [[t["logprob"] for t in c["tokens"]] for c in result["completions"]] == [
                [t.logprob for t in c.tokens] for c in expected
            ]


def test_branches_waiting_together_are_batched_too() -> None:
    log: list[tuple[str, int]] = []
    models = recording_models(log)
    branches = [
        {"model": TUNED, "prompt": PROMPT, "prefix_ids": [20 + k], "edit": " the" * (k % 2), "n": 2, "seed": k}
        for k in range(6)
    ]
    answers = post_together(create_app(models), "/api/regenerate", branches)
    assert log == [(TUNED, 6)]
    alone = post_together(create_app(recording_models([]), batching=False), "/api/regenerate", branches)
    assert [a.json() for a in answers] == [a.json() for a in alone]
    assert answers[1].json()["edit_tokens"] == [{"id": TOKENS.index(" the") + 1, "text": " the"}]


def piece(key: str, backend: Backend, prompt: str, n: int, log: list[str] | None = None) -> Piece:
    def prepare() -> tuple[Backend, DecodeRequest]:
        if log is not None:
            log.append(key)
        return backend, DecodeRequest(backend.encode(prompt), n=n, max_tokens=3, temperature=1.0, seed=0)

    return Piece(key, n, prepare)


@pytest.mark.parametrize("running", [1, 4])
def test_a_model_waiting_behind_many_requests_of_another_is_served_within_bounded_batches(running: int) -> None:
    """Batches start from the oldest waiting piece: a piece for the tuned model behind eight of the base model
    (two fit a batch) starts in the fifth batch when one batch decodes at a time, in the first round when
    batches of several models take turns, and is never passed by base pieces queued after it."""
    log: list[tuple[str, int]] = []
    base, tuned = recording_models(log)
    worker = Worker(queue_size=64, max_batch_rows=4, max_running=running)
    gate = held(worker)
    ahead = [worker.submit_pieces([piece(BASE, base, f"the cat{' sat' * k}", 2)]) for k in range(8)]
    waiting = worker.submit_pieces([piece(TUNED, tuned, "no", 2)])
    behind = [worker.submit_pieces([piece(BASE, base, f"a dog{' ran' * k}", 2)]) for k in range(2)]
    gate.set()
    for ticket in [*ahead, waiting, *behind]:
        assert len(ticket.pieces[0].future.result(20)) == 2
    worker.close()
    served = log.index((TUNED, 1))
    assert served == (4 if running == 1 else 1)
    assert log[:served] == [(BASE, 2)] * served and log[served + 1 :] == [(BASE, 2)] * (5 - served)


def test_long_calls_run_alone_in_their_turn() -> None:
    """A long call waits for the batches started before it, and pieces queued after it wait for it."""
    order: list[str] = []
    log: list[tuple[str, int]] = []
    base, _ = recording_models(log)
    worker = Worker(queue_size=64)
    gate = held(worker)
    before = [worker.submit_pieces([piece("A", base, "the cat", 1, order)]) for _ in range(2)]
    call = worker.submit(lambda: order.append("call"))
    after = [worker.submit_pieces([piece("A", base, "a dog", 1, order)]) for _ in range(2)]
    gate.set()
    call.result(20)
    for ticket in [*before, *after]:
        ticket.pieces[0].future.result(20)
    worker.close()
    assert order == ["A", "A", "call", "A", "A"] and log == [(BASE, 1), (BASE, 1)]


def test_a_piece_that_cannot_run_fails_alone() -> None:
    log: list[tuple[str, int]] = []
    base, _ = recording_models(log)
    worker = Worker(queue_size=64)
    gate = held(worker)

    def refused() -> tuple[Backend, DecodeRequest]:
        raise ModescopeError("this piece cannot run")

    good = worker.submit_pieces([piece(BASE, base, "the cat", 2)])
    bad = worker.submit_pieces([Piece(BASE, 1, refused)])
    too_long = worker.submit_pieces([Piece(BASE, 1, lambda: (base, DecodeRequest([5] * 4090, max_tokens=10)))])
    also_good = worker.submit_pieces([piece(BASE, base, "a dog", 1)])
    gate.set()
    assert len(good.pieces[0].future.result(20)) == 2 and len(also_good.pieces[0].future.result(20)) == 1
    with pytest.raises(ModescopeError, match="cannot run"):
        bad.pieces[0].future.result(20)
    with pytest.raises(ModescopeError, match="context of 4096 tokens but this needs 4099"):
        too_long.pieces[0].future.result(20)
    worker.close()
    assert log == [(BASE, 2)]  # the two good ones decoded together


def test_the_queue_refuses_only_beyond_its_cap() -> None:
    app = create_app(recording_models([]), limits=Limits(queue_size=5))
    gate = held(app.state.worker)
    body = {"models": [BASE, TUNED], "prompt": PROMPT, "n": 2, "max_tokens": 3}

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as client:
            accepted = [asyncio.ensure_future(client.post("/api/generate", json=body)) for _ in range(5)]
            while app.state.worker.pending < 5:
                await asyncio.sleep(0.005)
            refused = [
                await client.post("/api/generate", json=body),
                await client.post("/api/generate/stream", json=body),
            ]
            gate.set()
            return [*refused, *await asyncio.gather(*accepted)]

    with ThreadPoolExecutor(1) as pool:
        first, second, *answered = pool.submit(asyncio.run, burst()).result()
    error_of(first, 503, "busy (5 requests waiting)")
    error_of(second, 503, "busy")
    assert [a.status_code for a in answered] == [200] * 5
    assert app.state.worker.pending == 0


def test_the_default_queue_holds_a_burst_of_fifty_generate_requests() -> None:
    log: list[tuple[str, int]] = []
    app = create_app(recording_models(log))
    bodies = [{"models": [BASE, TUNED], "prompt": PROMPT, "n": 2, "max_tokens": 24, "seed": k} for k in range(50)]
    answers = post_together(app, "/api/generate", bodies)
    assert [a.status_code for a in answers] == [200] * 50
    # 100 rows per model in batches of at most 64 rows: two batches each
    assert sorted(log) == [(BASE, 1), (BASE, 1), (TUNED, 1), (TUNED, 1)]


def test_an_idle_worker_waits_a_moment_for_the_rest_of_a_burst() -> None:
    """Pieces sent together arrive over a few milliseconds: the first does not start a batch of its own."""
    log: list[tuple[str, int]] = []
    base, _ = recording_models(log)
    worker = Worker(queue_size=64, linger=0.5, max_linger=2.0)
    first = worker.submit_pieces([piece(BASE, base, "the cat", 1)])
    time.sleep(0.05)
    second = worker.submit_pieces([piece(BASE, base, "a dog", 1)])
    for ticket in (first, second):
        ticket.pieces[0].future.result(20)
    worker.close()
    assert log == [(BASE, 2)]
    unbatched_log: list[tuple[str, int]] = []
    base, _ = recording_models(unbatched_log)
    worker = Worker(queue_size=64, batching=False)
    tickets = [worker.submit_pieces([piece(BASE, base, text, 1)]) for text in ("the cat", "a dog")]
    for ticket in tickets:
        ticket.pieces[0].future.result(20)
    worker.close()
    assert unbatched_log == [(BASE, 1), (BASE, 1)]
