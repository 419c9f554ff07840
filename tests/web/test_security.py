"""Web hardening, in process: the Host check (DNS rebinding), the security headers, no CORS, the page policies.

fastapi's TestClient takes the server's address from its base URL and sends the Host header it is given, so
`TestClient(app, base_url="http://127.0.0.1:8765")` is a request that arrived over loopback, and a `host`
header plays the name the browser used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from modescope.cli.serve import serve
from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend
from modescope.viz.multiverse_html import multiverse_html
from modescope.viz.offline import offline_csp, offline_policy
from modescope.web.app import STATIC, create_app
from modescope.web.security import DOCS_POLICY, PAGE_POLICY, RESOURCE_POLICY, check_allowed_hosts, host_allowed
from tests.web.conftest import TOKENS, free_port, toy_models

LOOPBACK = "http://127.0.0.1:8765"
EXPOSED = "http://10.0.0.5:8765"  # a connection that came in over a network interface
SRC = Path(__file__).resolve().parents[2] / "src" / "modescope"
GENERATE = {"models": ["toy-base"], "prompt": {"text": "Q: is it a cat?"}, "n": 1, "max_tokens": 2}


@pytest.fixture
def loopback() -> Iterator[TestClient]:
    with TestClient(create_app(toy_models()), base_url=LOOPBACK) as client:
        yield client


def refused(response: Any) -> str:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/json"
    message: str = response.json()["error"]
    assert "\n" not in message and "--allow-host" in message and "127.0.0.1" in message
    return message


# --- the Host check ------------------------------------------------------------------------------------------

FOREIGN = [
    "attacker.example",
    "attacker.example:8765",
    "ATTACKER.example.",
    "localhost.attacker.example",
    "127.0.0.1.nip.io:8765",
    "0.0.0.0:8765",
    "192.168.1.4:8765",
    "testserver",
    "",
]


@pytest.mark.parametrize("host", FOREIGN)
def test_a_foreign_host_is_refused_on_loopback(loopback: TestClient, host: str) -> None:
    for path in ["/", "/static/app.js", "/api/models", "/openapi.json", "/nowhere"]:
        message = refused(loopback.get(path, headers={"host": host}))
        assert (repr(host) if host else "none") in message
    refused(loopback.post("/api/generate", json=GENERATE, headers={"host": host}))


def test_the_host_is_checked_before_the_body_is_read(loopback: TestClient) -> None:
    big = {**GENERATE, "prompt": {"text": "x" * 2_000_000}}  # over the body cap (413 if its Host were fine)
    refused(loopback.post("/api/generate", json=big, headers={"host": "attacker.example"}))


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8765", "LOCALHOST.", "127.0.0.1", "127.0.0.1:8765", "127.0.0.2:9", "[::1]:8765"]
)
def test_loopback_names_are_answered(loopback: TestClient, host: str) -> None:
    assert loopback.get("/api/models", headers={"host": host}).status_code == 200
    assert loopback.post("/api/generate", json=GENERATE, headers={"host": host}).status_code == 200


def test_an_exposed_server_answers_any_name_unless_names_are_listed() -> None:
    with TestClient(create_app(toy_models()), base_url=EXPOSED) as client:
        for host in ["10.0.0.5:8765", "myhost.lan:8765", "localhost"]:
            assert client.get("/api/models", headers={"host": host}).status_code == 200
    with TestClient(create_app(toy_models(), allowed_hosts=["Playground.Example"]), base_url=EXPOSED) as client:
        for host in ["playground.example", "PLAYGROUND.example:443", "10.0.0.5:8765", "localhost:8765", "[::1]"]:
            assert client.get("/api/models", headers={"host": host}).status_code == 200, host
        for host in ["myhost.lan", "playground.example.attacker.example", "10.0.0.6"]:
            refused(client.get("/api/models", headers={"host": host}))


def test_a_listed_name_is_answered_on_loopback_too() -> None:
    # a reverse proxy on this machine forwards its own name: listing it is how it gets through
    with TestClient(create_app(toy_models(), allowed_hosts=["proxy.example"]), base_url=LOOPBACK) as client:
        assert client.get("/api/models", headers={"host": "proxy.example"}).status_code == 200
        refused(client.get("/api/models", headers={"host": "attacker.example"}))


def test_host_rules_at_the_edges() -> None:
    assert host_allowed("[::ffff:127.0.0.1]:80", "127.0.0.1")  # IPv4-mapped loopback is loopback
    assert host_allowed("myhost:80", "::ffff:10.0.0.5")  # a dual-stack socket's exposed address
    assert not host_allowed("attacker.example", "::ffff:127.0.0.1")  # ... and its loopback one
    assert not host_allowed("attacker.example", None)  # no address known (a unix socket): strict
    assert not host_allowed(None, "10.0.0.5")  # no Host at all


@pytest.mark.parametrize("bad", ["http://playground.example", "playground.example:8765", "", " ", "a/b", "*.example"])
def test_allowed_hosts_must_be_plain_names(bad: str) -> None:
    with pytest.raises(ModescopeError, match="--allow-host takes a host name"):
        check_allowed_hosts([bad])
    with pytest.raises(ModescopeError, match="--allow-host takes a host name"):
        create_app(toy_models(), allowed_hosts=[bad])


def test_allowed_hosts_are_normalized() -> None:
    assert check_allowed_hosts(["Playground.Example.", "[::1]", "10.0.0.5"]) == (
        "playground.example",
        "::1",
        "10.0.0.5",
    )


# --- the serve command configures it ------------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run `modescope serve ARGS` without serving: the app it would have served, or the failed result."""
    monkeypatch.setattr("modescope.models.load", lambda name, **_: AnalyticBackend(TOKENS, name=name))
    ran: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **options: ran.update(app=app, **options))
    command = typer.Typer()
    command.command()(serve)

    def run(*args: str) -> Any:
        result = CliRunner().invoke(command, ["-m", "a", "--port", str(free_port()), *args])
        return ran.get("app") if result.exit_code == 0 else result

    return run


