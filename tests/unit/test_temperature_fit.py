"""The "is it just temperature?" fits recover a temperature that really is the whole difference."""

from __future__ import annotations

import pytest

from modescope.models.analytic import AnalyticBackend
from modescope.probes.distribution import AnswerTree, distribution
from modescope.probes.temperature import AnswerSnapshot, outcome_level_fits, token_level_fits

TOKENS = ["1", "2", "0", "10", "12", " ", " 1", ",", ".", "a", "b", "Q"]


def pair(tau: float) -> tuple[AnalyticBackend, AnalyticBackend]:
    """A base model and a 'tuned' one that is exactly the base at temperature tau (logits scaled by 1/tau)."""
    base = AnalyticBackend(TOKENS, name="base", seed=5, sharpness=1.5)
    tuned = AnalyticBackend(TOKENS, name="tuned", seed=5, sharpness=1.5 / tau)
    return base, tuned


def test_snapshot_masses_equal_a_tempered_run() -> None:
    base, _ = pair(0.5)
    candidates = ["1", "2", "10", "12"]
    snapshot = AnswerSnapshot(base, "Q", AnswerTree(base, candidates, "optional", "all"))
    for tau in (0.6, 1.0, 1.8):
        expected = [o.mass for o in distribution(base, "Q", candidates, temperature=tau).results[0].outcomes]
        assert snapshot.masses(tau).tolist() == pytest.approx(expected, rel=1e-6)  # kept in float32


@pytest.mark.parametrize("tau", [0.5, 1.6])
def test_outcome_level_fit_recovers_the_temperature(tau: float) -> None:
    base, tuned = pair(tau)
    forward, reverse = outcome_level_fits(base, tuned, "Q", ["1", "2", "10", "12", "0"])
    assert forward.source == "base" and forward.target == "tuned"
    assert forward.tau == pytest.approx(tau, rel=1e-3)
    assert forward.divergence_at_tau < 1e-8 < forward.divergence_at_one
    assert forward.explained == pytest.approx(1.0, abs=1e-6)
    assert reverse.tau == pytest.approx(1 / tau, rel=1e-3)


def test_token_level_fit_recovers_the_temperature() -> None:
    base, tuned = pair(0.6)
    forward, reverse = token_level_fits(base, tuned, "Q", n=3, max_tokens=4, seed=1)
    assert forward.tau == pytest.approx(0.6, rel=1e-3)
    assert forward.divergence_at_tau < 1e-6 < forward.divergence_at_one  # distributions kept in float32
    assert reverse.tau == pytest.approx(1 / 0.6, rel=1e-3)
    assert len(forward.curve) > 10


def test_token_level_fit_needs_one_tokenizer() -> None:
    from modescope.errors import ModescopeError

    base = AnalyticBackend(TOKENS, name="base")
    other = AnalyticBackend([*TOKENS, "z"], name="other")
    with pytest.raises(ModescopeError, match="same tokenizer"):
        token_level_fits(base, other, "Q")
