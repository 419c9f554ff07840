"""Batched decoding on random toy models (hypothesis): any mix of requests (prompts, n, seeds, samplers, max tokens,
stop strings, alternatives), decoded together in any row cap, gives each request exactly its run alone; a request
cancelled at any step keeps the tokens it had, and the others do not notice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from hypothesis import given, note
from hypothesis import strategies as st

from modescope.engine.decode import Continuation, DecodeRequest, StepToken, decode_requests, generate
from modescope.engine.samplers import SamplerSettings
from modescope.models.analytic import AnalyticBackend
from tests.property.strategies import describe, prompt_texts, property_settings, toy_backends

SAMPLERS = [
    SamplerSettings.make(temperature=0.0),
    SamplerSettings.make(temperature=1.0),
    SamplerSettings.make(temperature=1.5, min_p=0.1),
    SamplerSettings.make(temperature=0.8, top_k=3, top_p=0.9),
    SamplerSettings.make(temperature=1.0, xtc_probability=0.5, xtc_threshold=0.05),
]


@st.composite
def requests(draw: st.DrawFn, backend: AnalyticBackend) -> DecodeRequest:
    text = draw(prompt_texts(backend))
    return DecodeRequest(
        backend.encode(text),
        n=draw(st.integers(1, 4)),
        max_tokens=draw(st.integers(1, 6)),
        sampler=draw(st.sampled_from(SAMPLERS)),
        top_k_alternatives=draw(st.integers(0, 4)),
        seed=draw(st.integers(0, 2**32)),
        stop=draw(st.lists(st.sampled_from(backend.pieces[1:]), max_size=2)),
    )


def alone(backend: AnalyticBackend, request: DecodeRequest) -> list[Continuation]:
    return generate(backend, **(asdict(request) | {"sampler": request.sampler}))


def dicts(groups: Sequence[Sequence[Continuation]]) -> list[list[dict[str, Any]]]:
    return [[asdict(c) for c in group] for group in groups]


@property_settings(60)
@given(data=st.data(), backend=toy_backends())
def test_any_batch_gives_each_request_its_run_alone(data: st.DataObject, backend: AnalyticBackend) -> None:
    note(describe(backend))
    batch = data.draw(st.lists(requests(backend), min_size=1, max_size=5))
    max_rows = data.draw(st.integers(1, 12))
    expected = [alone(backend, r) for r in batch]
    assert dicts(decode_requests(backend, batch, max_rows=max_rows)) == dicts(expected)


@property_settings(60)
@given(data=st.data(), backend=toy_backends())
def test_a_request_cancelled_at_any_step_keeps_its_tokens(data: st.DataObject, backend: AnalyticBackend) -> None:
    note(describe(backend))
    batch = data.draw(st.lists(requests(backend), min_size=2, max_size=4))
    victim = data.draw(st.integers(0, len(batch) - 1))
    at = data.draw(st.integers(1, 6))
    seen = [0] * len(batch)

    def on_step(request: int, tokens: Sequence[StepToken]) -> bool:
        seen[request] += 1
        return not (request == victim and seen[request] == at)

    groups = decode_requests(backend, batch, on_step=on_step)
    full = alone(backend, batch[victim])
    assert [c.tokens for c in groups[victim]] == [c.tokens[:at] for c in full]
    ends = [c.finish_reason if len(c.tokens) <= at else "cancelled" for c in full]
    assert [c.finish_reason for c in groups[victim]] == ends
    others = [k for k in range(len(batch)) if k != victim]
    assert dicts([groups[k] for k in others]) == dicts([alone(backend, batch[k]) for k in others])
