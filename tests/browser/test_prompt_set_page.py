"""The prompt-set page in headless Chromium, on its own and inside the report's sandboxed iframe: the prompts
table sorts and filters, clicking a prompt inflates its units' pages (samples page, a page with a script, a
figure) into nested iframes and images, model text stays text, and nothing logs an error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import FrameLocator, Page, expect

from modescope.store import Artifact, ProbeOutput, StoredUnit, UnitRecord
from modescope.suites.aggregate import aggregate
from modescope.viz.report_html import STYLE, _artifact
from tests.browser.harness import PageLog

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
PROMPTS = ["Q: bugs?\nA:", f"Q: {HOSTILE}\nA:", "Q: a colour?\nA:", "Q: a number?\nA:"]
MODELS = ["toy:base", "toy:tuned"]
# a unit page whose script must run inside the nested sandboxed iframe
SCRIPTED = (
    "<!doctype html><html><body><p id='out'>not run</p><script>out.textContent = 'script ran'</script></body></html>"
)


def sample_units() -> list[StoredUnit]:
    """Real single-model sample units of two toy models, each with an extra scripted page and a figure."""
    from modescope.models import load
    from modescope.suites import kinds, schema

    probe = schema.SampleProbe(name="s", kind="sample", prompts=PROMPTS, n=3, max_tokens=6)
    figure = Artifact("image/png", _figure_png())
    units = []
    for model in MODELS:
        for k, output in enumerate(kinds.run_prompts(load(model), probe, PROMPTS, lambda message: None)):
            output.artifacts |= {"check.html": Artifact("text/html", SCRIPTED.encode()), "figure.png": figure}
            meta = {"category": ["plain", "hostile"][k == 1]}
            record = UnitRecord("s", f"q{k + 1}", model, k, PROMPTS[k], meta, "key")
            units.append(StoredUnit(record, ProbeOutput(output.metrics, output.payload, output.artifacts), 0.0, False))
    return units


def letter_counts(texts: list[str]) -> np.ndarray:
    """A stand-in sentence embedder (loading the real one takes seconds): letter counts per text."""
    return np.array([[text.count(ch) for ch in "abcdefghij "] + [1.0] for text in texts], dtype=np.float64)


def _figure_png() -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def prompts_html() -> str:
    with pytest.MonkeyPatch.context() as patch:  # the page is the subject here, not the sentence embedder
        patch.setattr("modescope.metrics.diversity.default_embedder", lambda: letter_counts)
        units = sample_units()
    return aggregate("sample", MODELS, units).artifacts["prompts.html"].data.decode()


def open_prompt_and_check(root: Page | FrameLocator, prompt_id: str, prompt: str) -> None:
    """Click a prompt's row: each model's samples page, scripted page and figure open in the detail view."""
    root.locator("#prompts tbody tr", has_text=prompt_id).first.click()
    detail = root.locator("#detail")
    expect(detail.locator("h2")).to_have_text(f"Prompt {prompt_id}")
    expect(detail.locator(".prompt")).to_have_text(prompt)  # model and user text shown as text
    expect(detail.locator("iframe")).to_have_count(2 * len(MODELS))
    for model in range(len(MODELS)):
        samples = detail.frame_locator('iframe[title="samples.html"]').nth(model)
        expect(samples.locator("h1")).to_have_text("3 completions per model")
        expect(samples.locator(".prompt")).to_have_text(prompt)
        expect(samples.locator(".completion")).to_have_count(3)
        scripted = detail.frame_locator('iframe[title="check.html"]').nth(model)
        expect(scripted.locator("#out")).to_have_text("script ran")
    figures = detail.locator('img[alt="figure.png"]')
    expect(figures).to_have_count(len(MODELS))
    for k in range(len(MODELS)):
        figures.nth(k).evaluate("img => img.decode()")  # rejects when the data URL is not a valid image
        assert figures.nth(k).evaluate("img => img.naturalWidth") > 0


@pytest.mark.browser
def test_prompt_page_sorts_filters_and_opens_units(
    page: Page, page_log: PageLog, prompts_html: str, tmp_path: Path
) -> None:
    path = tmp_path / "prompts.html"
    path.write_text(prompts_html)
    page.goto(path.as_uri())
    rows = page.locator("#prompts tbody tr")
    expect(rows).to_have_count(len(PROMPTS))
    page.fill("#filter", "hostile")
    expect(page.locator("#prompts tbody tr:visible")).to_have_count(1)
    expect(page.locator("#shown")).to_have_text(f"1 of {len(PROMPTS)} prompts shown")
    page.fill("#filter", "")
    id_header = page.locator("#prompts th").first
    id_header.click()
    id_header.click()  # descending
    assert [rows.nth(k).locator("td").first.inner_text() for k in range(len(PROMPTS))] == ["q4", "q3", "q2", "q1"]
    open_prompt_and_check(page, "q2", PROMPTS[1])
    open_prompt_and_check(page, "q3", PROMPTS[2])  # a second prompt replaces the first's views
    page_log.assert_clean()


@pytest.mark.browser
def test_prompt_page_works_inside_the_report_iframe(
    page: Page, page_log: PageLog, prompts_html: str, tmp_path: Path
) -> None:
    # the report embeds each HTML artifact through this very function: a sandboxed iframe with srcdoc
    frame = _artifact("prompts.html", "text/html", prompts_html.encode(), "sample")
    assert 'sandbox="allow-scripts"' in frame
    report = tmp_path / "report.html"
    report.write_text(f"<!doctype html><html><head><style>{STYLE}</style></head><body>{frame}</body></html>")
    page.goto(report.as_uri())
    inner = page.frame_locator('iframe[title="prompts.html"]')
    expect(inner.locator("#prompts tbody tr")).to_have_count(len(PROMPTS))
    open_prompt_and_check(inner, "q2", PROMPTS[1])
    page_log.assert_clean()
