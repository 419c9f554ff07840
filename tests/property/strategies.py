"""Shared hypothesis strategies: random analytic vocabularies and toy models, and the settings of every test."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from modescope.models.analytic import AnalyticBackend, TransitionBackend

PROFILE = os.environ.get("MODESCOPE_PROPERTY_PROFILE", "modescope-property")
SCALE = 10 if PROFILE.endswith("-deep") else 1

# Word characters (a, b, 1, the two-byte é) and boundaries (space, newline, punctuation): candidates built from
# them nest ("a" in "a b"), straddle ("a," ends "a" and starts a boundary) and have several spellings.
ALPHABET = "ab1é .,\n"
DIGITS = "0123456789"


def property_settings(max_examples: int) -> settings:
    """The registered profile (tests/property/conftest.py) with this test's example budget."""
    return settings(settings.get_profile(PROFILE), max_examples=max_examples * SCALE)


def token_lists(alphabet: str = ALPHABET, max_long: int = 8, required: str = "") -> st.SearchStrategy[list[str]]:
    """Some single characters (always those in `required`) and some multi-character tokens over `alphabet`,
    prefixes of one another likely ("a", "ab", "ab,"); a token may appear twice (two ids, the same bytes)."""
    singles = st.lists(st.sampled_from(alphabet), min_size=2, max_size=len(alphabet), unique=True).map(
        lambda chosen: list(dict.fromkeys([*required, *chosen]))
    )
    longer = st.lists(st.text(alphabet=alphabet, min_size=2, max_size=4), max_size=max_long)
    repeated = st.lists(st.sampled_from(alphabet), max_size=1)
    return st.tuples(singles, longer, repeated).map(lambda parts: [*parts[0], *parts[1], *parts[2]])


@st.composite
def transition_tables(draw: st.DrawFn, tokens: Sequence[str]) -> dict[str, dict[str, float]]:
    """A random Markov table for TransitionBackend: some rows, each giving some next tokens probabilities
    (what a row leaves unassigned is spread over the rest)."""
    pieces = ["<eos>", *dict.fromkeys(tokens)]
    table: dict[str, dict[str, float]] = {}
    for source in draw(st.lists(st.sampled_from(pieces), max_size=len(pieces), unique=True)):
        targets = draw(st.lists(st.sampled_from(pieces), min_size=1, max_size=4, unique=True))
        weights = draw(st.lists(st.floats(0.01, 1.0), min_size=len(targets), max_size=len(targets)))
        share = draw(st.floats(0.3, 0.99))
        total = sum(weights)
        table[source] = {t: share * w / total for t, w in zip(targets, weights, strict=True)}
    return table


@st.composite
def toy_backends(
    draw: st.DrawFn, alphabet: str = ALPHABET, name: str = "toy", max_long: int = 8, required: str = ""
) -> AnalyticBackend:
    """An AnalyticBackend (random seed and sharpness) or a TransitionBackend (random table) over a random
    vocabulary (see `token_lists`)."""
    tokens = draw(token_lists(alphabet, max_long, required))
    if draw(st.booleans()):
        seed = draw(st.integers(0, 2**32 - 1))
        sharpness = draw(st.floats(0.1, 6.0))
        return AnalyticBackend(tokens, name=name, seed=seed, sharpness=sharpness)
    return TransitionBackend(tokens, draw(transition_tables(tokens)), name=name)


def prompt_texts(backend: AnalyticBackend) -> st.SearchStrategy[str]:
    """Prompts the toy model can encode: one to three of its own tokens (that its greedy longest match reads
    back; "a" + "bc" is not encodable when the vocabulary has "ab" but no "c")."""
    return (
        st.lists(st.sampled_from(backend.pieces[1:]), min_size=1, max_size=3)
        .map("".join)
        .filter(lambda text: encodable(backend, text))
    )


def encodable(backend: AnalyticBackend, text: str) -> bool:
    try:
        backend.encode(text)
    except ValueError:
        return False
    return True


def candidate_texts(backend: AnalyticBackend, alphabet: str = ALPHABET) -> st.SearchStrategy[str]:
    """Candidates: mostly one or two of the model's tokens run together (so they are spellable), sometimes
    any short text over the alphabet (which the vocabulary may not spell)."""
    tokens = backend.pieces[1:]
    joined = st.lists(st.sampled_from(tokens), min_size=1, max_size=2).map("".join)
    return st.one_of(joined, joined, st.text(alphabet, min_size=1, max_size=3))


def describe(backend: AnalyticBackend) -> dict[str, Any]:
    """What a failing example needs to rebuild the backend (hypothesis prints it with `note`)."""
    found: dict[str, Any] = {"class": type(backend).__name__, "tokens": backend.pieces[1:]}
    if isinstance(backend, TransitionBackend):
        found["rows"] = {backend.pieces[k]: np.exp(row).round(6).tolist() for k, row in backend.rows.items()}
    else:
        found |= {"seed": backend.seed, "sharpness": backend.sharpness}
    return found
