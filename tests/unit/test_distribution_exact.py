"""The engine's answer-set masses equal brute-force per-sequence scoring (float64, 1e-9)."""

from __future__ import annotations

import itertools
import math

import pytest

from modescope.models.analytic import AnalyticBackend
from modescope.probes.distribution import distribution, make_targets
from tests.unit.brute_force import Scorer, is_boundary_text, spellings, target_mass
from tests.unit.tiny_models import tiny_backend

# Several spellings for most candidates ("12" = "1"+"2" = "12"), straddling tokens ("1," and "2." end a
# candidate and start a boundary), and a token that continues a word ("1a").
TOKENS = ["1", "2", "0", "10", "12", "21", "00", " ", " 1", " 12", "1,", "2.", ",", ".", "a", "1a", "Q"]
CANDIDATES = ["1", "2", "10", "12", "21", "100"]


def enumerate_mass(backend: AnalyticBackend, prompt: list[int], text: bytes, depth: int) -> float:
    """Truly brute force: every token sequence up to `depth` tokens, kept when it is a minimal witness of
    'the continuation spells `text`, then a boundary'."""
    total = 0.0
    vocab = backend.vocab.token_bytes
    for length in range(1, depth + 1):
        for seq in itertools.product(range(backend.vocab.size), repeat=length):
            head = b"".join(vocab[t] for t in seq[:-1])
            if any(t == 0 for t in seq[:-1]) or not text.startswith(head):
                continue
            last = seq[-1]
            if last == 0:
                hit = head == text
            else:
                whole = head + vocab[last]
                hit = whole.startswith(text) and len(whole) > len(text) and is_boundary_text(whole[len(text) :])
            if hit:
                total += math.exp(backend.sequence_logprob(prompt, seq))
    return total


@pytest.fixture(scope="module")
def analytic() -> AnalyticBackend:
    return AnalyticBackend(TOKENS, seed=7, sharpness=2.0)


def test_analytic_all_tokenizations_match_exhaustive_enumeration(analytic: AnalyticBackend) -> None:
    prompt = analytic.prompt_ids("Q")
    result = distribution(analytic, "Q", CANDIDATES[:4], leading_space="optional").results[0]
    for outcome in result.outcomes:
        expected = sum(
            enumerate_mass(analytic, prompt, t.text, depth=4) for t in make_targets([outcome.text], "optional")
        )
        assert outcome.mass == pytest.approx(expected, rel=1e-9, abs=1e-15), outcome.text
    assert result.coverage == pytest.approx(sum(o.mass for o in result.outcomes), rel=1e-12)


@pytest.mark.parametrize("leading_space", ["optional", "required", "none"])
def test_analytic_masses_match_spelling_enumeration(analytic: AnalyticBackend, leading_space: str) -> None:
    prompt = analytic.prompt_ids("Q")
    scorer = Scorer(analytic, prompt)
    result = distribution(analytic, "Q", CANDIDATES, leading_space=leading_space).results[0]  # type: ignore[arg-type]
    for outcome in result.outcomes:
        expected = sum(
            target_mass(scorer, t.text, lambda text: list(spellings(analytic, text)), straddle=True)
            for t in make_targets([outcome.text], leading_space)  # type: ignore[arg-type]
        )
        assert outcome.mass == pytest.approx(expected, rel=1e-9), outcome.text
    assert any(len(list(spellings(analytic, b"12"))) > 1 for _ in [0])  # the vocabulary really has several spellings


def test_analytic_canonical_mode_scores_only_the_canonical_spelling(analytic: AnalyticBackend) -> None:
    prompt = analytic.prompt_ids("Q")
    scorer = Scorer(analytic, prompt)
    result = distribution(analytic, "Q", CANDIDATES, tokenizations="canonical").results[0]
    for outcome in result.outcomes:
        expected = sum(
            target_mass(scorer, t.text, lambda text: [tuple(analytic.encode(text.decode()))], straddle=False)
            for t in make_targets([outcome.text], "optional")
        )
        assert outcome.mass == pytest.approx(expected, rel=1e-9), outcome.text
    everything = distribution(analytic, "Q", CANDIDATES).results[0]
    assert all(c.mass < a.mass for c, a in zip(result.outcomes, everything.outcomes, strict=True))


def test_nested_candidates_stay_disjoint() -> None:
    """'a b' followed by a boundary is also 'a' followed by a boundary: 'a' must not count it twice."""
    backend = AnalyticBackend(["a", " ", "b", " b", "a b", "c", "."], seed=3, sharpness=1.5)
    prompt = backend.prompt_ids("c")
    scorer = Scorer(backend, prompt)
    both = distribution(backend, "c", ["a", "a b"], leading_space="none").results[0]

    def raw(text: bytes) -> float:
        return target_mass(scorer, text, lambda t: list(spellings(backend, t)), straddle=True)

    assert both.outcomes[1].mass == pytest.approx(raw(b"a b"), rel=1e-9)
    assert both.outcomes[0].mass == pytest.approx(raw(b"a") - raw(b"a b"), rel=1e-9)
    alone = distribution(backend, "c", ["a"], leading_space="none").results[0]
    assert alone.outcomes[0].mass == pytest.approx(raw(b"a"), rel=1e-9)


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
@pytest.mark.parametrize("tokenizations", ["all", "canonical"])
def test_tiny_transformer_matches_uncached_full_sequence_scoring(architecture: str, tokenizations: str) -> None:
    backend = tiny_backend(architecture)
    prompt_text = "Q: pick 1 to 12."
    candidates = [str(i) for i in range(13)] + ["100"]
    result = distribution(backend, prompt_text, candidates, tokenizations=tokenizations, batch_size=7).results[0]  # type: ignore[arg-type]
    scorer = Scorer(backend, backend.prompt_ids(prompt_text))

    def canonical(text: bytes) -> list[tuple[int, ...]]:
        return [tuple(backend.encode(text.decode(), add_special_tokens=False))]

    def every(text: bytes) -> list[tuple[int, ...]]:
        return list(spellings(backend, text))

    for outcome in result.outcomes:
        expected = sum(
            target_mass(scorer, t.text, every if tokenizations == "all" else canonical, straddle=tokenizations == "all")
            for t in make_targets([outcome.text], "optional")
        )
        assert outcome.mass == pytest.approx(expected, rel=1e-9), outcome.text
    stats = result.stats
    assert stats.tokens_forwarded == stats.minimum_tokens  # one position per tree node, prompt encoded once
    if tokenizations == "all":
        assert len(every(b" 10")) > 2  # " 10" = " "+"1"+"0" = " 1"+"0" = " 10" = ...


@pytest.mark.parametrize("temperature", [0.5, 1.7])
def test_per_token_temperature_equals_a_sharper_model(temperature: float) -> None:
    """The analytic model's logits are sharpness * g(prefix): temperature tau is sharpness / tau exactly."""
    hot = AnalyticBackend(TOKENS, seed=7, sharpness=2.0)
    same = AnalyticBackend(TOKENS, seed=7, sharpness=2.0 / temperature)
    tempered = distribution(hot, "Q", CANDIDATES, temperature=temperature).results[0]
    reference = distribution(same, "Q", CANDIDATES).results[0]
    for a, b in zip(tempered.outcomes, reference.outcomes, strict=True):
        assert a.mass == pytest.approx(b.mass, rel=1e-9)


def test_bad_temperature_is_a_user_error(analytic: AnalyticBackend) -> None:
    from modescope.errors import ModescopeError

    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ModescopeError, match="temperature must be a positive number"):
            distribution(analytic, "Q", CANDIDATES, temperature=bad)
