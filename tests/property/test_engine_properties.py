"""Exact answer-set masses on random analytic vocabularies and candidate sets equal brute-force enumeration.

The reference is tests/unit/brute_force.py (every spelling scored one prefix at a time, no KV cache), made
disjoint here from the events' containment worked out top-down (which targets' events lie inside which),
independently of the engine's bottom-up `_nested_in`. Masses must agree within 1e-9 relative (1e-13 absolute,
for masses that are differences of nearly equal nested events).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import assume, event, given, note
from hypothesis import strategies as st

from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend
from modescope.models.base import Capabilities
from modescope.probes.candidates import integers
from modescope.probes.distribution import LEADING_VARIANTS, ModelDistribution, outcome_distributions
from tests.property.strategies import (
    DIGITS,
    candidate_texts,
    describe,
    prompt_texts,
    property_settings,
    toy_backends,
)
from tests.unit.brute_force import Scorer, boundary_tokens, is_boundary_text, spellings, target_mass

REL, ABS = 1e-9, 1e-13
SERVER = "toy@http://127.0.0.1:9/v1"
Path = tuple[int, ...]


class TemperedScorer(Scorer):
    """The brute-force scorer of a model whose every next-token distribution is tempered first."""

    def __init__(self, backend: AnalyticBackend, prompt: Sequence[int], temperature: float) -> None:
        super().__init__(backend, prompt)
        self.temperature = temperature

    def dist(self, path: tuple[int, ...]) -> torch.Tensor:
        if path not in self.memo:
            raw = self.backend.next_logprobs([self.prompt + path])[0]
            # less the maximum first: softmax does not see it, and a tiny temperature then cannot overflow
            tempered = torch.log_softmax((raw - raw.max()) / self.temperature, dim=-1)
            # exp() of anything below -1e300 is 0 already; as -inf, path sums cannot overflow math.fsum
            self.memo[path] = tempered.masked_fill(tempered < -1e300, -math.inf)
        return self.memo[path]


def target_texts(candidates: Sequence[str], leading_space: str) -> list[tuple[int, bytes]]:
    """(candidate index, text) of every whitespace variant of every candidate."""
    return [(k, (v + c).encode()) for k, c in enumerate(candidates) for v in LEADING_VARIANTS[leading_space]]


def canonical_path(backend: AnalyticBackend, text: bytes) -> Path | None:
    """The toy tokenizer's encoding of `text`, None when its greedy longest match cannot encode it."""
    try:
        return tuple(backend.encode(text.decode(), add_special_tokens=False))
    except ValueError:
        return None


def contains(backend: AnalyticBackend, outer: bytes, inner: bytes, canonical: bool) -> bool:
    """Whether every continuation in `inner`'s event is also in `outer`'s: `inner` spells `outer` and goes on
    past a boundary (a non-word character; in canonical mode, a boundary token right after `outer`'s path)."""
    if canonical:
        short, long = canonical_path(backend, outer), canonical_path(backend, inner)
        if short is None or long is None or len(long) <= len(short) or long[: len(short)] != short:
            return False
        return long[len(short)] in boundary_tokens(backend)
    return len(inner) > len(outer) and inner.startswith(outer) and is_boundary_text(inner[len(outer) :])


def reference_masses(
    backend: AnalyticBackend, scorer: Scorer, candidates: Sequence[str], leading_space: str, canonical: bool
) -> list[float]:
    """Each candidate's disjoint mass: its targets' event probabilities, less the events they contain that
    belong to other targets (only the outermost of those, since contained events nest in chains)."""
    return reference(backend, scorer, candidates, leading_space, canonical)[0]


def reference(
    backend: AnalyticBackend, scorer: Scorer, candidates: Sequence[str], leading_space: str, canonical: bool
) -> tuple[list[float], list[float]]:
    """(disjoint masses, raw masses): each candidate's mass as `reference_masses`, and the probability of its
    targets' events before the contained ones are taken out."""
    targets = target_texts(candidates, leading_space)

    def paths(text: bytes) -> list[Path]:
        if not canonical:
            return list(spellings(backend, text))
        path = canonical_path(backend, text)
        return [] if path is None else [path]

    raw = {text: target_mass(scorer, text, paths, straddle=not canonical) for _, text in targets}
    masses, whole = [0.0] * len(candidates), [0.0] * len(candidates)
    for k, text in targets:
        inside = [u for _, u in targets if contains(backend, text, u, canonical)]
        outermost = [u for u in inside if not any(contains(backend, v, u, canonical) for v in inside)]
        masses[k] += max(0.0, raw[text] - math.fsum(raw[u] for u in outermost))
        whole[k] += raw[text]
    return masses, whole


