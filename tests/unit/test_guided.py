"""Base-guided decoding: the mixture backend equals the mixture computed by hand, through every probe path."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from modescope.engine.decode import generate, generate_groups
from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend
from modescope.models.base import Backend, Capabilities
from modescope.models.hf import HFBackend
from modescope.models.vocab import Vocabulary
from modescope.probes.distribution import distribution, make_targets
from modescope.remedies.guided import MIXES, GuidedBackend, guided
from tests.unit.brute_force import Scorer, spellings, target_mass
from tests.unit.tiny_models import tiny_backend

ALPHAS = [0.0, 0.25, 0.5, 0.9, 1.0]
PROMPT = "Q: 12, 10"


def pair() -> tuple[HFBackend, HFBackend]:
    """Two tiny models with the same tokenizer and different weights: a 'tuned' one and its 'base'."""
    tuned, base = tiny_backend(seed=0), tiny_backend(seed=1)
    tuned.name, base.name = "tiny-tuned", "tiny-base"
    return tuned, base


def hand_mix(tuned: np.ndarray, base: np.ndarray, alpha: float, mix: str) -> np.ndarray:
    """The mixture of two rows of log-probabilities, written out in numpy."""
    if alpha in (0.0, 1.0):
        return base if alpha else tuned
    if mix == "geometric":
        mixed = (1 - alpha) * tuned + alpha * base
        return mixed - np.logaddexp.reduce(mixed)
    with np.errstate(divide="ignore"):
        return np.log((1 - alpha) * np.exp(tuned) + alpha * np.exp(base))


class HandMixture(Backend):
    """A reference backend: the mixture of both models' uncached distributions, mixed in numpy."""

    def __init__(self, tuned: Backend, base: Backend, alpha: float, mix: str) -> None:
        super().__init__("hand", tuned.vocab, tuned.max_context)
        self.tuned, self.base, self.alpha, self.mix = tuned, base, alpha, mix

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tuned.encode(text, add_special_tokens)

    def next_logprobs(self, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        tuned, base = self.tuned.next_logprobs(prefixes).numpy(), self.base.next_logprobs(prefixes).numpy()
        rows = [hand_mix(t, b, self.alpha, self.mix) for t, b in zip(tuned, base, strict=True)]
        return torch.tensor(np.stack(rows), dtype=torch.float64)


def without_token(backend: HFBackend, token: int) -> HFBackend:
    """The model with `token` made impossible (log-probability -inf) everywhere."""
    original = backend._logprobs

    def masked(logits: torch.Tensor) -> torch.Tensor:
        logprobs = original(logits)
        logprobs[..., token] = -math.inf
        return torch.log_softmax(logprobs, dim=-1)

    backend._logprobs = masked  # type: ignore[method-assign]
    return backend


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_next_token_mixture_equals_the_hand_computed_one(mix: str, alpha: float) -> None:
    tuned, base = pair()
    mixture = guided(tuned, base, alpha, mix)
    prompt = tuned.encode(PROMPT)
    rows, first = mixture.start(prompt)
    _, children = mixture.extend(rows, [0, 0], [5, 7])
    reference = HandMixture(tuned, base, alpha, mix)
    expected = reference.next_logprobs([prompt, [*prompt, 5], [*prompt, 7]])
    assert torch.allclose(torch.cat([first, children]), expected, atol=1e-9, rtol=0)
    assert torch.allclose(mixture.next_logprobs([prompt]), expected[:1], atol=1e-12, rtol=0)
    assert float(first.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    if alpha in (0.0, 1.0):  # exactly the pure model, bit for bit
        assert torch.equal(first, (base if alpha else tuned).start(prompt)[1])


def test_the_same_model_as_both_is_that_model_at_one_pass_per_step() -> None:
    tuned, _ = pair()
    prompt = tuned.encode(PROMPT)
    mixture = guided(tuned, tuned, 0.5, "geometric")
    assert torch.equal(mixture.start(prompt)[1], tuned.start(prompt)[1])
    assert mixture.stats.tokens == len(prompt) and mixture.stats.calls == 1


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_a_token_one_model_rules_out_is_out_of_the_geometric_mix_only(alpha: float) -> None:
    tuned, base = pair()
    banned = 9
    without_token(base, banned)
    prompt = tuned.encode(PROMPT)
    assert float(tuned.start(prompt)[1][0, banned]) > -30  # the tuned model gives it real weight
    geometric = guided(tuned, base, alpha, "geometric").start(prompt)[1][0]
    arithmetic = guided(tuned, base, alpha, "arithmetic").start(prompt)[1][0]
    assert geometric[banned] == -math.inf and float(geometric.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    tuned_p = float(tuned.start(prompt)[1][0, banned].exp())
    assert float(arithmetic[banned].exp()) == pytest.approx((1 - alpha) * tuned_p, rel=1e-9)
    # at the ends the pure model, impossible token included
    assert float(guided(tuned, base, 0.0).start(prompt)[1][0, banned]) > -30
    assert guided(tuned, base, 1.0).start(prompt)[1][0, banned] == -math.inf
    samples = generate(guided(tuned, base, alpha), prompt, n=32, max_tokens=3, temperature=1.0, seed=0)
    assert banned not in {t.id for c in samples for t in c.tokens}


@pytest.mark.parametrize("mix", MIXES)
def test_samples_carry_the_mixture_log_probability_and_repeat_with_the_seed(mix: str) -> None:
    tuned, base = pair()
    mixture = guided(tuned, base, 0.4, mix)
    reference = HandMixture(tuned, base, 0.4, mix)
    prompt = tuned.encode(PROMPT)
    before = tuned.stats.tokens + base.stats.tokens
    samples = generate(mixture, prompt, n=4, max_tokens=6, temperature=1.0, seed=3)
    assert mixture.stats.tokens == tuned.stats.tokens + base.stats.tokens - before  # both models' positions
    assert mixture.stats.tokens == 2 * (len(prompt) + sum(len(c.tokens) - 1 for c in samples))
    for completion in samples:
        ids = [t.id for t in completion.tokens]
        expected = reference.next_logprobs([prompt + ids[:k] for k in range(len(ids))])
        for k, record in enumerate(completion.tokens):
            assert record.logprob == pytest.approx(float(expected[k, record.id]), abs=1e-9)
            assert record.raw_logprob == pytest.approx(float(expected[k, record.id]), abs=1e-9)
    again = generate(mixture, prompt, n=4, max_tokens=6, temperature=1.0, seed=3)
    assert [[t.id for t in c.tokens] for c in again] == [[t.id for t in c.tokens] for c in samples]
    assert len({c.text for c in samples}) > 1


def test_prompt_sets_decode_together_as_they_would_alone() -> None:
    tuned, base = pair()
    mixture = guided(tuned, base, 0.5)
    prompts = [tuned.encode(PROMPT), tuned.encode("Q: 2. 100, 1")]
    groups = generate_groups(mixture, prompts, n=3, max_tokens=6, temperature=1.0, seed=5)
    for prompt, group in zip(prompts, groups, strict=True):
        alone = generate(mixture, prompt, n=3, max_tokens=6, temperature=1.0, seed=5)
        assert [[t.id for t in c.tokens] for c in group] == [[t.id for t in c.tokens] for c in alone]
        for a, b in zip(group, alone, strict=True):
            assert [t.logprob for t in a.tokens] == pytest.approx([t.logprob for t in b.tokens], abs=1e-9)


def test_gathered_and_joined_rows_continue_the_right_prefixes() -> None:
    """Best-first expansion (multiverse) gathers rows of earlier batches; wide tree levels are joined."""
    tuned, base = pair()
    mixture = guided(tuned, base, 0.3, "arithmetic")
    reference = HandMixture(tuned, base, 0.3, "arithmetic")
    prompt = tuned.encode(PROMPT)
    rows, _ = mixture.start(prompt)
    first, _ = mixture.extend(rows, [0, 0], [5, 7])
    second, _ = mixture.extend(rows, [0], [9])
    joined = mixture.concat([first, second])
    _, after_joined = mixture.extend(joined, [2, 0], [4, 4])
    picked = mixture.gather([(second, [0]), (first, [1])])
    _, after_picked = mixture.advance(picked, [1, 0], [6, 8])
    expected_joined = reference.next_logprobs([[*prompt, 9, 4], [*prompt, 5, 4]])
    expected_picked = reference.next_logprobs([[*prompt, 7, 6], [*prompt, 9, 8]])
    assert torch.allclose(after_joined, expected_joined, atol=1e-9, rtol=0)
    assert torch.allclose(after_picked, expected_picked, atol=1e-9, rtol=0)


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("tokenizations", ["all", "canonical"])
def test_exact_answer_set_distribution_is_the_product_of_mixture_steps(mix: str, tokenizations: str) -> None:
    tuned, base = pair()
    mixture = guided(tuned, base, 0.5, mix)
    candidates = ["1", "2", "10", "12", "100"]
    result = distribution(mixture, PROMPT, candidates, tokenizations=tokenizations, batch_size=3).results[0]  # type: ignore[arg-type]
    scorer = Scorer(HandMixture(tuned, base, 0.5, mix), mixture.prompt_ids(PROMPT))

    def paths(text: bytes) -> list[tuple[int, ...]]:
        if tokenizations == "all":
            return list(spellings(mixture, text))
        return [tuple(mixture.encode(text.decode(), add_special_tokens=False))]

    for outcome in result.outcomes:
        expected = sum(
            target_mass(scorer, t.text, paths, straddle=tokenizations == "all")
            for t in make_targets([outcome.text], "optional")
        )
        assert outcome.mass == pytest.approx(expected, rel=1e-9), outcome.text
    assert result.model == mixture.name
    assert mixture.stats.tokens == 2 * result.stats.minimum_tokens  # one position per tree node in each model


def test_chat_prompts_render_through_the_tuned_models_template() -> None:
    tuned, base = pair()
    tuned.tokenizer = copy.copy(tuned.tokenizer)
    tuned.tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}A:"
    mixture = guided(tuned, base, 0.5)  # the base has no chat template: it reads the tuned model's ids
    chat = mixture.with_chat(system="sys", prefill=" 1")
    assert chat.prompt_ids("Q") == tuned.with_chat(system="sys", prefill=" 1").prompt_ids("Q")
    assert chat.decode(chat.prompt_ids("Q")) == "<system>sys<user>QA: 1"
    assert mixture.prompt_ids("Q") == tuned.encode("Q")  # plain prompts stay plain
    # a tuned model given as a chat view keeps its chat style in the mixture
    assert guided(tuned.with_chat(system="sys", prefill=" 1"), base, 0.5).prompt_ids("Q") == chat.prompt_ids("Q")
    with pytest.raises(ModescopeError, match="no chat template"):
        guided(base, tuned, 0.5).with_chat()


def test_name_fingerprint_and_context() -> None:
    tuned, base = pair()
    mixture = guided(tuned, base, 0.5)
    assert mixture.name == "tiny-tuned~geometric0.5~tiny-base"
    assert guided(tuned, base, 0.25, "arithmetic").name == "tiny-tuned~arithmetic0.25~tiny-base"
    assert mixture.max_context == min(tuned.max_context, base.max_context)
    prints = {guided(tuned, base, a, m).fingerprint() for a in (0.25, 0.5) for m in MIXES}
    assert len(prints) == 4 and None not in prints
    assert mixture.fingerprint() == guided(tuned, base, 0.5).fingerprint()
    assert guided(AnalyticBackend(["a"]), AnalyticBackend(["a"], seed=1), 0.5).fingerprint() is None


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, math.inf])
def test_alpha_outside_zero_one_is_refused(alpha: float) -> None:
    tuned, base = pair()
    with pytest.raises(ModescopeError, match=r"alpha must be a number from 0 .* to 1 .*--guide-alpha in \[0, 1\]"):
        guided(tuned, base, alpha)


