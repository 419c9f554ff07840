"""The playground end to end: a real uvicorn server on 127.0.0.1 serving toy models, driven in headless Chromium.

Screenshots go to out/test-artifacts/web/ (kept after the run, for looking at what the tests saw).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route

from modescope.engine.decode import generate
from tests.browser.harness import PageLog
from tests.web.conftest import BASE, TUNED, LiveServer, toy_models

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "test-artifacts" / "web"
PROMPT = "Q: is it a cat?\nA:"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def server(live_server: Callable[..., LiveServer]) -> LiveServer:
    return live_server()


@pytest.fixture
def web_page(browser: Browser, page_log: PageLog, server: LiveServer) -> Iterator[Page]:
    """A page that may reach only the test server (anything else is blocked and recorded)."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)

    def route(request_route: Route) -> None:
        url = request_route.request.url
        if url.startswith(server.url + "/") or url.startswith(("data:", "about:", "blob:")):
            request_route.continue_()
        else:
            page_log.blocked.append(url)
            request_route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: page_log.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page_log.errors.append(str(e)))

    def dialog(opened: Any) -> None:
        page_log.dialogs.append(opened.message)
        opened.dismiss()

    page.on("dialog", dialog)
    page.set_default_timeout(15_000)
    page.goto(server.url + "/")
    page.wait_for_function("() => window.playgroundReady === true")
    yield page
    context.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def generate_in_page(page: Page, prompt: str = PROMPT, n: int = 3, max_tokens: int = 10) -> None:
    page.fill("#prompt", prompt)
    page.fill("#n", str(n))
    page.fill("#max_tokens", str(max_tokens))
    page.click("#generate")
    page.wait_for_selector(".column .main .tok")
    page.wait_for_function("() => document.body.dataset.busy === 'false'")


def ids_of(page: Page, model: str) -> list[int]:
    spans = page.locator(f'.column[data-model="{model}"] .main .tok')
    return [int(i) for i in spans.evaluate_all("spans => spans.map(s => s.dataset.id)")]


def test_generate_branch_multiverse_and_export(web_page: Page, page_log: PageLog) -> None:
    page = web_page
    assert page.input_value("#model-a") == BASE and page.input_value("#model-b") == TUNED
    generate_in_page(page)
    columns = page.locator(".column")
    assert columns.count() == 2
    assert [columns.nth(i).get_attribute("data-model") for i in range(2)] == [BASE, TUNED]
    for model in (BASE, TUNED):
        column = page.locator(f'.column[data-model="{model}"]')
        assert column.locator(".alternates li").count() == 3
        assert column.locator(".main .tok").count() >= 1
        colour = column.locator(".main .tok").first.evaluate("s => s.style.background")
        assert colour.startswith("rgb"), colour  # coloured by probability
    shot(page, "1-two-models")

    # a token's alternatives, then a branch on the second most likely one
    before = ids_of(page, BASE)
    page.click(f'.column[data-model="{BASE}"] .main .tok[data-pos="2"]')
    popup = page.locator("#popup")
    assert popup.is_visible()
    assert page.locator("#popup-alts button.alt").count() == 10
    shot(page, "2-alternatives")
    choice = page.locator("#popup-alts button.alt:not(.current)").first
    chosen = int(choice.get_attribute("data-id") or -1)
    items = page.locator("#tree .item").count()
    choice.click()
    page.wait_for_function(f"() => document.querySelectorAll('#tree .item').length === {items + 1}")
    page.wait_for_function("() => document.body.dataset.busy === 'false'")
    after = ids_of(page, BASE)
    assert after[:2] == before[:2] and after[2] == chosen
    edited = page.locator(f'.column[data-model="{BASE}"] .main .tok.edited')
    assert edited.count() == 1 and edited.get_attribute("data-pos") == "2"
    assert edited.evaluate("s => getComputedStyle(s).backgroundColor") == "rgb(255, 255, 255)"
    base = toy_models()[0]
    (expected,) = generate(base, [*base.prompt_ids(PROMPT), *after[:3]], max_tokens=10, temperature=0.0)
    assert after[3:] == [t.id for t in expected.tokens]  # the greedy regeneration from the branch point
    shot(page, "3-branched")

    # the block multiverse of the branch's prefix: click a block and it becomes the view root
    page.click("#tab-multiverse")
    page.fill("#mv-depth", "2")
    page.fill("#mv-cutoff", "0.05")
    page.click("#mv-run")
    page.wait_for_function("() => document.getElementById('mv-progress').textContent.includes('nodes')")
    frame = page.frame_locator("#mv-frame")
    frame.locator(".block[data-path='0']").wait_for()
    frame.locator(".block[data-path='0']").click()
    assert frame.locator("#view-root").get_attribute("data-path") == "0"
    shot(page, "4-multiverse")

    # export the tree as JSON
    with page.expect_download() as download:
        page.click("#export")
    data = json.loads(Path(download.value.path()).read_text())
    assert data["format"] == "modescope-playground-tree"
    kinds = sorted(n["kind"] for n in data["nodes"].values())
    assert kinds == ["branch", "branch", "branch", "run"]
    branched = [n for n in data["nodes"].values() if n["kind"] == "branch" and n["prefix"]]
    assert [t["id"] for t in branched[0]["prefix"]] == after[:3] and branched[0]["prefix"][2]["edited"]
    page_log.assert_clean()


