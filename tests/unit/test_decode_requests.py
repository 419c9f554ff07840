"""Requests of different prompts and options decoded together (`decode_requests`, `BatchDecode`): each request's
continuations equal its run alone with its seed; every step's tokens are reported as they come; a cancelled
request leaves the batch at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import pytest
import torch

from modescope.engine.decode import (
    Continuation,
    DecodeRequest,
    StepToken,
    decode_requests,
    generate,
    start_decode,
)
from modescope.engine.samplers import SamplerSettings
from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend
from modescope.models.base import Rows
from tests.unit.test_batched_prompts import SETTINGS, assert_same, ending_backend
from tests.unit.test_sampling import TOKENS


class CountingToy(AnalyticBackend):
    """A closed-form model that records how many rows each decoding step forwards."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.advanced: list[int] = []

    def advance(self, rows: Rows, keep: Sequence[int], tokens: Sequence[int]) -> tuple[Rows, torch.Tensor]:
        self.advanced.append(len(keep))
        return super().advance(rows, keep, tokens)


def toy() -> CountingToy:
    return CountingToy(TOKENS, name="toy", seed=4, sharpness=1.0)


def mixed_requests(encode: Any) -> list[DecodeRequest]:
    """Requests that differ in every option: prompt (one repeated, of other lengths), n, seed, sampler, length,
    stop strings and alternatives."""
    return [
        DecodeRequest(encode("b c."), n=3, max_tokens=9, sampler=SETTINGS["min_p"], seed=2, stop=["."]),
        DecodeRequest(encode("a"), n=1, max_tokens=4, sampler=SETTINGS["greedy"], top_k_alternatives=3),
        DecodeRequest(encode("x&x"), n=4, max_tokens=12, sampler=SETTINGS["xtc"], seed=7, top_k_alternatives=0),
        DecodeRequest(encode("b c."), n=2, max_tokens=6, temperature=1.3, seed=5, stop=["a", "b"]),
        DecodeRequest(encode("a"), n=5, max_tokens=10, sampler=SETTINGS["top_k"], seed=2, stop=["."]),
    ]


def alone(backend: Any, request: DecodeRequest) -> list[Continuation]:
    options = asdict(request) | {"sampler": request.sampler}  # asdict would turn the sampler into a dict
    return generate(backend, **options)


def tokens_by_continuation(steps: Sequence[tuple[int, Sequence[StepToken]]], requests: int) -> list[dict[int, Any]]:
    """The streamed steps regrouped: per request, per continuation, its tokens and the finish reasons reported."""
    found: list[dict[int, Any]] = [{} for _ in range(requests)]
    for request, tokens in steps:
        for token in tokens:
            entry = found[request].setdefault(token.continuation, {"tokens": [], "ends": []})
            entry["tokens"].append(token.record)
            entry["ends"].append(token.finish_reason)
    return found


def test_each_request_is_exactly_its_run_alone_on_a_closed_form_model() -> None:
    backend = toy()
    requests = mixed_requests(backend.encode)
    groups = decode_requests(backend, requests)
    assert_same(groups, [alone(backend, r) for r in requests], tol=0.0)
    assert [len(g) for g in groups] == [r.n for r in requests]
    assert {c.finish_reason for g in groups for c in g} == {"eos", "stop", "length"}
    assert all(len(c.tokens) <= r.max_tokens for r, g in zip(requests, groups, strict=True) for c in g)


@pytest.mark.parametrize("max_rows", [1, 4, 7, 1000])
def test_chunks_of_at_most_max_rows_give_the_same_results(max_rows: int) -> None:
    backend = toy()
    requests = mixed_requests(backend.encode)
    whole = decode_requests(backend, requests)
    backend.advanced.clear()
    assert_same(decode_requests(backend, requests, max_rows=max_rows), whole, tol=0.0)
    # a chunk forwards at most max_rows rows, a request larger than the cap alone
    assert max(backend.advanced) <= max(max_rows, max(r.n for r in requests))


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_each_request_equals_its_run_alone_on_a_transformers_model(architecture: str) -> None:
    backend = ending_backend(architecture)
    requests = mixed_requests(backend.encode)
    # float64 weights: left padding and the batch's shape change the matmuls' rounding only (~1e-15)
    assert_same(decode_requests(backend, requests), [alone(backend, r) for r in requests], tol=1e-12)


