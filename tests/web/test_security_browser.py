"""Web hardening in headless Chromium: what another origin, a rebound name and an offline page can and cannot do.

Every server here is a real uvicorn on 127.0.0.1 (tests/web/conftest.py); two ports are two origins.
The pages forbid eval, so `wait_for_function` gets a function ("() => ..."): Playwright evaluates that once
from outside the page, where a plain expression would be re-evaluated with the page's own (forbidden) eval.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

from modescope.browser import HEADLESS_FLAGS
from modescope.viz.multiverse_html import multiverse_html
from modescope.web.app import LazyModel, create_app
from modescope.web.security import PAGE_POLICY
from tests.browser.harness import CHROMIUM
from tests.browser.test_multiverse_page import expansion
from tests.web.conftest import BASE, TUNED, LiveServer, toy_models
from tests.web.test_playground_browser import generate_in_page

pytestmark = pytest.mark.browser

# Collects CSP violations in every frame (the multiverse panel's srcdoc frame included).
WATCH_VIOLATIONS = """
window.violations = [];
document.addEventListener('securitypolicyviolation', e => window.violations.push(e.effectiveDirective));
"""
GENERATE = {"models": [BASE], "prompt": {"text": "Q: is it a cat?"}, "n": 1, "max_tokens": 2}

ATTACKER = """<!doctype html><html><head><title>attacker</title></head><body>
<iframe id="framed" src="TARGET/"></iframe>
<script>
const target = "TARGET";
const body = JSON.stringify(GENERATE);
async function attempt(request) {
  try {
    const response = await request();
    return {read: true, type: response.type, status: response.status, text: await response.text()};
  } catch (error) {
    return {read: false, error: String(error)};
  }
}
window.attempts = Promise.all([
  attempt(() => fetch(target + "/api/models")),
  attempt(() => fetch(target + "/api/generate", {method: "POST", headers: {"Content-Type": "application/json"}, body})),
  attempt(() => fetch(target + "/api/models", {mode: "no-cors"})),
  attempt(() => fetch(target + "/api/generate", {method: "POST", mode: "no-cors", body})),
]);
</script></body></html>"""


def context_of(browser: Browser, errors: list[str]) -> BrowserContext:
    """A context that records console errors and uncaught exceptions of every page and frame in `errors`."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script(WATCH_VIOLATIONS)

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):  # the page has none
            errors.append(message.text)

    context.on("console", console)
    context.on("weberror", lambda e: errors.append(str(e.error)))
    return context


@pytest.fixture
def errors() -> list[str]:
    return []


def loaded_models(server: LiveServer, page: Page) -> dict[str, bool]:
    answer = page.request.get(server.url + "/api/models")
    return {m["name"]: m["loaded"] for m in answer.json()["models"]}


def test_another_origin_cannot_read_the_api_nor_frame_the_page(
    browser: Browser, live_server: Callable[..., LiveServer], errors: list[str]
) -> None:
    # lazy models: a request that got as far as running a model would load one
    lazy = [LazyModel(m.name, lambda m=m: m) for m in toy_models()]
    playground = live_server(create_app(lazy))
    attacker = FastAPI()
    page_html = ATTACKER.replace("TARGET", playground.url).replace("GENERATE", json.dumps(GENERATE))

    @attacker.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(page_html)

    other = live_server(attacker)
    assert other.url != playground.url
    context = context_of(browser, errors)
    page = context.new_page()
    page.goto(other.url + "/")
    attempts = page.evaluate("window.attempts")
    # CORS: the plain and the JSON requests fail (the JSON one at its preflight); no-cors: the request goes
    # out but Cross-Origin-Resource-Policy withholds even the opaque answer
    assert [a["read"] for a in attempts] == [False] * 4, attempts
    assert all("Failed to fetch" in a["error"] for a in attempts)
    page.wait_for_timeout(200)
    assert any("frame-ancestors 'none'" in e for e in errors), errors  # the framed playground was refused
    framed = page.frame_locator("#framed")
    assert framed.locator("#generate").count() == 0
    assert loaded_models(playground, page) == {BASE: False, TUNED: False}  # nothing ran
    # the same requests from the playground's own origin do read and run
    page.goto(playground.url + "/")
    same = page.evaluate(
        """async (body) => {
          const r = await fetch('/api/generate', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                  body: JSON.stringify(body)});
          return r.status;
        }""",
        GENERATE,
    )
    assert same == 200 and loaded_models(playground, page)[BASE]
    context.close()


@pytest.fixture
def rebinding_browser(browser: Browser) -> Iterator[Browser]:
    """Chromium whose resolver answers 127.0.0.1 for rebound.test, as an attacker's DNS would after rebinding.

    Chromium's own Local Network Access check would stop the attack page before the server saw it; with it
    off, this is a browser without one (Firefox, Safari today), so what is tested is the server's check."""
    rules = "--host-resolver-rules=MAP rebound.test 127.0.0.1"
    no_lna = "--disable-features=BlockInsecurePrivateNetworkRequests,LocalNetworkAccessChecks"
    launched = browser.browser_type.launch(executable_path=str(CHROMIUM), args=[*HEADLESS_FLAGS, rules, no_lna])
    yield launched
    launched.close()


