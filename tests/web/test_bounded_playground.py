"""The playground's distribution view of a model behind a top-k server: a visible bounds tag, intervals in
each bar's tooltip and a range mark per bar; the exact model beside it keeps its plain bars."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page

from modescope.models.base import Capabilities
from modescope.web.app import create_app
from tests.browser.harness import PageLog
from tests.web.conftest import BASE, TUNED, LiveServer, toy_models
from tests.web.test_playground_browser import shot, web_page  # noqa: F401 - the page fixture, on this server

pytestmark = pytest.mark.browser
LABEL = "bounds (top-5 server)"


@pytest.fixture
def server(live_server: Callable[..., LiveServer]) -> LiveServer:
    base, tuned = toy_models()
    base.capabilities = Capabilities(tier="top-k", top_k=5, server=f"{BASE}@http://x/v1")
    return live_server(create_app([base, tuned]))


def test_a_bounded_distribution_shows_its_label_and_intervals(web_page: Page, page_log: PageLog) -> None:  # noqa: F811
    page = web_page
    page.fill("#prompt", "Q: a number?\nA:")
    page.click("#tab-distribution")
    page.fill("#dist-lo", "0")
    page.fill("#dist-hi", "9")
    page.click("#dist-run")
    page.wait_for_selector(".dist-model")
    page.wait_for_function("() => document.body.dataset.busy === 'false'")
    bounded, exact = (
        page.locator(f'.dist-model[data-model="{BASE}"]'),
        page.locator(f'.dist-model[data-model="{TUNED}"]'),
    )
    assert bounded.get_attribute("data-bounds") == LABEL
    assert bounded.locator("h3 .bounds-tag").inner_text() == LABEL
    assert re.search(r"coverage \[[\d.e+-]+%, [\d.e+-]+%\]", bounded.locator(".faint").inner_text())
    assert bounded.locator(".bar").count() == 10 and bounded.locator(".bar-range").count() == 10
    title = bounded.locator(".bar").first.get_attribute("title") or ""
    assert re.fullmatch(rf"0: absolute mass \[.+%, .+%\], within the set \[.+%, .+%\] \({re.escape(LABEL)}\)", title)
    assert exact.locator(".bounds-tag").count() == 0 and exact.locator(".bar-range").count() == 0
    assert exact.get_attribute("data-bounds") is None
    assert page.locator(".dist-compare").inner_text().endswith("(from the lower bounds)")
    shot(page, "8-bounded-distribution")
    page_log.assert_clean()