def test_unknown_mix_is_refused_naming_the_choices() -> None:
    tuned, base = pair()
    with pytest.raises(ModescopeError, match="unknown mix 'harmonic'; use --guide-mix geometric or arithmetic"):
        guided(tuned, base, 0.5, "harmonic")


def test_different_tokenizers_are_refused() -> None:
    tuned, _ = pair()
    small = AnalyticBackend(["a", "b"], name="toy")
    with pytest.raises(ModescopeError, match=rf"same tokenizer: 'tiny-tuned' has {tuned.vocab.size} tokens, 'toy' 3; "):
        guided(tuned, small, 0.5)
    respelled = AnalyticBackend([f"t{i}" for i in range(tuned.vocab.size - 1)], name="toy")
    with pytest.raises(ModescopeError, match=r"spell them differently .*guide a model with its own base or sibling"):
        guided(tuned, respelled, 0.5)
    other_eos = copy.copy(tuned)
    other_eos.name = "other"
    other_eos.vocab = Vocabulary(tuned.vocab.token_bytes, tuned.vocab.special_ids, frozenset({5}))
    with pytest.raises(ModescopeError, match=r"'tiny-tuned' ends text with tokens \[0\], 'other' with \[5\]"):
        guided(tuned, other_eos, 0.5)


def test_models_without_whole_distributions_are_refused() -> None:
    tuned, base = pair()
    server = copy.copy(base)
    server.samples_on_server = True
    with pytest.raises(ModescopeError, match="the guide 'tiny-base' samples on a server; load it in-process"):
        guided(tuned, server, 0.5)
    top_k = copy.copy(tuned)
    top_k.capabilities = Capabilities("top-k", 20)
    with pytest.raises(ModescopeError, match="the tuned model 'tiny-tuned' shows top-20 alternatives"):
        guided(top_k, base, 0.5)


def test_a_guided_backend_is_a_backend() -> None:
    tuned, base = pair()
    assert isinstance(guided(tuned, base, 0.5), GuidedBackend)
