"""The block multiverse on the default models: the essay's prompt at depth 4, cutoff 0.01, every output
rendered, and the interactive page driven in headless Chromium."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from playwright.sync_api import Page

from modescope.models.base import Backend
from modescope.probes.multiverse import Multiverse, multiverse
from modescope.viz.multiverse_html import write_multiverse_html
from modescope.viz.multiverse_plot import plot_multiverse
from tests.browser.harness import PageLog

pytestmark = [pytest.mark.integration]

PROMPT = "Q: Are bugs real?\nA:"


@pytest.fixture(scope="module")
def bugs(gemma: Backend, smollm: Backend) -> Multiverse:
    return multiverse([gemma, smollm], PROMPT, depth=4, cutoff=0.01)


def test_union_tree_is_exact_against_full_sequence_scoring(bugs: Multiverse, gemma: Backend, smollm: Backend) -> None:
    """Each model's most likely spelling of every node, scored from scratch in one padded forward pass per
    model, gives the log-probability the cached, batched expansion recorded (to float32 precision)."""
    assert not bugs.truncated and bugs.size > 20
    for m, backend in enumerate([gemma, smollm]):
        prompt = backend.prompt_ids(PROMPT)
        spellings = [v.spellings[0] for n in bugs.nodes() if (v := n.values[m]) is not None and v.spellings]
        assert len(spellings) > 20
        steps, _ = backend.score_padded([[*prompt, *s.path] for s in spellings])  # type: ignore[attr-defined]
        for row, spelling in enumerate(spellings):
            scored = math.fsum(steps[row, len(prompt) - 1 : len(prompt) - 1 + len(spelling.path)].tolist())
            assert scored == pytest.approx(spelling.logprob, abs=2e-4)
    for node in [bugs.root, *bugs.nodes()]:
        for m in range(2):
            joint = node.joint(m)
            if joint is not None:
                assert math.fsum(c.joint(m) or 0.0 for c in node.children) <= joint + 1e-9


def test_figures_and_page_render_for_both_models(
    bugs: Multiverse, tmp_path: Path, page: Page, page_log: PageLog
) -> None:
    svg, png, html = tmp_path / "bugs.svg", tmp_path / "bugs.png", tmp_path / "bugs.html"
    plot_multiverse(bugs, [svg, png])
    assert png.stat().st_size > 20_000 and "<svg" in svg.read_text()
    write_multiverse_html(bugs.to_dict(), html)
    page.goto(html.as_uri())
    page.wait_for_function("() => window.multiverseReady === true")
    first = bugs.root.children[0]
    page.click('#drawing .block[data-path="0"]')
    header = page.locator("#view-root")
    assert header.get_attribute("data-path") == "0"
    assert float(str(header.get_attribute("data-joint"))) == pytest.approx(first.joint(0), rel=1e-6)
    full = page.eval_on_selector("#drawing", "e => e.getBoundingClientRect().height")
    clicked = page.eval_on_selector('#drawing .block[data-path="0"]', "e => e.getBoundingClientRect().height")
    assert clicked == pytest.approx(full, abs=2)
    page.click('[data-view="difference"]')
    assert page.locator("#drawing .block").count() > 10
    page_log.assert_clean()