def test_serve_refuses_a_foreign_host_on_loopback(served: Any) -> None:
    with TestClient(served(), base_url=LOOPBACK) as client:
        refused(client.get("/api/models", headers={"host": "attacker.example"}))
        assert client.get("/api/models", headers={"host": "localhost:8765"}).status_code == 200


def test_serve_restricts_an_exposed_server_to_the_allowed_names(served: Any) -> None:
    app = served("--host", "0.0.0.0", "--token", "long-enough", "--allow-host", "pg.example", "--allow-host", "pg2")
    token = {"X-Modescope-Token": "long-enough"}
    with TestClient(app, base_url=EXPOSED) as client:
        for host in ["pg.example:8765", "pg2", "10.0.0.5:8765"]:
            assert client.get("/api/models", headers={"host": host, **token}).status_code == 200
        refused(client.get("/api/models", headers={"host": "other.example", **token}))


def test_serve_names_a_bad_allowed_host_in_one_line(served: Any) -> None:
    result = served("--allow-host", "http://pg.example")
    assert result.exit_code == 2 and result.output.count("error:") == 1 and "--allow-host" in result.output
    assert "Traceback" not in result.output


# --- headers -------------------------------------------------------------------------------------------------

COMMON = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-resource-policy": "same-origin",
}


def assert_secured(response: Any, policy: str) -> None:
    for key, value in COMMON.items():
        assert response.headers.get(key) == value, (response.request.url, key)
    assert response.headers.get("content-security-policy") == policy, response.request.url
    assert not any(key.startswith("access-control-") for key in response.headers), response.headers


def test_every_response_carries_the_headers(loopback: TestClient) -> None:
    assert_secured(loopback.get("/"), PAGE_POLICY)
    for path in ["/static/app.js", "/static/style.css", "/api/models", "/openapi.json", "/nowhere"]:
        assert_secured(loopback.get(path), RESOURCE_POLICY)
    assert_secured(loopback.post("/api/generate", json=GENERATE), RESOURCE_POLICY)
    assert_secured(loopback.post("/api/generate", json={}), RESOURCE_POLICY)  # a 422
    assert_secured(loopback.post("/api/generate", content=b"x" * 2_000_000), RESOURCE_POLICY)  # a 413
    stream = {"models": ["toy-base"], "prompt": {"text": "Q:"}, "integers": [0, 3]}
    assert_secured(loopback.post("/api/distribution", json=stream), RESOURCE_POLICY)  # server-sent events
    assert_secured(loopback.get("/api/models", headers={"host": "attacker.example"}), RESOURCE_POLICY)  # a 403
    for path in ["/docs", "/redoc"]:
        assert_secured(loopback.get(path), DOCS_POLICY)


