"""The playground's columns fill live, in headless Chromium against a real server: on slow toy models (each
forward pass takes a while) a column shows coloured tokens long before the answer arrives, the final columns
are those of the JSON answer for the same seed, and Cancel stops the decode on the server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Page

from modescope.web.app import create_app
from tests.browser.harness import PageLog
from tests.web.conftest import BASE, TUNED, LiveServer
from tests.web.test_playground_browser import PROMPT, shot, web_page  # noqa: F401 - the page fixture, on this server
from tests.web.test_streaming import SlowToy, slow_models

pytestmark = pytest.mark.browser

MODELS: list[SlowToy] = []


@pytest.fixture
def server(live_server: Callable[..., LiveServer]) -> LiveServer:
    MODELS[:] = slow_models(delay=0.06)  # 30 tokens: about 2 s per model
    return live_server(create_app(MODELS))


def column_state(page: Page, model: str) -> dict[str, Any]:
    """What a column shows now: its tokens' ids and backgrounds, whether it is still decoding."""
    return page.evaluate(
        """(model) => {
          const column = document.querySelector(`.column[data-model="${model}"]`);
          if (!column) return null;
          const spans = [...column.querySelectorAll(".main .tok")];
          return { live: column.classList.contains("live"), busy: document.body.dataset.busy,
                   ids: spans.map((s) => Number(s.dataset.id)), colours: spans.map((s) => s.style.background) };
        }""",
        model,
    )


def test_columns_fill_live_then_equal_the_answer(web_page: Page, page_log: PageLog) -> None:  # noqa: F811
    page = web_page
    page.fill("#prompt", PROMPT)
    page.fill("#n", "2")
    page.fill("#max_tokens", "30")
    page.fill("#seed", "4")
    page.fill("#temperature", "1")
    page.click("#generate")
    # both columns show coloured tokens while both are still decoding (the models take turns, step by step)
    page.wait_for_function(
        """() => [...document.querySelectorAll(".column.live")].filter((c) =>
                   c.querySelectorAll(".main .tok").length >= 3).length === 2"""
    )
    early = {model: column_state(page, model) for model in (BASE, TUNED)}
    assert not page.locator("#cancel").is_disabled()
    shot(page, "11-live-columns")
    for state in early.values():
        assert state["live"] and state["busy"] == "true" and 3 <= len(state["ids"]) < 30
        assert all(colour.startswith("rgb") for colour in state["colours"])  # coloured by probability as they come
    assert "decoding" in page.locator(f'.column[data-model="{BASE}"] .finish').inner_text()
    page.wait_for_function("() => document.body.dataset.busy === 'false'")
    assert page.locator(".column.live").count() == 0 and page.locator("#cancel").is_disabled()

    body = {"models": [BASE, TUNED], "prompt": {"text": PROMPT, "chat": False}, "n": 2, "max_tokens": 30, "seed": 4}
    body |= {"top_k": 10, "sampler": {"temperature": 1, "top_p": 1, "top_k": 0, "min_p": 0}}
    body["sampler"] |= {"xtc_threshold": 0.1, "xtc_probability": 0}
    with TestClient(create_app(slow_models(delay=0.0))) as client:
        answer = client.post("/api/generate", json=body).json()
    for model, result in zip((BASE, TUNED), answer["results"], strict=True):
        final = column_state(page, model)
        assert final["ids"] == [t["id"] for t in result["completions"][0]["tokens"]]
        assert final["ids"][: len(early[model]["ids"])] == early[model]["ids"]  # what was shown live stays
    page_log.assert_clean()


def test_cancel_stops_the_decode(web_page: Page, page_log: PageLog) -> None:  # noqa: F811
    page = web_page
    page.fill("#prompt", PROMPT)
    page.fill("#max_tokens", "200")
    page.click("#generate")
    page.wait_for_function("() => document.querySelectorAll('.column.live .main .tok').length >= 4")
    page.click("#cancel")
    page.wait_for_function("() => document.body.dataset.busy === 'false'")
    assert page.locator("#status").inner_text() == "generating cancelled"
    assert "error" not in (page.locator("#status").get_attribute("class") or "")
    assert page.locator(".column").count() == 0 and page.locator("#tree .item").count() == 0
    calls = [m.stats.calls for m in MODELS]
    time.sleep(1.0)  # about 16 forward passes' time
    after = [m.stats.calls for m in MODELS]
    assert all(a - c <= 2 for a, c in zip(after, calls, strict=True)), (calls, after)
    assert max(after) < 60  # nowhere near 200 steps per model
    # the page still works: a short generation afterwards fills both columns
    page.fill("#max_tokens", "3")
    page.click("#generate")
    page.wait_for_function("() => document.body.dataset.busy === 'false'")
    assert page.locator(".column").count() == 2 and page.locator(".column.live").count() == 0
    page_log.errors.clear()  # the browser may log the aborted request itself
    page_log.assert_clean()
