"""The engine on the real default models agrees with full-sequence scoring of every tokenization path."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import pytest
import torch

import modescope as ms
from modescope.engine.decode import generate
from modescope.models.base import Backend, ChatPrompt
from modescope.models.hf import HFBackend
from modescope.probes.distribution import make_targets
from tests.unit.brute_force import is_boundary_text

pytestmark = pytest.mark.integration

PROMPT = "Q: Tell me a random integer between 0 and 100.\nA: Ok, the integer is"


def spellings(backend: Backend, text: bytes) -> list[tuple[int, ...]]:
    """Every token sequence spelling `text` exactly (the vocabulary is looked up by byte prefixes)."""
    if not text:
        return [()]
    found = []
    for end in range(1, len(text) + 1):
        for token in backend.vocab.ids_with_bytes(text[:end]):
            found += [(token, *rest) for rest in spellings(backend, text[end:])]
    return found


def full_sequence_scores(backend: HFBackend, prompt: list[int], paths: Sequence[tuple[int, ...]]) -> list[float]:
    """log P(path, then a boundary) with one uncached forward pass per path (batched by equal length)."""
    boundary = torch.tensor(backend.vocab.boundary_ids)
    scores = [0.0] * len(paths)
    groups: dict[int, list[int]] = defaultdict(list)
    for k, path in enumerate(paths):
        groups[len(path)].append(k)
    for length, members in groups.items():
        for start in range(0, len(members), 32):
            batch = members[start : start + 32]
            ids = torch.tensor([prompt + list(paths[k]) for k in batch])
            with torch.inference_mode():
                logits = backend.model(input_ids=ids, logits_to_keep=length + 1, use_cache=False).logits
            logprobs = torch.log_softmax(logits[..., : backend.vocab.size].double(), -1)
            for row, k in enumerate(batch):
                steps = [float(logprobs[row, i, paths[k][i]]) for i in range(length)]
                scores[k] = math.fsum(steps) + float(torch.logsumexp(logprobs[row, -1, boundary], 0))
    return scores


def straddling_tokens(backend: Backend) -> int:
    """Tokens that spell a digit and then a non-word character (they would add paths of their own)."""
    return sum(
        1
        for data in backend.vocab.token_bytes
        if len(data) > 1 and data[:1].isdigit() and is_boundary_text(data.lstrip(b"0123456789"))
    )


@pytest.mark.parametrize("tokenizations", ["canonical", "all"])
def test_masses_match_full_sequence_scoring(model: HFBackend, tokenizations: str) -> None:
    candidates = ms.integers(0, 100)
    result = ms.distribution(model, PROMPT, candidates, tokenizations=tokenizations).results[0]  # type: ignore[arg-type]
    prompt = model.prompt_ids(PROMPT)
    targets = make_targets(candidates, "optional")
    if tokenizations == "canonical":
        paths = [tuple(model.encode(t.text.decode(), add_special_tokens=False)) for t in targets]
        owners = [t.candidate for t in targets]
    else:
        assert straddling_tokens(model) == 0  # else the reference below would miss straddling paths
        per_target = [spellings(model, t.text) for t in targets]
        paths = [p for spelled in per_target for p in spelled]
        owners = [t.candidate for t, spelled in zip(targets, per_target, strict=True) for _ in spelled]
    expected = [0.0] * len(candidates)
    for owner, score in zip(owners, full_sequence_scores(model, prompt, paths), strict=True):
        expected[owner] += math.exp(score)
    for outcome, mass in zip(result.outcomes, expected, strict=True):
        assert outcome.mass == pytest.approx(mass, rel=1e-4), outcome.text
    assert result.stats.tokens_forwarded == result.stats.minimum_tokens
    assert 0.0 < result.coverage <= 1.0


def test_two_models_compared_on_the_essay_prompt(gemma: Backend, smollm: Backend) -> None:
    result = ms.distribution([gemma, smollm], PROMPT, ms.integers(0, 100), tokenizations="canonical")
    (pair,) = result.comparisons
    assert pair.kl_ab_bits > 0 and pair.kl_ba_bits > 0 and 0 < pair.js_bits <= 1
    frame = result.to_pandas()
    assert set(frame["model"]) == {"gemma-3-270m", "smollm2-135m-instruct"}
    assert frame.groupby("model")["prob"].sum().tolist() == pytest.approx([1.0, 1.0])


def test_chat_prompt_renders_through_the_template(smollm: Backend, gemma: Backend) -> None:
    chat = ChatPrompt("Roll a fair six-sided die and report the number.", system="Be brief.", prefill="I rolled a")
    text = smollm.render_chat(chat)
    assert text.endswith("<|im_start|>assistant\nI rolled a")
    assert "Be brief." in text
    result = ms.distribution(smollm, chat, ms.integers(1, 6)).results[0]
    assert result.coverage > 0.1  # the prefill makes a digit the natural next word
    with pytest.raises(ms.ModescopeError, match="no chat template"):
        gemma.prompt_ids(chat)


def test_greedy_and_sampled_continuations_record_every_token(smollm: Backend) -> None:
    prompt = smollm.prompt_ids(ChatPrompt("Are bugs real?"))
    greedy = generate(smollm, prompt, n=2, max_tokens=12)
    assert greedy[0].text == greedy[1].text and len(greedy[0].tokens) >= 1
    sampled = generate(smollm, prompt, n=4, max_tokens=12, temperature=1.0, seed=3)
    again = generate(smollm, prompt, n=4, max_tokens=12, temperature=1.0, seed=3)
    assert [c.text for c in sampled] == [c.text for c in again]
    for record in sampled[0].tokens:
        assert record.logprob <= 0 and record.entropy_bits >= 0
        assert record.top[0].logprob >= record.logprob - 1e-9 or record.id in {a.id for a in record.top}


@pytest.mark.parametrize(
    "text", ["Q: Tell me 42 random\n\nA:  ok", "café – naïve 日本 🙂", " 0 1 2 10 100 -7 3.14", "<b>tags</b>\ttab"]
)
def test_byte_table_reproduces_the_tokenizer(model: HFBackend, text: str) -> None:
    ids = model.encode(text, add_special_tokens=False)
    assert b"".join(model.vocab.token_bytes[i] for i in ids) == text.encode("utf-8")
    assert model.decode(ids) == model.tokenizer.decode(ids)