def close(found: float, expected: float, rel: float = REL) -> bool:
    return math.isclose(found, expected, rel_tol=rel, abs_tol=ABS)


def nested(backend: AnalyticBackend, texts: Sequence[bytes], canonical: bool) -> bool:
    return any(contains(backend, a, b, canonical) for a in texts for b in texts)


def spelling_collision(candidates: Sequence[str], leading_space: str) -> bool:
    texts = [text for _, text in target_texts(candidates, leading_space)]
    return len(set(texts)) < len(texts)


def check_summary(result: ModelDistribution) -> None:
    """What every result promises whatever the masses: probabilities in range, coverage their sum."""
    masses = [o.mass for o in result.outcomes]
    assert all(0.0 <= o.mass <= o.mass_upper <= 1.0 + 1e-12 for o in result.outcomes)
    assert result.coverage == pytest.approx(math.fsum(masses), rel=1e-12, abs=1e-300)
    assert result.coverage <= 1.0 + 1e-12
    if result.coverage > 0:
        assert math.fsum(o.prob for o in result.outcomes) == pytest.approx(1.0, abs=1e-12)
        assert result.top1_share == max(o.prob for o in result.outcomes)


def run_engine(
    backend: AnalyticBackend,
    prompts: list[str],
    candidates: list[str],
    leading_space: str,
    tokenizations: str,
    batch_size: int,
    temperature: float,
) -> Callable[[], list[ModelDistribution]]:
    def call() -> list[ModelDistribution]:
        options = (leading_space, tokenizations, batch_size, None, temperature)
        return outcome_distributions(backend, prompts, candidates, *options)

    return call


def assert_engine_matches_brute_force(
    backend: AnalyticBackend,
    prompts: list[str],
    candidates: list[str],
    leading_space: str,
    tokenizations: str,
    batch_size: int = 128,
    temperature: float = 1.0,
) -> None:
    """The engine's masses for every prompt equal the reference's, or the engine refuses with the one error
    the reference predicts (two variants spelling the same text, a canonical encoding the tokenizer cannot
    produce, no probability at all)."""
    note(describe(backend))
    canonical = tokenizations == "canonical"
    call = run_engine(backend, prompts, candidates, leading_space, tokenizations, batch_size, temperature)
    if spelling_collision(candidates, leading_space):
        event("refused: two variants spell the same text")
        with pytest.raises(ModescopeError, match="both spell"):
            call()
        return
    texts = [text for _, text in target_texts(candidates, leading_space)]
    if canonical and any(canonical_path(backend, t) is None for t in texts):
        event("refused: the tokenizer cannot encode a candidate")
        with pytest.raises(ModescopeError, match="cannot encode"):
            call()
        return
    expected = []
    for prompt in prompts:
        scorer = TemperedScorer(backend, backend.prompt_ids(prompt), temperature)
        expected.append(reference_masses(backend, scorer, candidates, leading_space, canonical))
    if any(sum(masses) == 0.0 for masses in expected):
        event("refused: no probability")
        with pytest.raises(ModescopeError, match="no probability"):
            call()
        return
    event(f"compared {tokenizations}" + (" with nested candidates" if nested(backend, texts, canonical) else ""))
    results = call()
    for result, masses in zip(results, expected, strict=True):
        for outcome, mass in zip(result.outcomes, masses, strict=True):
            assert close(outcome.mass, mass), (outcome.text, outcome.mass, mass)
            assert outcome.mass_upper == outcome.mass  # whole distributions, whole characters: exact
        check_summary(result)


leading_spaces = st.sampled_from(["optional", "required", "none"])
tokenization_modes = st.sampled_from(["all", "canonical"])
batch_sizes = st.sampled_from([1, 2, 3, 128])
# ordinary temperatures, and the extremes a user may type (1e-310: a point mass on the likeliest path)
temperatures = st.one_of(st.just(1.0), st.floats(0.25, 4.0), st.floats(0.0, 1e-300, exclude_min=True), st.just(1e300))


