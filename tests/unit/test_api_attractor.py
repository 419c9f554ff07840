"""`ms.attractor` and `ms.forks`: the notebook surface over the attractor and forking-tokens experiments."""

from __future__ import annotations

import html
from typing import Any

import pytest
from matplotlib.figure import Figure

from modescope.errors import ModescopeError
from modescope.jsonsafe import finite_json
from modescope.models.analytic import TOY_TOKENS, AnalyticBackend
from modescope.models.base import Capabilities
from modescope.probes.attractors import (
    RUN_COLUMNS,
    AttractorPlan,
    AttractorResults,
    Edit,
    attractor,
    attractor_experiment,
)
from modescope.probes.forks import FORK_COLUMNS, ForksResult, forking_tokens, forks
from tests.inline import inline_page, strict_json
from tests.unit.test_attractors import chain_model
from tests.unit.test_forks import WORDS, DecidedAtSecondToken

HOSTILE = "<script>alert(1)</script>"
MISSING = "no/such-model"  # loading it would fail: a check that names the setting ran before any load


def _toy(name: str) -> AnalyticBackend:
    """A toy model over every printable ASCII character (so any ASCII prompt or edit encodes)."""
    return AnalyticBackend(TOY_TOKENS, name=name, seed=len(name), sharpness=2.5)


# --- attractor ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chains() -> AttractorResults:
    return attractor([chain_model(attractor=True), chain_model(attractor=False)], "Q", max_tokens=20)


def test_attractor_is_the_cli_experiment_with_the_cli_defaults(chains: AttractorResults) -> None:
    models = [chain_model(attractor=True), chain_model(attractor=False)]
    expected = attractor_experiment(models, "Q", AttractorPlan(swap_positions=5, alternatives=3), max_tokens=20)
    # compared as JSON: a median over no rejoining run is NaN, which equals nothing in a dict comparison
    assert chains.to_json() == finite_json({"prompt": "Q", "models": [r.to_dict() for r in expected]})
    assert [r.model for r in chains] == ["with", "without"] and len(chains) == 2
    assert chains["with"].basin_share > 0 and chains[1].basin_share == 0.0
    with pytest.raises(KeyError, match="with, without"):
        chains["other"]


def test_attractor_passes_edits_detours_and_positions_through() -> None:
    models = [chain_model(attractor=True), chain_model(attractor=False)]
    result = attractor(
        models, "Q", edits="6:9: x2", positions=[3, 8], alternatives=2, detours=4, detour_tokens=2, seed=7
    )
    plan = AttractorPlan(
        edits=[Edit(6, 9, " x2")],
        positions=[3, 8],
        alternatives=2,
        detour_positions=[4],
        detour_tokens=2,
        seed=7,
    )
    expected = attractor_experiment(models, "Q", plan, max_tokens=48)
    assert result.to_json() == finite_json({"prompt": "Q", "models": [r.to_dict() for r in expected]})
    kinds = [run["kind"] for run in result.to_dict()["models"][0]["runs"]]
    assert kinds == ["edit", "swap", "swap", "detour"]


def test_attractor_table_has_one_row_per_model_and_perturbation(chains: AttractorResults) -> None:
    frame = chains.to_pandas()
    assert list(frame.columns) == RUN_COLUMNS
    assert len(frame) == sum(len(r.runs) for r in chains) == 2 * 10  # 5 positions x k = 2, 3
    with_, without = frame[frame.model == "with"], frame[frame.model == "without"]
    swapped_to_x = with_[with_.label.str.contains("k=2")]
    assert swapped_to_x.reconverged.all() and (swapped_to_x.reconvergence_tokens == 1).all()
    assert not without.reconverged.any() and without.reconvergence_tokens.isna().all()
    assert list(with_.position) == [r.perturbation.position for r in chains["with"].runs]


def test_attractor_json_is_strict(chains: AttractorResults) -> None:
    data = strict_json(chains.to_json())
    assert data["prompt"] == "Q"
    assert data["models"][1]["median_distance_tokens"] is None  # NaN: no run of "without" rejoins


def test_attractor_page_inline_is_the_cli_page_and_escapes_model_text() -> None:
    from modescope.viz.attractor_html import attractor_page

    result = attractor(_toy("<b>toy</b>"), HOSTILE, edits=[f"0:0:{HOSTILE}"], swap_positions=1, max_tokens=6)
    assert result.to_html() == attractor_page(result.results, HOSTILE)
    page = inline_page(result._repr_html_())
    assert page == result.to_html()
    assert "<script" not in page.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;toy&lt;/b&gt;" in page
    assert html.escape(result.results[0].mainline.tokens[0].text) in page


def test_attractor_plot_is_a_figure(chains: AttractorResults, tmp_path: Any) -> None:
    from modescope.viz.attractor_plot import plot_attractors

    figure = chains.plot()
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["with", "without"]
    path = plot_attractors(chains.results, tmp_path / "a" / "plot.png")
    assert path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ending": "vibes"}, "ending criterion"),
        ({"max_tokens": 1}, "max tokens"),
        ({"alternatives": 1}, "alternatives"),
        ({"swap_positions": -1}, "swap positions"),
        ({"detour_tokens": 0}, "detour tokens"),
        ({"positions": [-1]}, "negative"),
        ({"detours": ["3"]}, "whole numbers"),
        ({"edits": ["5-9:x"]}, "I:J:TEXT"),
        ({"edits": [Edit(4, 2, "x")]}, "0 <= I <= J"),
    ],
)
def test_attractor_bad_settings_are_refused_before_any_model_loads(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ModescopeError, match=message):
        attractor(MISSING, "Q", **kwargs)