def test_a_rebound_name_is_refused_in_the_browser(
    rebinding_browser: Browser, live_server: Callable[..., LiveServer], errors: list[str]
) -> None:
    server = live_server()
    listed = live_server(create_app(toy_models(), allowed_hosts=["rebound.test"]))  # the control
    context = context_of(rebinding_browser, errors)
    page = context.new_page()
    rebound = page.goto(f"http://rebound.test:{server.port}/")
    assert rebound is not None and rebound.status == 403
    assert "--allow-host" in json.loads(rebound.text())["error"]
    # the attacker's own page, served at rebound.test before the name was rebound (played here by the
    # browser's router): same-origin with the playground now, yet every answer it gets is the refusal
    read = "async () => { const r = await fetch('/api/models'); return [r.status, await r.json()]; }"
    for target in (server, listed):
        origin = f"http://rebound.test:{target.port}"
        context.route(origin + "/attack", lambda route: route.fulfill(body="<p>attacker</p>", content_type="text/html"))
        page.goto(origin + "/attack")
        status, answer = page.evaluate(read)
        if target is server:
            assert status == 403 and "rebound.test" in answer["error"]
        else:  # a server that lists the name answers it: the browser really reached it through the rebound name
            assert status == 200 and [m["name"] for m in answer["models"]] == [BASE, TUNED]
    home = page.goto(f"http://localhost:{server.port}/")
    assert home is not None and home.status == 200
    page.wait_for_function("() => window.playgroundReady === true")
    context.close()


def test_the_playground_works_under_its_policy(
    browser: Browser, live_server: Callable[..., LiveServer], errors: list[str]
) -> None:
    server = live_server()
    context = context_of(browser, errors)
    page = context.new_page()
    page.set_default_timeout(15_000)
    response = page.goto(server.url + "/")
    assert response is not None and response.headers["content-security-policy"] == PAGE_POLICY
    page.wait_for_function("() => window.playgroundReady === true")
    generate_in_page(page)
    assert page.locator(".column").count() == 2
    page.click("#tab-multiverse")
    page.fill("#mv-depth", "2")
    page.fill("#mv-cutoff", "0.05")
    page.click("#mv-run")
    frame = page.frame_locator("#mv-frame")
    frame.locator(".block[data-path='0']").wait_for()  # the srcdoc page's hashed inline script ran
    frame.locator(".block[data-path='0']").click()
    assert frame.locator("#view-root").get_attribute("data-path") == "0"
    assert frame.locator("#drawing").evaluate("d => getComputedStyle(d).position") == "relative"  # its style too
    for each in page.frames:
        assert each.evaluate("window.violations") == [], each.url
    assert errors == []
    # the policy is enforced, not only sent: injected inline script does not run
    injected = page.evaluate(
        """() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';
                  document.body.append(s); return window.injected === undefined; }"""
    )
    assert injected and page.evaluate("window.violations") == ["script-src-elem"]
    context.close()


REACH = """async (target) => {
  const waitFor = (element) => new Promise(done => { element.onload = element.onerror = done; });
  try { await fetch(target + '/fetch'); } catch (error) {}
  const image = new Image(); const imageDone = waitFor(image); image.src = target + '/image'; await imageDone;
  const script = document.createElement('script'); const scriptDone = waitFor(script);
  script.src = target + '/script'; document.head.append(script); await scriptDone;
  const style = document.createElement('link'); const styleDone = waitFor(style);
  style.rel = 'stylesheet'; style.href = target + '/style'; document.head.append(style); await styleDone;
  navigator.sendBeacon(target + '/beacon', 'x');
  await new Promise(done => setTimeout(done, 300));
  return window.violations;
}"""


def test_a_self_contained_page_reaches_no_network(
    browser: Browser, live_server: Callable[..., LiveServer], tmp_path: Path, errors: list[str]
) -> None:
    """A written page (the multiverse page: it runs a script) cannot send a request anywhere, and without
    its policy the very same page could: the policy is what stops it."""
    hits: list[str] = []
    listener = FastAPI()

    @listener.api_route("/{path}", methods=["GET", "POST"])
    async def record(path: str, request: Request) -> PlainTextResponse:
        hits.append(path)
        return PlainTextResponse("", headers={"Access-Control-Allow-Origin": "*"})

    target = live_server(listener).url
    page_html = multiverse_html(expansion())
    policy = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', page_html)
    assert policy is not None
    written, bare = tmp_path / "multiverse.html", tmp_path / "bare.html"
    written.write_text(page_html)
    bare.write_text(page_html.replace(policy.group(0), ""))
    context = context_of(browser, errors)
    page = context.new_page()

    page.goto(bare.as_uri())
    page.wait_for_function("() => window.multiverseReady === true")
    assert page.evaluate(REACH, target) == []
    assert sorted(hits) == ["beacon", "fetch", "image", "script", "style"]  # the control reached every one

    hits.clear()
    page.goto(written.as_uri())
    page.wait_for_function("() => window.multiverseReady === true")  # its own inline script still runs
    blocked = page.evaluate(REACH, target)
    assert set(blocked) == {"connect-src", "img-src", "script-src-elem", "style-src-elem"}, blocked
    assert hits == []
    context.close()