def test_markup_in_a_prompt_is_shown_as_text(web_page: Page, page_log: PageLog) -> None:
    page = web_page
    generate_in_page(page, prompt=XSS, n=1, max_tokens=4)
    assert page.locator("#columns img").count() == 0 and page.locator("#tree img").count() == 0
    prompts = page.locator(".column .prompt-part").all_text_contents()
    assert prompts == [XSS, XSS]
    assert XSS in page.locator("#tree").inner_text()
    # an edit typed by the user is text too
    page.click(f'.column[data-model="{TUNED}"] .main .tok[data-pos="1"]')
    page.fill("#popup-edit", "<b>x</b>")
    page.click("#popup-branch")
    page.wait_for_selector(f'.column[data-model="{TUNED}"] .main .tok.edited')
    page.wait_for_function("() => document.body.dataset.busy === 'false'")
    edited = page.locator(f'.column[data-model="{TUNED}"] .main .tok.edited').all_text_contents()
    assert "".join(edited) == "<b>x</b>" and page.locator("#columns b").count() == 0
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    shot(page, "5-markup-as-text")
    assert page_log.dialogs == []
    page_log.assert_clean()


def test_tree_keyboard_help_rename_bookmark_delete_import(web_page: Page, page_log: PageLog, tmp_path: Path) -> None:
    page = web_page
    page.fill("#prompt", PROMPT)
    page.fill("#max_tokens", "6")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")  # generate from the prompt box
    page.wait_for_selector(".column .main .tok")
    page.wait_for_function("() => document.body.dataset.busy === 'false'")
    page.locator("body").click(position={"x": 5, "y": 300})
    page.keyboard.press("?")
    assert page.locator("#help").is_visible()
    assert "next branch" in page.locator("#help").inner_text()
    page.keyboard.press("Escape")
    assert not page.locator("#help").is_visible()

    focused = lambda: page.locator("#tree .item.focus").get_attribute("data-id")  # noqa: E731
    first = focused()
    page.keyboard.press("j")
    second = focused()
    assert second != first
    page.keyboard.press("k")
    assert focused() == first
    page.keyboard.press("e")  # expand: continue the selected branch
    page.wait_for_function("() => document.querySelectorAll('#tree .item').length === 4")
    page.wait_for_function("() => document.body.dataset.busy === 'false'")
    expanded = page.locator(f'.column[data-model="{BASE}"] .main .tok').count()
    assert expanded > 6

    page.keyboard.press("b")
    assert page.locator("#tree .item.focus .star").count() == 1
    page.click("#rename")
    page.fill("#rename-input", "<i>my branch</i>")
    page.press("#rename-input", "Enter")
    assert page.locator("#tree .item.focus .label").inner_text() == "<i>my branch</i>"
    assert page.locator("#tree i").count() == 0
    with page.expect_download() as download:
        page.click("#export")
    saved = tmp_path / "tree.json"
    saved.write_text(Path(download.value.path()).read_text())

    page.click("#delete")
    assert page.locator("#tree .item").count() == 3
    page.set_input_files("#import", str(saved))
    page.wait_for_function("() => document.querySelectorAll('#tree .item').length === 4")
    assert "my branch" in page.locator("#tree").inner_text()

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "something else"}))
    page.set_input_files("#import", str(broken))
    page.wait_for_function("() => document.getElementById('status').textContent.includes('import failed')")
    assert page.locator("#tree .item").count() == 4
    shot(page, "6-tree")
    page_log.assert_clean()


def test_distribution_and_attractor_panels(web_page: Page, page_log: PageLog) -> None:
    page = web_page
    generate_in_page(page, n=1, max_tokens=4)
    page.click("#tab-distribution")
    page.fill("#dist-lo", "0")
    page.fill("#dist-hi", "9")
    page.click("#dist-run")
    page.wait_for_selector(".dist-model")
    page.wait_for_function("() => document.body.dataset.busy === 'false'")
    assert page.locator(".dist-model").count() == 2
    assert page.locator(f'.dist-model[data-model="{BASE}"] .bar').count() == 10
    assert "JS" in page.locator(".dist-compare").inner_text()
    shot(page, "7-distribution")
    page.click("#tab-attractor")
    page.fill("#att-tokens", "8")
    page.click("#att-run")
    page.wait_for_selector("#att-result h3")
    assert page.locator("#att-result h3").count() == 2
    assert "basin share" in page.locator("#att-result").inner_text()
    page_log.assert_clean()


def test_a_full_queue_shows_its_error(web_page: Page, page_log: PageLog, server: LiveServer) -> None:
    page = web_page
    page.route(
        server.url + "/api/generate/stream",
        lambda r: r.fulfill(status=503, json={"error": "the model worker is busy"}),
    )
    page.fill("#prompt", PROMPT)
    page.click("#generate")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('busy')")
    assert "error" in (page.locator("#status").get_attribute("class") or "")
    assert page.locator(".column").count() == 0
    page_log.errors.clear()  # the browser logs the 503 itself
    page_log.assert_clean()
