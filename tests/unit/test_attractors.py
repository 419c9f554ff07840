"""Attractor experiments on toy models whose attractor (or its absence) is known by construction."""

from __future__ import annotations

import pytest

from modescope.errors import ModescopeError
from modescope.models.analytic import TransitionBackend
from modescope.probes.attractors import AttractorPlan, Edit, attractor_experiment, edit_similarity, run_attractor

CHAIN = [f" w{i}" + ("." if i == 12 else "") for i in range(16)]  # one sentence ends at w12


def chain_model(attractor: bool) -> TransitionBackend:
    """Greedy text is ' w1 w2 ... w15' then EOS. Each w_i's runner-up is x_i. With an attractor, x_i leads
    through one extra token y_i back to w_(i+2); without one, x_i starts a chain of z tokens that never
    meets the mainline again."""
    detours = [f" x{i}" for i in range(16)] + [f" y{i}" for i in range(16)] + [f" z{i}" for i in range(20)]
    table: dict[str, dict[str, float]] = {"Q": {" w0": 0.9}}
    for i in range(16):
        following = CHAIN[i + 1] if i < 15 else "<eos>"
        table[CHAIN[i]] = {following: 0.7, f" x{i}": 0.2}
        if attractor:
            table[f" x{i}"] = {f" y{i}": 0.9}
            table[f" y{i}"] = {CHAIN[i + 2] if i < 14 else "<eos>": 0.9}
        else:
            table[f" x{i}"] = {f" z{i}": 0.9}
    for k in range(19):
        table[f" z{k}"] = {f" z{k + 1}": 0.9}
    table[" z19"] = {"<eos>": 0.9}
    return TransitionBackend(["Q", *CHAIN, *detours], table, name="with" if attractor else "without")


def test_a_built_in_attractor_pulls_every_swap_back() -> None:
    result = run_attractor(chain_model(attractor=True), "Q", AttractorPlan(swap_positions=5), max_tokens=20)
    assert result.mainline.text == "".join(CHAIN)
    assert len(result.runs) == 5
    assert result.basin_share == 1.0
    for run in result.runs:
        # the swapped-in x_i is followed by y_i, then the mainline resumes: one token of detour
        assert run.reconvergence_tokens == 1
        assert run.reconvergence_chars == len(run.continuation.tokens[0].text)
        # the last sentence (" w13 w14 w15") is intact unless the perturbation falls after w12 closed a sentence
        assert run.last_sentence_equal == run.converged == (run.perturbation.position <= 12)
    assert result.median_distance == 1.0


def test_without_an_attractor_nothing_comes_back() -> None:
    result = run_attractor(chain_model(attractor=False), "Q", AttractorPlan(swap_positions=5), max_tokens=20)
    assert result.basin_share == 0.0
    assert all(r.reconvergence_tokens is None for r in result.runs)
    assert result.median_distance != result.median_distance  # NaN


def test_edits_and_models_compared_on_one_plan() -> None:
    models = [chain_model(True), chain_model(False)]
    plan = AttractorPlan(edits=[Edit(6, 9, " x2")], swap_positions=0)  # " w2" becomes " x2"
    with_, without = attractor_experiment(models, "Q", plan, max_tokens=20)
    assert with_.runs[0].perturbation.kind == "edit" and with_.runs[0].reconverged
    assert not without.runs[0].reconverged
    assert with_.to_dict()["basin_share"] == 1.0


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (AttractorPlan(edits=[Edit(5, 500, "x")]), "outside the completion"),
        (AttractorPlan(positions=[99]), "beyond the mainline"),
        (AttractorPlan(alternatives=10_000), "vocabulary size"),
    ],
)
def test_bad_plans_are_user_errors(plan: AttractorPlan, message: str) -> None:
    with pytest.raises(ModescopeError, match=message):
        run_attractor(chain_model(True), "Q", plan, max_tokens=20)


def test_edit_parsing_and_similarity() -> None:
    assert Edit.parse("3:7:a:b") == Edit(3, 7, "a:b")
    with pytest.raises(ModescopeError, match="I:J:TEXT"):
        Edit.parse("3-7:x")
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("", "") == 1.0


def test_embedding_criterion_uses_the_given_embedder() -> None:
    from tests.unit.test_sampling import fake_embedder

    strict = run_attractor(
        chain_model(True), "Q", AttractorPlan(swap_positions=3), 20, "embedding", 0.999999, fake_embedder
    )
    assert all(r.embedding_cosine is not None for r in strict.runs)
    assert [r.converged for r in strict.runs] == [r.embedding_cosine >= 0.999999 for r in strict.runs]  # type: ignore[operator]