def test_the_page_policy_is_tight() -> None:
    directives = dict(d.strip().split(" ", 1) for d in PAGE_POLICY.split(";"))
    assert directives["default-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'" and directives["base-uri"] == "'none'"
    assert "unsafe" not in PAGE_POLICY and "data:" not in PAGE_POLICY and "*" not in PAGE_POLICY
    assert "frame-ancestors 'none'" in RESOURCE_POLICY and "default-src 'none'" in RESOURCE_POLICY
    assert "frame-ancestors 'none'" in DOCS_POLICY


def test_the_page_policy_allows_exactly_the_multiverse_frames_inline_code() -> None:
    """The multiverse panel's srcdoc frame inherits the page policy: its inline script and style must be the
    ones the policy hashes, or the panel would stay blank."""
    import base64
    import hashlib

    page = multiverse_html({"prompt": "<b>p</b>", "models": ["m"], "trees": []}, "Block multiverse")
    inline = re.findall(r"<script>(.*?)</script>", page, re.S) + re.findall(r"<style>(.*?)</style>", page, re.S)
    assert len(inline) == 2
    for code in inline:
        digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in PAGE_POLICY


def test_the_page_itself_has_no_inline_code() -> None:
    page = (STATIC / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []
    assert re.findall(r"\son[a-z]+\s*=", page) == [] and " style=" not in page and "<style" not in page
    script = (STATIC / "app.js").read_text()
    assert "innerHTML" not in script and "eval(" not in script and "new Function" not in script


# --- CORS stays closed ---------------------------------------------------------------------------------------


def test_no_cors_for_another_origin(loopback: TestClient) -> None:
    origin = {"origin": "http://attacker.example"}
    preflight = loopback.options("/api/generate", headers={**origin, "access-control-request-method": "POST"})
    assert preflight.status_code >= 400
    assert_secured(preflight, RESOURCE_POLICY)
    assert_secured(loopback.get("/api/models", headers=origin), RESOURCE_POLICY)


def test_a_simple_cross_origin_post_runs_nothing(loopback: TestClient) -> None:
    """A form or no-cors fetch can POST text/plain without a preflight; it must not start a generation."""
    import json

    body = json.dumps(GENERATE)
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]:
        answer = loopback.post("/api/generate", content=body, headers={"content-type": content_type})
        assert answer.status_code == 422, (content_type, answer.text)


# --- self-contained HTML outputs -------------------------------------------------------------------------------


def test_offline_policy_forbids_every_load() -> None:
    bare = offline_policy()
    for directive in ["default-src 'none'", "connect-src 'none'", "script-src 'none'", "img-src 'none'"]:
        assert directive in bare
    assert "'self'" not in bare and "http" not in bare and "*" not in bare
    assert "script-src 'unsafe-inline'" in offline_policy(scripts=True)
    assert "img-src data:" in offline_policy(images=True)
    assert offline_csp(scripts=True).startswith('<meta http-equiv="Content-Security-Policy" content="default-src')


def test_every_page_writer_puts_the_policy_first_in_its_head() -> None:
    """Every module that writes an HTML document uses the one helper, right after the charset."""
    writers = [p for p in SRC.rglob("*.py") if re.search(r"<!doctype html>", p.read_text(), re.I)]
    assert len(writers) >= 8, writers
    for path in writers:
        text = path.read_text()
        assert re.search(r"<meta charset=.utf-8.>\{offline_csp\(", text), path
    page = multiverse_html({"prompt": "p", "models": ["m"], "trees": []})
    head = page.split("<head>", 1)[1]
    assert head.startswith('<meta charset="utf-8"><meta http-equiv="Content-Security-Policy"')


def test_the_lab_report_embeds_its_plot_instead_of_loading_a_file(tmp_path: Path) -> None:
    """Its policy allows data: images only, so the plot travels inside the page (which then opens anywhere)."""
    import base64

    from modescope.lab.report import LabRunData, render_html

    png = tmp_path / "plots" / "curves.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    sample = {"prompt": "<b>Q</b>", "text": "x", "reward": 0.5}
    run = LabRunData(tmp_path, "run", {}, [], [{"step": 2, "metrics": {"reward": 0.5}, "samples": [sample]}])
    render_html([run], tmp_path / "report.html", png)
    page = (tmp_path / "report.html").read_text()
    assert page.startswith(f"<!doctype html><meta charset='utf-8'>{offline_csp(images=True)}")
    assert f"src='data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}'" in page
    assert "curves.png" not in page and "&lt;b&gt;Q&lt;/b&gt;" in page
    with pytest.raises(ModescopeError, match="cannot read the plot"):
        render_html([run], tmp_path / "report.html", tmp_path / "missing.png")