def test_attractor_refuses_a_prompt_list_and_model_limits_before_any_model_runs() -> None:
    with pytest.raises(ModescopeError, match="over_prompts"):
        attractor(MISSING, ["a", "b"])  # type: ignore[arg-type]
    first, second = chain_model(attractor=True), chain_model(attractor=False)
    with pytest.raises(ModescopeError, match="vocabulary size"):
        attractor([first, second], "Q", alternatives=second.vocab.size + 1)
    second.capabilities = Capabilities(tier="sample-only")
    with pytest.raises(ModescopeError, match="tier"):
        attractor([first, second], "Q")
    assert first.stats.calls == 0 and second.stats.calls == 0
    with pytest.raises(ModescopeError, match="beyond the mainline"):
        attractor(first, "Q", positions=[40], max_tokens=20)


# --- forks -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def decided() -> ForksResult:
    models = [DecidedAtSecondToken(), AnalyticBackend(WORDS, name="soft", sharpness=1.0)]
    return forks(models, "Once", max_tokens=8, samples=4, outcome_regex=r"the (\w+)", seed=3)


def test_forks_is_forking_tokens_per_model(decided: ForksResult) -> None:
    expected = {}
    for backend in [DecidedAtSecondToken(), AnalyticBackend(WORDS, name="soft", sharpness=1.0)]:
        expected[backend.name] = forking_tokens(
            backend, backend.prompt_ids("Once"), max_tokens=8, samples=4, outcome_regex=r"the (\w+)", seed=3
        ).to_dict()
    assert decided.to_dict() == {"prompt": "Once", "models": expected}
    assert list(decided) == ["analytic", "soft"] and len(decided) == 2
    assert decided["analytic"].forks(1)[0].position in (1, 2)
    with pytest.raises(KeyError, match="analytic, soft"):
        decided["other"]


def test_forks_defaults_are_the_cli_defaults() -> None:
    backend = AnalyticBackend(WORDS, sharpness=1.0)
    expected = forking_tokens(backend, backend.prompt_ids("Once"), max_tokens=32, samples=8, threshold=0.05)
    assert forks(backend, "Once").to_dict()["models"] == {"analytic": expected.to_dict()}


def test_forks_table_has_one_row_per_model_position_and_alternative(decided: ForksResult) -> None:
    frame = decided.to_pandas()
    assert list(frame.columns) == FORK_COLUMNS
    assert len(frame) == sum(len(p.alternatives) for r in decided.results.values() for p in r.positions)
    fork = frame[(frame.model == "analytic") & (frame.position == 1)]
    assert list(fork.alternative) == [" cat", " dog"] and list(fork.is_mainline) == [True, False]
    assert list(fork.weight) == pytest.approx([0.6, 0.4])
    assert list(fork.top_outcome) == ["cat", "dog"] and list(fork.top_outcome_probability) == [1.0, 1.0]
    scores = [p.change_score for p in decided["analytic"].positions]
    assert list(frame[frame.model == "analytic"].groupby("position").change_score.first()) == scores


def test_forks_json_is_strict(decided: ForksResult) -> None:
    data = strict_json(decided.to_json())
    assert data["prompt"] == "Once" and set(data["models"]) == {"analytic", "soft"}
    assert data["models"]["analytic"]["positions"][1]["outcomes"] == pytest.approx({"cat": 0.6, "dog": 0.4})


def test_forks_page_inline_is_the_cli_page_and_escapes_model_text() -> None:
    from modescope.viz.forks_html import forks_page

    result = forks(_toy("<b>toy</b>"), HOSTILE, max_tokens=4, samples=2)
    assert result.to_html() == forks_page(result.results, HOSTILE)
    page = inline_page(result._repr_html_())
    assert page == result.to_html()
    assert "<script" not in page.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;toy&lt;/b&gt;" in page
    assert page.count('class="fork"') == len(result["<b>toy</b>"].positions)


def test_forks_plot_has_one_line_per_model(decided: ForksResult) -> None:
    figure = decided.plot()
    assert isinstance(figure, Figure) and len(figure.axes) == 1
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["analytic", "soft"]
    assert list(lines[0].get_ydata()) == [p.change_score for p in decided["analytic"].positions]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": 0}, "samples"),
        ({"threshold": 0.0}, "threshold"),
        ({"max_alternatives": 0}, "alternatives"),
        ({"max_tokens": 0}, "max tokens"),
        ({"outcome_regex": "(unclosed"}, "regex"),
    ],
)
def test_forks_bad_settings_are_refused_before_any_model_loads(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ModescopeError, match=message):
        forks(MISSING, "Once", **kwargs)


def test_forks_refuses_a_prompt_list_and_a_sample_only_model_before_any_model_runs() -> None:
    with pytest.raises(ModescopeError, match="over_prompts"):
        forks(MISSING, ["a", "b"])  # type: ignore[arg-type]
    first, second = DecidedAtSecondToken(), AnalyticBackend(WORDS, name="soft")
    second.capabilities = Capabilities(tier="sample-only")
    with pytest.raises(ModescopeError, match="tier"):
        forks([first, second], "Once")
    assert first.stats.calls == 0
