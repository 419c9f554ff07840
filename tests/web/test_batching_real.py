"""Batched requests on a real default model: requests of other prompts (left-padded to one length), seeds,
samplers and lengths decoded together give each request the tokens of its run alone, and its log-probabilities
within 1e-5.

As in tests/unit/test_batched_prompts.py (test_a_real_model_batched_equals_one_prompt_at_a_time), the model runs
in float64: in float32 the CPU matmul kernels round a row by its place in the batch (~3e-5 in log-probability,
padding or not), which can move a draw in the low-probability tail to a neighbouring token. 1e-5 is far below
what a wrong position, padding column or cache row costs (1e-2 and more)."""

from __future__ import annotations

import pytest

import modescope as ms
from modescope.engine.decode import DecodeRequest, decode_requests, generate
from modescope.engine.samplers import SamplerSettings
from tests.unit.test_batched_prompts import assert_same

pytestmark = pytest.mark.integration


def test_requests_batched_on_a_real_model_equal_their_runs_alone() -> None:
    backend = ms.load("smollm2-135m-instruct", device="cpu")
    backend.model.double()  # our own copy: the session fixture stays float32
    ids = [backend.prompt_ids(p) for p in ["Q: Are bugs real?\nA:", "The capital of France is", "1, 2, 3,"]]
    requests = [
        DecodeRequest(ids[0], n=2, max_tokens=8, sampler=SamplerSettings.make(temperature=1.0), seed=1),
        DecodeRequest(ids[1], n=1, max_tokens=6, temperature=0.0, stop=["."]),
        DecodeRequest(ids[2], n=3, max_tokens=8, sampler=SamplerSettings.make(temperature=0.8, min_p=0.05), seed=2),
        DecodeRequest(ids[0], n=2, max_tokens=5, sampler=SamplerSettings.make(temperature=1.0), seed=3),
    ]
    together = decode_requests(backend, requests)
    alone = [
        generate(backend, r.prompt, r.n, r.max_tokens, r.temperature, r.sampler, r.top_k_alternatives, r.seed, r.stop)
        for r in requests
    ]
    assert_same(together, alone, tol=1e-5)
    assert len({c.text for group in together for c in group}) > 3  # the requests did sample different texts