@given(data=st.data(), backend=toy_backends(), leading_space=leading_spaces, tokenizations=tokenization_modes)
@property_settings(600)
def test_masses_of_random_candidates_equal_brute_force(
    data: st.DataObject, backend: AnalyticBackend, leading_space: str, tokenizations: str
) -> None:
    candidates = data.draw(st.lists(candidate_texts(backend), min_size=1, max_size=4, unique=True))
    if data.draw(st.booleans()):  # a candidate that extends another past a boundary: "a" and "a b"
        longer = candidates[0] + data.draw(st.sampled_from(" .,\n")) + data.draw(candidate_texts(backend))
        candidates += [longer] if longer not in candidates else []
    prompts = data.draw(st.lists(prompt_texts(backend), min_size=1, max_size=3))
    batch_size, temperature = data.draw(batch_sizes), data.draw(temperatures)
    assert_engine_matches_brute_force(
        backend, prompts, candidates, leading_space, tokenizations, batch_size, temperature
    )


@given(
    data=st.data(),
    backend=toy_backends(DIGITS + " ,-.", max_long=10, required=DIGITS + "- "),
    leading_space=leading_spaces,
    tokenizations=tokenization_modes,
)
@property_settings(300)
def test_masses_of_integer_ranges_equal_brute_force(
    data: st.DataObject, backend: AnalyticBackend, leading_space: str, tokenizations: str
) -> None:
    low = data.draw(st.integers(-12, 120))
    candidates = integers(low, low + data.draw(st.integers(0, 12)))
    prompt = data.draw(prompt_texts(backend))
    assert_engine_matches_brute_force(backend, [prompt], candidates, leading_space, tokenizations)


class ShownTopK(AnalyticBackend):
    """A toy model behind a server that shows only its k best tokens (inside `partial_distributions`)."""

    def __init__(self, base: AnalyticBackend, k: int, scores: bool) -> None:
        self.__dict__.update(base.__dict__)
        self.capabilities = Capabilities("top-k", k, scores, False, SERVER)
        self.base = base

    def next_logprobs(self, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        full = self.base.next_logprobs(prefixes)
        if not self.partial_ok:
            return full
        best = full.topk(min(self.capabilities.top_k or 1, full.shape[-1]), dim=-1)
        return torch.full_like(full, -math.inf).scatter(-1, best.indices, best.values)


@given(data=st.data(), backend=toy_backends(), leading_space=leading_spaces, server=st.sampled_from(["full", "top-k"]))
@property_settings(200)
def test_server_bounds_hold_the_brute_force_masses(
    data: st.DataObject, backend: AnalyticBackend, leading_space: str, server: str
) -> None:
    """A full server (scored paths, whole distributions where a candidate needs them) is exact to 1e-6 of
    each candidate's mass; a top-k server's intervals hold the exact masses."""
    note(describe(backend))
    candidates = data.draw(st.lists(candidate_texts(backend), min_size=1, max_size=4, unique=True))
    assume(not spelling_collision(candidates, leading_space))
    prompt = data.draw(prompt_texts(backend))
    scorer = Scorer(backend, backend.prompt_ids(prompt))
    expected, raw = reference(backend, scorer, candidates, leading_space, canonical=False)
    assume(sum(expected) > 0)
    if server == "full":
        served: AnalyticBackend = ShownTopK(backend, backend.vocab.size, True)
        served.capabilities = Capabilities("full", None, True, False, SERVER)
    else:
        served = ShownTopK(backend, data.draw(st.integers(1, backend.vocab.size)), data.draw(st.booleans()))
    try:
        (result,) = outcome_distributions(served, [prompt], candidates, leading_space)
    except ModescopeError as error:  # a top-k server may show none of the set: every upper bound is 0
        assert server == "top-k" and "no probability" in str(error)
        return
    for outcome, mass in zip(result.outcomes, expected, strict=True):
        assert outcome.mass <= mass * (1 + REL) + ABS, (outcome.text, outcome.mass, mass)
        assert mass <= outcome.mass_upper * (1 + REL) + ABS, (outcome.text, outcome.mass_upper, mass)
    if server == "full":  # each target within 1e-6 of its mass; a container also inherits its contents' slack
        assert result.bounds is None
        for outcome, mass, whole in zip(result.outcomes, expected, raw, strict=True):
            assert abs(outcome.mass - mass) <= 2e-6 * whole + ABS, (outcome.text, outcome.mass, mass)
            assert outcome.mass_upper - outcome.mass <= 2e-6 * whole + ABS, (outcome.text, outcome.mass_upper)
