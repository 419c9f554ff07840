"""The suite report in headless Chromium: no console errors, every section present, model and user text
shown as text."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page

from modescope.store import Store
from modescope.suites.runner import plan_suite, run_suite
from modescope.viz.report_html import write_report
from tests.browser.harness import PageLog
from tests.unit.test_suites import TOY_SUITE

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
SUITE = (
    TOY_SUITE
    + f"""
[[probes]]
name = "hostile"
title = "{HOSTILE}"
kind = "sample"
prompt = "Q: {HOSTILE}\\nA:"
n = 3
max_tokens = 6

[[probes]]
name = "heat"
kind = "temperature"
prompt = "Q: a number?\\nA:"
temperatures = [0.5, 1.9]
n = 3
max_tokens = 4
integers = [0, 9]

[[probes]]
name = "pull"
kind = "attractor"
prompt = "Q: bugs?\\nA:"
max_tokens = 10
swap_positions = 2

[[probes]]
name = "fork"
kind = "forks"
prompt = "Q: bugs?\\nA:"
max_tokens = 5
samples = 2
"""
)
PROBES = ["ints", "talk", "tree", "hostile", "heat", "pull", "fork"]


@pytest.mark.browser
def test_report_renders_every_section_without_errors(page: Page, page_log: PageLog, tmp_path: Path) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    report = tmp_path / "report.html"
    with Store(tmp_path / "store") as store:
        run_id = run_suite(plan_suite(str(suite)), store)
        write_report(store, run_id, report)
    assert "<script>alert(1)" not in report.read_text()
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    for section in ["#run", "#summary", *(f"#probe-{name}" for name in PROBES)]:
        assert page.locator(section).count() == 1, section
    assert page.locator("#summary table.overview tr").count() == len(PROBES) + 1
    assert page.locator("img.figure").count() >= 4  # distribution, temperature, attractors, multiverse
    assert page.locator("iframe").count() >= 5  # samples x2, multiverse, attractors, forks
    hostile = page.locator("#probe-hostile")
    assert HOSTILE in hostile.locator("h2").inner_text()
    assert HOSTILE in hostile.locator(".prompt").inner_text()
    frame = page.frame_locator("#probe-tree iframe")
    frame.locator("#drawing .block").first.wait_for()  # the interactive multiverse runs inside the report
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 50_000
    page_log.assert_clean()


@pytest.mark.browser
def test_report_prints_to_pdf(tmp_path: Path) -> None:
    from tests.unit.test_cli import invoke

    suite = tmp_path / "suite.toml"
    suite.write_text(TOY_SUITE)
    store, html, pdf = tmp_path / "store", tmp_path / "r.html", tmp_path / "r.pdf"
    assert invoke("run", suite, "--store", store).exit_code == 0
    result = invoke("report latest -o", html, "--pdf", pdf, "--store", store)
    assert result.exit_code == 0, result.output
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 20_000
