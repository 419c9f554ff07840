"""Headless Chromium for page tests: Debian's /usr/bin/chromium driven by Playwright's sync API.

Playwright's own browser download does not work here, so the system browser is required; when it is
missing the fixture fails loudly rather than skipping, so a broken setup cannot pass as green.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Route, sync_playwright

from modescope.browser import HEADLESS_FLAGS

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = HEADLESS_FLAGS
# anything that is not a local file is a page reaching for the network, which a self-contained page must not
NOT_LOCAL = re.compile(r"^(?!file:|data:|about:).*")


@dataclass
class PageLog:
    """What a page did besides drawing: console errors, uncaught exceptions, dialogs, blocked requests."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.errors == [], f"console or page errors: {self.errors}"
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"
        assert self.blocked == [], f"network requests: {self.blocked}"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def page(browser: Browser, page_log: PageLog) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})

    def block(route: Route) -> None:
        page_log.blocked.append(route.request.url)
        route.abort()

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            page_log.errors.append(message.text)

    def dialog(opened: Dialog) -> None:
        page_log.dialogs.append(opened.message)
        opened.dismiss()

    context.route(NOT_LOCAL, block)
    new_page = context.new_page()
    new_page.on("console", console)
    new_page.on("pageerror", lambda error: page_log.errors.append(str(error)))
    new_page.on("dialog", dialog)
    yield new_page
    context.close()
