from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import numpy as np
import pytest

from modescope.engine.decode import generate
from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend
from modescope.probes.forks import forking_tokens, outcome_of, total_variation

WORDS = ["Once", " the", " cat", " dog", " won", " lost", ".", " 7", " 9"]


class DecidedAtSecondToken(AnalyticBackend):
    """Prompt "Once"; then " the"; then " cat" (0.6) or " dog" (0.4); the cat won, the dog lost; "."; EOS.

    Everything but the cat/dog choice is (to e^-50) deterministic."""

    def __init__(self) -> None:
        super().__init__(WORDS)

    def logits(self, prefix: Sequence[int]) -> np.ndarray:
        out = np.full(self.vocab.size, -50.0)
        last = self.pieces[prefix[-1]]
        if last == " the":
            out[self.pieces.index(" cat")] = math.log(0.6)
            out[self.pieces.index(" dog")] = math.log(0.4)
        else:
            following = {"Once": " the", " cat": " won", " dog": " lost", " won": ".", " lost": "."}
            out[self.pieces.index(following[last]) if last in following else 0] = 0.0
        return out


def test_one_position_per_mainline_token_and_distributions_sum_to_one() -> None:
    backend = AnalyticBackend(WORDS, sharpness=1.0)
    result = forking_tokens(backend, backend.encode("Once"), max_tokens=6, samples=3, threshold=0.1)
    mainline = generate(backend, backend.encode("Once"), max_tokens=6)[0]
    assert len(result.positions) == len(mainline.tokens)
    assert result.mainline == mainline.text
    for t, position in enumerate(result.positions):
        assert position.position == t
        assert position.alternatives[0].id == mainline.tokens[t].id
        assert 1 <= len(position.alternatives) <= 4
        assert math.isclose(sum(position.outcomes.values()), 1.0, abs_tol=1e-9)
        assert 0.0 <= position.change_score <= 1.0
    assert result.positions[0].change_score == 0.0
    json.dumps(result.to_dict())


def test_regex_outcomes_are_the_captured_groups() -> None:
    backend = DecidedAtSecondToken()
    result = forking_tokens(backend, backend.encode("Once"), max_tokens=8, samples=4, outcome_regex=r"the (\w+)")
    assert result.positions[1].outcomes == pytest.approx({"cat": 0.6, "dog": 0.4})
    assert set(result.positions[0].outcomes) <= {"cat", "dog"}
    for position in result.positions[2:]:
        assert position.outcomes == pytest.approx({"cat": 1.0})


def test_same_seed_same_result() -> None:
    backend = AnalyticBackend(WORDS, sharpness=1.0)
    runs = [forking_tokens(backend, backend.encode("Once"), max_tokens=5, samples=3, seed=s) for s in (1, 1, 2)]
    assert runs[0].to_dict() == runs[1].to_dict()


def test_fork_found_where_the_outcome_is_decided() -> None:
    backend = DecidedAtSecondToken()
    result = forking_tokens(backend, backend.encode("Once"), max_tokens=8, samples=32)
    assert result.mainline == " the cat won."
    assert [p.token for p in result.positions] == [" the", " cat", " won", ".", "<eos>"]
    # at t=1 the cat/dog choice is averaged over exactly; from t=2 on, the cat is in the prefix
    assert result.positions[1].outcomes == pytest.approx({"the cat won": 0.6, "the dog lost": 0.4})
    assert result.positions[2].outcomes == pytest.approx({"the cat won": 1.0})
    top = result.forks(top=1)[0]
    assert top.position == 2  # the jump follows the deciding token " cat" (position 1)
    assert top.change_score == pytest.approx(0.4)
    assert [p.change_score for p in result.positions[3:]] == pytest.approx([0.0, 0.0])
    assert len(result.forks()) == 5


def test_outcome_of_last_sentence_and_regex() -> None:
    assert outcome_of("First. Then the answer is 7!  ") == "Then the answer is 7"
    assert outcome_of("v1.2 is out") == "v1.2 is out"
    assert outcome_of("x = 12", re.compile(r"(\d+)")) == "12"
    assert outcome_of("x = 12", re.compile(r"\d+")) == "12"
    assert outcome_of("none", re.compile(r"\d+")) == "(no match)"
    assert total_variation({"a": 1.0}, {"b": 1.0}) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outcome_regex": "(unclosed"}, "regex"),
        ({"samples": 0}, "samples"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"max_alternatives": 0}, "alternatives"),
    ],
)
def test_bad_inputs_raise(kwargs: dict[str, object], message: str) -> None:
    backend = AnalyticBackend(WORDS)
    with pytest.raises(ModescopeError, match=message):
        forking_tokens(backend, backend.encode("Once"), max_tokens=3, **kwargs)  # type: ignore[arg-type]
