"""The fused chunked LM head: the same next-token log-probabilities as transformers' head and log-softmax, on
tiny float32 llama and gemma3 models (prompt, batched prompts, cached steps, branches), and the fallback for
heads that are not plain products."""

from __future__ import annotations

import pytest
import torch

import modescope as ms
from modescope.models import lm_head
from modescope.models.hf import HFBackend
from tests.unit.tiny_models import tiny_backend

PROMPT = "Q: 12?\nA:"


def in_float32(architecture: str) -> HFBackend:
    reference = tiny_backend(architecture)
    return HFBackend(f"tiny-{architecture}-fp32", reference.model.float(), reference.tokenizer, source="in-process")


def both_ways(backend: HFBackend, run: object) -> tuple[torch.Tensor, torch.Tensor]:
    """`run(backend)` through the fused head, then through transformers' own."""
    assert callable(run)
    backend.fused_head = True
    fused = run(backend)
    backend.fused_head = False
    try:
        plain = run(backend)
    finally:
        backend.fused_head = True
    return fused, plain


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_fused_head_gives_transformers_log_probabilities(architecture: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm_head, "CHUNK", 48)  # several chunks and a short last one over the 265-token vocabulary
    backend = in_float32(architecture)
    assert backend.fused_head
    ids = backend.prompt_ids(PROMPT)

    def steps(b: HFBackend) -> torch.Tensor:
        rows, first = b.start(ids)
        rows, second = b.extend(rows, [0, 0, 0], [5, 17, 260])
        _, third = b.advance(rows, [0, 2], [9, 33])
        batched = b.start_many([ids, ids[:3], ids[1:]])[1]
        return torch.cat([first, second, third, batched, b.next_logprobs([ids, ids[:4]])])

    fused, plain = both_ways(backend, steps)
    assert fused.dtype == torch.float32 and fused.shape == plain.shape
    assert torch.allclose(fused, plain, atol=2e-6, rtol=0)
    assert torch.allclose(fused.double().exp().sum(-1), torch.ones(len(fused), dtype=torch.float64), atol=1e-6)


def test_fused_head_keeps_answer_masses() -> None:
    backend = in_float32("llama")
    candidates = ms.integers(0, 20)
    fused, plain = both_ways(backend, lambda b: ms.distribution(b, PROMPT, candidates).to_pandas()["mass"])
    assert ((fused - plain).abs() <= 1e-5 * plain).all()


def test_heads_that_are_not_plain_products_keep_transformers_own() -> None:
    softcapped = tiny_backend("gemma3").model.float()
    softcapped.config.final_logit_softcapping = 30.0
    assert lm_head.plain_head(softcapped) is None
    assert lm_head.plain_head(tiny_backend("llama").model) is None  # float64: the exact reference path
    backend = HFBackend("capped", softcapped, tiny_backend("gemma3").tokenizer, source="in-process")
    assert not backend.fused_head
    _, logprobs = backend.start(backend.prompt_ids(PROMPT))
    assert torch.isfinite(logprobs).all()


def test_the_head_is_read_at_every_call_not_kept_from_loading() -> None:
    backend = in_float32("llama")
    ids = backend.prompt_ids(PROMPT)
    # new weights put in after loading (a new tensor, not an in-place change), as `model.double()` or an
    # adapter swap would: the fused head must use them
    head = backend.model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach() * 0.5)
    fused, plain = both_ways(backend, lambda b: b.start(ids)[1])
    assert torch.allclose(fused, plain, atol=2e-6, rtol=0)
    backend.model.double()  # no longer float32: transformers' head, in float64 logits
    assert lm_head.plain_head(backend.model) is None
    fused, plain = both_ways(backend, lambda b: b.start(ids)[1])
    assert torch.equal(fused, plain)


def test_picked_columns_and_tiny_set_sums_are_those_of_the_whole_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """With `columns` the head gives exactly the whole head's values at those columns (in their order, across
    chunks and a short last one); set sums come from the same exponentials, and a set whose tokens lie ~200
    nats under the others (its float32 exponentials are 0) is summed again in float64."""
    monkeypatch.setattr(lm_head, "CHUNK", 48)
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(265, 16, generator=generator)
    hidden = torch.randn(5, 16, generator=generator)
    weight[200:203] = -200 * hidden[0] / hidden[0].norm() ** 2  # row 0's logits there: -200
    sets = torch.zeros(3, 265)
    sets[0, [1, 50, 100, 264]] = 1
    sets[1, 200:203] = 1  # underflows in float32 for row 0
    full, sums = lm_head.head_logprobs(hidden, weight, 265, sets)
    columns = torch.tensor([264, 3, 47, 48, 200, 96])
    picked, picked_sums = lm_head.head_logprobs(hidden, weight, 265, sets, columns)
    assert torch.equal(picked, full[:, columns])
    assert sums is not None and picked_sums is not None and torch.equal(sums, picked_sums)
    exact = torch.log_softmax((hidden @ weight.T).double(), -1).exp() @ sets[:2].double().T
    # float32 logits of size 200 carry ~1e-5 of rounding into their exponentials
    assert torch.allclose(sums[:, :2], exact, rtol=1e-4, atol=0)
    assert 0 < sums[0, 1] < 1e-80 and sums[:, 2].eq(0).all()  # summed again, and an empty set stays 0
