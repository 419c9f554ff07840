"""`ms.sample`, `ms.temperature_sweep` and `ms.temperature_fit`: the notebook surface over sampling and the
"is it just temperature?" test, on analytic models."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure

from modescope.engine.samplers import SamplerSettings
from modescope.errors import ModescopeError
from modescope.models.analytic import TOY_TOKENS, AnalyticBackend
from modescope.probes.sampling import COMPLETION_COLUMNS, TOKEN_COLUMNS, SamplingResult, sample, sample_models
from modescope.probes.temperature import (
    TemperatureFits,
    outcome_level_fits,
    report_dict,
    temperature_fit,
    temperature_sweep,
    token_level_fits,
)
from modescope.viz.temperature_plot import temperature_figure
from modescope.viz.tokens_html import sampling_page
from tests.inline import inline_page, strict_json

MISSING = "no/such-model"  # loading it would fail: a check that names the setting ran before any load
HOSTILE = "<script>alert(1)</script> a number?"
SAMPLE_TOKENS = ["a", "b", "c", " ", ".", "\n", "<script>", "&", "x"]
NUMBERS = ["1", "2", "10", "12", "0"]


def fake_embedder(texts: list[str]) -> np.ndarray:
    """Bag-of-characters embeddings, L2-normalized: no embedding model is loaded."""
    vectors = np.array([[text.count(ch) for ch in "abcx .&12"] + [1.0] for text in texts], dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def without_seconds(result: SamplingResult) -> dict[str, Any]:
    """`to_dict` less the wall times, which differ between two runs."""
    data = result.to_dict()
    for model in data["models"]:
        del model["seconds"]
    return data


def pair(tau: float) -> tuple[AnalyticBackend, AnalyticBackend]:
    """A base model and a 'tuned' one that is exactly the base at temperature tau; any ASCII prompt encodes."""
    base = AnalyticBackend(TOY_TOKENS, name="base", seed=5, sharpness=1.5)
    tuned = AnalyticBackend(TOY_TOKENS, name="tuned", seed=5, sharpness=1.5 / tau)
    return base, tuned


# --- sample ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toys() -> list[AnalyticBackend]:
    return [
        AnalyticBackend(SAMPLE_TOKENS, name="toy", seed=4, sharpness=1.0),
        AnalyticBackend(SAMPLE_TOKENS, name="other", seed=9, sharpness=4.0),
    ]


@pytest.fixture(scope="module")
def samples(toys: list[AnalyticBackend]) -> SamplingResult:
    return sample(toys, "<script>a.b", n=6, max_tokens=8, seed=2, embedder=fake_embedder)


def test_sample_is_sample_models_with_the_same_settings(toys: list[AnalyticBackend], samples: SamplingResult) -> None:
    plain = SamplerSettings.make(temperature=1.0)
    expected = sample_models(toys, "<script>a.b", 6, 8, plain, seed=2, embedder=fake_embedder)
    assert without_seconds(samples) == without_seconds(expected)
    hot = sample(toys, "x", n=4, max_tokens=5, temperature=1.7, seed=3, stop=".", embedder=fake_embedder)
    settings = SamplerSettings.make(temperature=1.7)
    same = sample_models(toys, "x", 4, 5, settings, seed=3, stop=["."], embedder=fake_embedder)
    assert without_seconds(hot) == without_seconds(same)
    chain = SamplerSettings.make(temperature=0.8, top_k=3)
    chained = sample(toys, "x", n=4, max_tokens=5, sampler=chain, seed=3, embedder=fake_embedder)
    assert without_seconds(chained) == without_seconds(sample_models(toys, "x", 4, 5, chain, 3, embedder=fake_embedder))
    assert without_seconds(chained) != without_seconds(same)


def test_sample_loads_models_by_name() -> None:
    result = sample(["toy:api-sample-a", "toy:api-sample-b"], "Q:", n=2, max_tokens=3, embedder=fake_embedder)
    assert [m.model for m in result.models] == ["toy:api-sample-a", "toy:api-sample-b"]
    assert result.sampler == SamplerSettings.make(temperature=1.0) and result.n == 2


def test_sample_tables(samples: SamplingResult) -> None:
    table = samples.to_pandas()
    assert list(table.columns) == COMPLETION_COLUMNS and len(table) == 12
    assert table["model"].tolist() == ["toy"] * 6 + ["other"] * 6
    assert table["sample"].tolist() == list(range(6)) * 2
    for row, completion in zip(table.itertuples(), _all(samples), strict=True):
        assert row.text == completion.text and row.tokens == len(completion.tokens)
        assert row.raw_logprob == completion.raw_logprob
        assert row.mean_raw_logprob * row.tokens == pytest.approx(completion.raw_logprob)
        entropies = [t.entropy_bits for t in completion.tokens]
        assert row.mean_entropy_bits == pytest.approx(sum(entropies) / len(entropies))
    tokens = samples.tokens_frame()
    assert list(tokens.columns) == TOKEN_COLUMNS
    assert len(tokens) == sum(len(c.tokens) for c in _all(samples))
    first = samples.models[0].completions[0].tokens[1]
    row = tokens[(tokens["model"] == "toy") & (tokens["sample"] == 0) & (tokens["position"] == 1)].iloc[0]
    assert (row["token"], row["token_id"], row["logprob"]) == (first.text, first.id, first.logprob)
    assert row["probability"] == pytest.approx(math.exp(first.raw_logprob))
    metrics = samples.metrics_frame()
    assert metrics["model"].tolist() == ["toy", "other"]
    assert metrics["self_bleu"].tolist() == [m.metrics["self_bleu"] for m in samples.models]


def _all(result: SamplingResult) -> list[Any]:
    return [c for m in result.models for c in m.completions]


def test_sample_json_is_strict_and_keeps_the_cli_shape(samples: SamplingResult) -> None:
    assert (
        strict_json(samples.to_json())["models"][0]["completions"][0]["text"] == samples.models[0].completions[0].text
    )
    single = sample(AnalyticBackend(SAMPLE_TOKENS, name="one"), "x", n=1, max_tokens=3, embedder=fake_embedder)
    assert math.isnan(single.models[0].metrics["self_bleu"])  # one text: no pairs
    assert strict_json(single.to_json())["models"][0]["metrics"]["self_bleu"] is None


def test_sample_shows_the_cli_page_escaped_in_a_sandboxed_frame(samples: SamplingResult) -> None:
    assert any("<script>" in c.text for c in _all(samples)), "no completion holds the hostile token: change the seed"
    page = inline_page(samples._repr_html_())
    assert page == samples.to_html() == sampling_page(samples)
    assert "<script" not in page.lower() and "&lt;script&gt;" in page
    assert page.count('class="completion"') == 12


def test_sample_plot_draws_a_line_per_completion(samples: SamplingResult) -> None:
    figure = samples.plot()
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert [len(ax.lines) for ax in figure.axes] == [6, 6]
    first = samples.models[0].completions[0].tokens
    assert figure.axes[0].lines[0].get_ydata().tolist() == pytest.approx([math.exp(t.raw_logprob) for t in first])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.7, "sampler": SamplerSettings.make(top_k=5)}, "temperature inside the sampler"),
        ({"sampler": {"temperature": 0.7}}, "sampler is a SamplerSettings"),
        ({"temperature": -1.0}, "temperature"),
        ({"n": 0}, "n must be between"),
        ({"n": 9, "max_samples": 8}, "n must be between"),
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"stop": [".", ""]}, "non-empty"),
        ({"top_k_alternatives": -1}, "top_k_alternatives"),
        ({"equivalence": "exact"}, "rouge1"),
    ],
)
def test_sample_refuses_bad_settings_before_any_model_loads(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ModescopeError, match=message):
        sample(MISSING, "Q", **kwargs)


def test_sample_refuses_a_model_listed_twice(toys: list[AnalyticBackend]) -> None:
    with pytest.raises(ModescopeError, match="listed twice"):
        sample([toys[0], toys[0]], "x", n=2)


# --- temperature_sweep -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep() -> Any:
    base, tuned = pair(0.6)
    return temperature_sweep([base, tuned], HOSTILE, [0.5, 1.5], n=4, max_tokens=5, seed=1, embedder=fake_embedder)


def test_sweep_points_are_sample_models_at_each_temperature(sweep: Any) -> None:
    models = list(pair(0.6))
    for temperature in (0.5, 1.5):
        settings = SamplerSettings.make(temperature=temperature)
        expected = sample_models(models, HOSTILE, 4, 5, settings, 1, embedder=fake_embedder)
        points = [p for p in sweep.points if p.temperature == temperature]
        assert [(p.model, p.metrics) for p in points] == [(m.model, m.metrics) for m in expected.models]


def test_sweep_keeps_the_positional_call_of_its_callers_and_takes_names() -> None:
    seen: list[str] = []
    args = (["toy:api-sweep-a", "toy:api-sweep-b"], "Q:", [0.7], 2, 3, 0, seen.append)
    result = temperature_sweep(*args, embedder=fake_embedder)  # the CLI's and the suites' positional order
    assert [p.model for p in result.points] == ["toy:api-sweep-a", "toy:api-sweep-b"]
    assert seen == ["toy:api-sweep-a at temperature 0.7", "toy:api-sweep-b at temperature 0.7"]


def test_sweep_table_json_and_dict(sweep: Any) -> None:
    table = sweep.to_pandas()
    assert len(table) == 4 and list(table.columns[:2]) == ["model", "temperature"]
    assert {"mean_entropy_bits", "distinct_2", "self_bleu", "equivalence_classes"} <= set(table.columns)
    assert table["mean_entropy_bits"].tolist() == [p.metrics["mean_entropy_bits"] for p in sweep.points]
    full = report_dict(sweep, [])
    del full["fits"]
    assert sweep.to_dict() == full
    assert strict_json(sweep.to_json())["temperatures"] == [0.5, 1.5]


def test_sweep_page_and_plot(sweep: Any) -> None:
    page = inline_page(sweep._repr_html_())
    assert page == sweep.to_html()
    assert "<script" not in page.lower() and html.escape(HOSTILE) in page
    assert "img-src data:" in page and 'src="data:image/png;base64,' in page
    assert page.count("<tr>") == 1 + 4
    figure = sweep.plot()
    assert isinstance(figure, Figure) and len(figure.axes) == 4
    assert [len(line.get_xdata()) for line in figure.axes[0].lines] == [2, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperatures": []}, "at least one temperature"),
        ({"temperatures": 0.7}, "at least one temperature"),
        ({"temperatures": [0.5, -1.0]}, "0 \\(greedy\\) or positive"),
        ({"temperatures": [math.inf]}, "0 \\(greedy\\) or positive"),
        ({"n": 0}, "n must be between"),
        ({"max_tokens": 0}, "max_tokens at least 1"),
    ],
)
def test_sweep_refuses_bad_settings_before_any_model_loads(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ModescopeError, match=message):
        temperature_sweep(MISSING, "Q", **kwargs)


def test_sweep_refuses_a_prompt_list() -> None:
    with pytest.raises(ModescopeError, match="over_prompts"):
        temperature_sweep(MISSING, ["a", "b"])  # type: ignore[arg-type]


# --- temperature_fit ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fits() -> TemperatureFits:
    base, tuned = pair(0.6)
    return temperature_fit(base, tuned, HOSTILE, candidates=NUMBERS, n=3, max_tokens=4, seed=1)


def test_fit_is_the_token_and_outcome_level_fits(fits: TemperatureFits) -> None:
    base, tuned = pair(0.6)
    expected = token_level_fits(base, tuned, HOSTILE, n=3, max_tokens=4, seed=1)
    expected += outcome_level_fits(base, tuned, HOSTILE, NUMBERS)
    assert fits.to_dict()["fits"] == [f.to_dict() for f in expected]
    forms = [(f.form, f.source) for f in fits.fits]
    assert forms == [("token", "base"), ("token", "tuned"), ("outcome", "base"), ("outcome", "tuned")]
    assert fits.fits[0].tau == pytest.approx(0.6, rel=1e-3) and fits.fits[2].tau == pytest.approx(0.6, rel=1e-3)
    assert fits.notices == [] and (fits.base, fits.tuned, fits.prompt) == ("base", "tuned", HOSTILE)


def test_fit_without_candidates_is_token_level_only_and_says_so() -> None:
    base, tuned = pair(1.6)
    result = temperature_fit(base, tuned, "Q", n=2, max_tokens=3)
    assert [f.form for f in result.fits] == ["token", "token"]
    assert result.fits[0].tau == pytest.approx(1.6, rel=1e-3)
    assert result.notices == ["outcome-level test skipped: no candidate set given"]


def test_fit_across_tokenizers_needs_candidates() -> None:
    base = AnalyticBackend(TOY_TOKENS, name="base", seed=5, sharpness=1.5)
    other = AnalyticBackend([*TOY_TOKENS, " zebra"], name="other", seed=5, sharpness=2.0)
    with pytest.raises(ModescopeError, match="give candidates"):
        temperature_fit(base, other, "Q")
    result = temperature_fit(base, other, "Q", candidates=NUMBERS)
    assert [f.form for f in result.fits] == ["outcome", "outcome"]
    assert result.notices == ["token-level test skipped: 'base' and 'other' have different tokenizers"]


def test_fit_takes_names_and_refuses_one_model_twice() -> None:
    result = temperature_fit("toy:api-fit-a", "toy:api-fit-b", "Q:", n=2, max_tokens=3)
    assert (result.base, result.tuned) == ("toy:api-fit-a", "toy:api-fit-b")
    with pytest.raises(ModescopeError, match="listed twice"):
        temperature_fit("toy:api-fit-a", "toy:api-fit-a", "Q:")


def test_fit_table_json_page_and_plot(fits: TemperatureFits) -> None:
    table = fits.to_pandas()
    columns = ["form", "source", "target", "tau", "divergence_at_tau", "divergence_at_one", "explained"]
    assert list(table.columns) == columns and len(table) == 4
    assert table["explained"].tolist() == [f.explained for f in fits.fits]
    data = strict_json(fits.to_json())
    assert data["fits"][0]["curve"] and data["notices"] == []
    page = inline_page(fits._repr_html_())
    assert page == fits.to_html()
    assert "<script" not in page.lower() and html.escape(HOSTILE) in page
    assert 'src="data:image/png;base64,' in page and page.count("<tr>") == 1 + 4
    figure = fits.plot()
    assert isinstance(figure, Figure) and len(figure.axes) == 4
    taus = [t for t, _ in fits.fits[0].curve]
    assert figure.axes[0].lines[0].get_xdata().tolist() == taus


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tokenizations": "some"}, "tokenizations"),
        ({"candidates": "12"}, "list of answers"),
        ({"candidates": [1, 2]}, "list of answers"),
        ({"candidates": ["1"]}, "at least two candidates"),
        ({"candidates": ["1", " 1"]}, "both spell"),
        ({"candidates": NUMBERS, "leading_space": "maybe"}, "leading-space"),
        ({"n": 0}, "at least 1"),
    ],
)
def test_fit_refuses_bad_settings_before_any_model_loads(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ModescopeError, match=message):
        temperature_fit(MISSING, "toy:api-fit-a", "Q", **kwargs)


def test_the_cli_figure_keeps_both_rows(sweep: Any, fits: TemperatureFits) -> None:
    import matplotlib.pyplot as plt

    both, top = temperature_figure(sweep, fits.fits), temperature_figure(sweep, [])
    assert (len(both.axes), len(top.axes)) == (8, 4)
    plt.close(both)
    plt.close(top)


def test_sample_of_a_prompt_list_is_a_prompt_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.metrics.diversity.default_embedder", lambda: fake_embedder)
    result = sample("toy:api-sample-a", ["Q:", "R:"], n=2, max_tokens=3, temperature=0.7)
    assert type(result).__name__ == "PromptSetResult" and result.kind == "sample"  # type: ignore[attr-defined]
    texts = result.samples()  # type: ignore[attr-defined]
    assert len(texts) == 2 and all(len(models["toy:api-sample-a"]) == 2 for models in texts.values())
