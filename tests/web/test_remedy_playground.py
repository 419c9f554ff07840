"""The playground's Remedy section in headless Chromium: pick Verbalized Sampling and a guide, sample, and see
the remedy applied (its tag, the prompt sent, the parsed responses with their stated probabilities), on two
scripted models that write a verbalized list after "Responses:"."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page

from modescope.web.app import create_app
from tests.browser.harness import PageLog
from tests.web.conftest import LiveServer
from tests.web.test_playground_browser import shot, web_page  # noqa: F401 - the page fixture, on this server
from tests.web.test_remedy_api import RED, SCRIBE, SCRIBE_BASE, scribes

pytestmark = pytest.mark.browser


@pytest.fixture
def server(live_server: Callable[..., LiveServer]) -> LiveServer:
    return live_server(create_app(scribes()))


def sample(page: Page) -> None:
    page.click("#generate")
    page.wait_for_selector(".column .verbalized")
    page.wait_for_function("() => document.body.dataset.busy === 'false'")


def responses(page: Page, model: str) -> list[str]:
    return page.locator(f'.column[data-model="{model}"] .verbalized li').all_inner_texts()


def test_a_strategy_and_a_guide_picked_in_the_page_are_applied(web_page: Page, page_log: PageLog) -> None:  # noqa: F811
    page = web_page
    assert page.input_value("#model-a") == SCRIBE and page.input_value("#model-b") == SCRIBE_BASE
    assert page.locator("#remedy-summary").inner_text() == "none"
    assert not page.locator("#remedy-k").is_visible() and not page.locator("#remedy-alpha").is_visible()
    page.fill("#prompt", "Name a colour.")
    page.fill("#n", "2")
    page.fill("#max_tokens", "6")
    page.select_option("#remedy-strategy", "verbalized")
    page.fill("#remedy-k", "2")
    page.dispatch_event("#remedy-k", "change")
    page.select_option("#remedy-guide", SCRIBE_BASE)
    page.fill("#remedy-alpha", "1")
    assert page.input_value("#remedy-alpha-range") == "1"
    summary = f"verbalized (k 2) · guided by {SCRIBE_BASE} α 1 geometric"
    assert page.locator("#remedy-summary").inner_text() == summary
    sample(page)

    column = page.locator(f'.column[data-model="{SCRIBE}"]')
    assert column.locator(".remedy-tag").inner_text() == "remedy: " + summary
    assert column.locator(".remedy-tag").get_attribute("title") == f"sampled from {SCRIBE}~geometric1~{SCRIBE_BASE}"
    sent = column.locator(".sent-prompt")
    assert not sent.locator(".text").is_visible()
    sent.locator("summary").click()
    sent_text = sent.locator(".text").inner_text()
    assert sent_text.startswith("Give 2 different responses") and sent_text.endswith(
        "Prompt: Name a colour.⏎\nResponses:"
    )
    # the guide alone (alpha 1) writes its own second response in both columns
    assert column.locator(".verbalized .head").inner_text() == "2 parsed responses · 0 unparsed"
    assert responses(page, SCRIBE) == ["p 0.60blue", "p 0.40green"] == responses(page, SCRIBE_BASE)
    assert "[verbalized (k 2)" in page.locator("#tree").inner_text()
    shot(page, "9-remedy-guided")

    # expanding the branch keeps the remedy: same prompt sent, the list read with the kept tokens
    page.locator("body").click(position={"x": 5, "y": 300})
    page.keyboard.press("e")
    page.wait_for_function("() => document.querySelectorAll('#tree .item').length === 4")
    page.wait_for_function("() => document.body.dataset.busy === 'false'")
    assert column.locator(".remedy-tag").inner_text() == "remedy: " + summary
    assert responses(page, SCRIBE) == ["p 0.60blue", "p 0.40green"]

    # without the guide the tuned model writes its own second response, markup included, shown as text
    page.select_option("#remedy-guide", "")
    assert not page.locator("#remedy-alpha").is_visible()
    sample(page)
    assert column.locator(".remedy-tag").inner_text() == "remedy: verbalized (k 2)"
    assert responses(page, SCRIBE) == ["p 0.60blue", "p 0.40" + RED]
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert page.locator("#columns img").count() == 0
    shot(page, "10-remedy-verbalized")
    page_log.assert_clean()
