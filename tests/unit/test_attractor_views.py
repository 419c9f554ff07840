"""The attractor page and plot, on the toy models with and without a built-in attractor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modescope.probes.attractors import (
    AttractorPlan,
    AttractorResult,
    AttractorResults,
    attractor_experiment,
    run_attractor,
)
from modescope.viz.attractor_html import attractor_page
from modescope.viz.attractor_plot import plot_attractors
from tests.unit.test_attractors import chain_model


@pytest.fixture(scope="module")
def results() -> list[AttractorResult]:
    models = [chain_model(attractor=True), chain_model(attractor=False)]
    return attractor_experiment(models, "Q", AttractorPlan(swap_positions=4), max_tokens=20)


def _sections(page: str) -> list[str]:
    return page.split('<section class="model">')[1:]


def test_one_row_per_run_plus_the_mainline(results: list[AttractorResult]) -> None:
    page = attractor_page(results, "Q")
    with_, without = _sections(page)
    for section, result in zip((with_, without), results, strict=True):
        assert section.count('class="row mainline"') == 1
        assert section.count('class="row run"') == len(result.runs) == 4
        assert section.count('class="inserted"') == len(result.runs)
        for run in result.runs:
            assert run.perturbation.label.replace("'", "&#x27;") in section
    assert "100%" in with_ and "0%" in without


def test_rejoined_part_marked_only_where_the_model_comes_back(results: list[AttractorResult]) -> None:
    with_, without = _sections(attractor_page(results, "Q"))
    assert with_.count('class="rejoined"') == 4 and with_.count("↩ rejoined") == 4
    assert "rejoined after 1 tokens" in with_
    assert 'class="rejoined"' not in without and "↩ rejoined" not in without
    assert without.count("never rejoined") == 4
    # the inserted span sits right after the mainline prefix and before the detour token
    first = with_.split('class="row run"')[1]
    assert re.search(r'class="inserted"[^>]*> x\d+</span><span class="tok"', first)


def test_model_text_is_escaped(tmp_path: Path) -> None:
    result = run_attractor(chain_model(attractor=True), "Q", AttractorPlan(swap_positions=2), max_tokens=20)
    result.model = "<script>model"
    result.runs[0].continuation.tokens[0].text = " <script>alert(1)</script>"
    result.runs[1].inserted_text = "<script>"
    result.mainline.tokens[0].text = "<b>&"
    path = AttractorResults("<script>prompt</script>", [result]).save_html(tmp_path / "a" / "page.html")
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert "&lt;b&gt;&amp;" in page


def test_plot_is_a_png(results: list[AttractorResult], tmp_path: Path) -> None:
    path = plot_attractors(results, tmp_path / "plots" / "attractors.png")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