def test_one_forward_pass_per_step_serves_every_request() -> None:
    backend = toy()
    requests = mixed_requests(backend.encode)
    backend.stats.calls = 0
    groups = decode_requests(backend, requests)
    longest = max(len(c.tokens) for g in groups for c in g)
    # the distinct prompts encoded once ("a" and "b c." are asked twice), then one pass per further token
    assert backend.stats.calls == 1 + (longest - 1)


def test_every_step_reports_each_requests_new_tokens() -> None:
    backend = toy()
    requests = mixed_requests(backend.encode)
    steps: list[tuple[int, Sequence[StepToken]]] = []

    def on_step(request: int, tokens: Sequence[StepToken]) -> bool:
        steps.append((request, list(tokens)))
        return True

    groups = decode_requests(backend, requests, on_step=on_step)
    streamed = tokens_by_continuation(steps, len(requests))
    for request, group, found in zip(requests, groups, streamed, strict=True):
        assert sorted(found) == list(range(request.n))
        for k, continuation in enumerate(group):
            assert found[k]["tokens"] == continuation.tokens  # the same records, in order
            # the finish reason comes with the last token, and only then
            assert found[k]["ends"] == [None] * (len(continuation.tokens) - 1) + [continuation.finish_reason]
    first_step = [request for request, _ in steps[: len(requests)]]
    assert sorted(first_step) == list(range(len(requests)))  # every request hears of the first step at once


def test_a_cancelled_request_leaves_the_batch_at_once_and_the_others_do_not_notice() -> None:
    backend = toy()
    requests = mixed_requests(backend.encode)
    full = decode_requests(backend, requests)
    rows_full = list(backend.advanced)
    backend.advanced.clear()
    seen = [0] * len(requests)

    def on_step(request: int, tokens: Sequence[StepToken]) -> bool:
        seen[request] += 1
        return not (request == 2 and seen[request] == 2)  # request 2 stops after its second step

    groups = decode_requests(backend, requests, on_step=on_step)
    # its continuations stop at the second token, "cancelled" unless they ended there anyway
    assert [c.tokens for c in groups[2]] == [c.tokens[:2] for c in full[2]]
    ends = [c.finish_reason if len(c.tokens) <= 2 else "cancelled" for c in full[2]]
    assert [c.finish_reason for c in groups[2]] == ends and "cancelled" in ends
    assert_same(groups[:2] + groups[3:], full[:2] + full[3:], tol=0.0)
    # from the cancel on, its rows are no longer forwarded: after step t the full run forwarded those of its
    # continuations longer than t tokens, the cancelled one none once t >= 2
    longer = [sum(len(c.tokens) > t for c in full[2]) for t in range(1, len(rows_full) + 1)]
    assert longer[1] > 0, "pick requests whose third one decodes more than two steps"
    assert backend.advanced[0] == rows_full[0]
    assert (
        backend.advanced[1:]
        == [whole - live for whole, live in zip(rows_full, longer, strict=True)][1:][: len(backend.advanced) - 1]
    )
    assert sum(backend.advanced) < sum(rows_full)


def test_a_decode_steps_and_cancels_between_steps() -> None:
    backend = toy()
    requests = mixed_requests(backend.encode)
    decoding = start_decode(backend, requests)
    assert decoding.step() and 0 < decoding.live_rows <= sum(r.n for r in requests)
    decoding.cancel(1)  # the second request, decoded in another block (the requests go by prompt)
    assert decoding.order != list(range(len(requests)))
    while decoding.step():
        pass
    groups = decoding.groups()
    assert [len(c.tokens) for c in groups[1]] == [1] * requests[1].n
    assert {c.finish_reason for c in groups[1]} == {"cancelled"}
    others = [0, 2, 3, 4]
    assert_same([groups[k] for k in others], [alone(backend, requests[k]) for k in others], tol=0.0)


def test_a_request_with_a_wrong_option_is_refused_before_it_joins_a_batch() -> None:
    backend = toy()
    with pytest.raises(ModescopeError, match="n must be at least 1"):
        DecodeRequest(backend.encode("a"), n=0).settings()
    with pytest.raises(ModescopeError, match="stop string is empty"):
        DecodeRequest(backend.encode("a"), stop=[""]).settings()
    with pytest.raises(ModescopeError, match="max tokens"):
        decode_requests(backend, [DecodeRequest(backend.encode("a")), DecodeRequest(backend.encode("a"), max_tokens=0)])
    with pytest.raises(ModescopeError, match="max rows"):
        decode_requests(backend, [DecodeRequest(backend.encode("a"))], max_rows=0)
    assert isinstance(DecodeRequest(backend.encode("a"), sampler=SamplerSettings()).settings(), SamplerSettings)
