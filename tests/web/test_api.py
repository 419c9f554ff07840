"""The playground's JSON API on toy models, through FastAPI's test client: every endpoint, its caps and errors."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from modescope.cli.serve import check_binding, is_loopback, serve
from modescope.engine.decode import generate
from modescope.engine.samplers import SamplerSettings
from modescope.models.analytic import AnalyticBackend
from modescope.probes.distribution import distribution
from modescope.web.app import LazyModel, create_app
from modescope.web.schemas import Limits
from modescope.web.worker import Busy, Worker
from tests.web.conftest import BASE, TOKENS, TUNED, toy_models

PROMPT = {"text": "Q: is it a cat?\nA:"}


def events(response: Any) -> list[tuple[str, Any]]:
    """The server-sent events of a streamed answer, as (event, data) pairs."""
    found = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        found.append((lines["event"], json.loads(lines["data"])))
    return found


def error_of(response: Any, status: int, phrase: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert phrase in body["error"], body


# --- models, tokenize ----------------------------------------------------------------------------------------


def test_models_lists_served_models_preselects_two_and_documents_caps(client: TestClient) -> None:
    body = client.get("/api/models").json()
    assert [m["name"] for m in body["models"]] == [BASE, TUNED]
    assert all(m["preselected"] and m["loaded"] and m["chat"] is False for m in body["models"])
    assert body["limits"]["max_n"] == Limits().max_n and body["limits"]["queue_size"] == Limits().queue_size


def test_only_the_first_models_are_preselected_and_lazy_models_load_on_first_use() -> None:
    loads: list[str] = []

    def loader(name: str) -> AnalyticBackend:
        loads.append(name)
        return AnalyticBackend(TOKENS, name=name)

    app = create_app([*toy_models(), LazyModel("late", lambda: loader("late"))], preselect=1)
    with TestClient(app) as client:
        listed = client.get("/api/models").json()["models"]
        assert [m["preselected"] for m in listed] == [True, False, False]
        assert listed[2]["loaded"] is False and loads == []
        assert client.post("/api/tokenize", json={"model": "late", "text": "cat"}).status_code == 200
        assert loads == ["late"]
        assert client.get("/api/models").json()["models"][2]["loaded"] is True


def test_tokenize_prompt_and_text(client: TestClient, models: list[AnalyticBackend]) -> None:
    body = client.post("/api/tokenize", json={"model": BASE, "prompt": PROMPT}).json()
    assert [t["id"] for t in body["tokens"]] == models[0].prompt_ids(PROMPT["text"])
    assert "".join(t["text"] for t in body["tokens"]) == PROMPT["text"]
    body = client.post("/api/tokenize", json={"model": BASE, "text": " the cat"}).json()
    assert [t["text"] for t in body["tokens"]] == [" the", " cat"]


def test_tokenize_errors(client: TestClient) -> None:
    error_of(client.post("/api/tokenize", json={"model": BASE}), 422, "exactly one of prompt and text")
    error_of(client.post("/api/tokenize", json={"model": BASE, "text": "é"}), 400, "cannot encode")
    error_of(client.post("/api/tokenize", json={"model": "nope", "text": "a"}), 404, "not served")


# --- generate, regenerate, next ----------------------------------------------------------------------------


def test_generate_two_models_with_records(client: TestClient, models: list[AnalyticBackend]) -> None:
    request = {"models": [BASE, TUNED], "prompt": PROMPT, "n": 3, "max_tokens": 6, "top_k": 5, "seed": 7}
    body = client.post("/api/generate", json=request).json()
    assert [r["model"] for r in body["results"]] == [BASE, TUNED]
    for backend, result in zip(models, body["results"], strict=True):
        ids = backend.prompt_ids(PROMPT["text"])
        expected = generate(backend, ids, n=3, max_tokens=6, sampler=SamplerSettings(), top_k_alternatives=5, seed=7)
        assert [c["text"] for c in result["completions"]] == [c.text for c in expected]
        token = result["completions"][0]["tokens"][0]
        assert set(token) == {"id", "text", "logprob", "raw_logprob", "entropy_bits", "special", "top"}
        assert len(token["top"]) == 5 and token["top"][0]["logprob"] >= token["top"][-1]["logprob"]
        assert math.isclose(token["raw_logprob"], expected[0].tokens[0].raw_logprob)


def test_generate_greedy_with_sampler_settings(client: TestClient) -> None:
    request = {"models": [BASE], "prompt": PROMPT, "n": 2, "max_tokens": 5, "sampler": {"temperature": 0}}
    first, second = client.post("/api/generate", json=request).json()["results"][0]["completions"]
    assert first["text"] == second["text"]
    request["sampler"] = {"temperature": 1.0, "min_p": 0.2, "top_k": 3}
    assert client.post("/api/generate", json=request).status_code == 200


@pytest.mark.parametrize(
    ("change", "status", "phrase"),
    [
        ({"n": 17}, 422, "cap: max_n"),
        ({"n": 0}, 422, "n must be between 1"),
        ({"max_tokens": 257}, 422, "cap: max_tokens"),
        ({"top_k": 51}, 422, "cap: max_top_k"),
        ({"stop": ["."] * 9}, 422, "cap: max_stop"),
        ({"models": ["nope"]}, 404, "not served"),
        ({"models": [BASE, BASE]}, 422, "listed twice"),
        ({"models": []}, 422, "at least one model"),
        ({"models": [BASE] * 5}, 422, "cap of 4"),
        ({"prompt": {"text": ""}}, 422, "prompt is empty"),
        ({"prompt": {"text": "x" * 16_001}}, 422, "max_prompt_chars"),
        ({"prompt": {"text": "hi", "chat": True}}, 400, "no chat template"),
        ({"prompt": {"text": "hi", "prefill": "a"}}, 422, "need chat"),
        ({"sampler": {"temperature": -1}}, 422, "temperature"),
        ({"sampler": {"bogus": 1}}, 422, "bogus"),
        ({"n": "many"}, 422, "n:"),
        ({"extra": 1}, 422, "extra"),
    ],
)
def test_generate_errors(client: TestClient, change: dict[str, Any], status: int, phrase: str) -> None:
    request = {"models": [BASE], "prompt": PROMPT, "n": 1, "max_tokens": 4} | change
    error_of(client.post("/api/generate", json=request), status, phrase)


def test_malformed_json_is_a_json_error(client: TestClient) -> None:
    response = client.post("/api/generate", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "error" in response.json()


def test_regenerate_from_kept_tokens_and_an_edit(client: TestClient, models: list[AnalyticBackend]) -> None:
    base = models[0]
    kept = base.encode(" the cat", add_special_tokens=False)
    request = {"model": BASE, "prompt": PROMPT, "prefix_ids": kept, "edit": " sat on", "n": 1, "max_tokens": 5}
    request["sampler"] = {"temperature": 0}
    body = client.post("/api/regenerate", json=request).json()
    assert [t["text"] for t in body["edit_tokens"]] == [" sat", " on"]
    edit = [t["id"] for t in body["edit_tokens"]]
    (expected,) = generate(base, [*base.prompt_ids(PROMPT["text"]), *kept, *edit], max_tokens=5)
    assert body["completions"][0]["text"] == expected.text


def test_regenerate_errors(client: TestClient) -> None:
    request: dict[str, Any] = {"model": BASE, "prompt": PROMPT, "prefix_ids": [10_000]}
    error_of(client.post("/api/regenerate", json=request), 400, "not in the vocabulary")
    request["prefix_ids"] = [1] * 4097
    error_of(client.post("/api/regenerate", json=request), 422, "max_prefix_tokens")
    request = {"model": BASE, "prompt": PROMPT, "edit": "ü"}
    error_of(client.post("/api/regenerate", json=request), 400, "cannot encode")


def test_next_token_distribution_at_a_position(client: TestClient, models: list[AnalyticBackend]) -> None:
    base = models[0]
    prefix = base.encode(" the", add_special_tokens=False)
    body = client.post("/api/next", json={"model": BASE, "prompt": PROMPT, "prefix_ids": prefix, "top_k": 4}).json()
    logprobs = base.next_logprobs([[*base.prompt_ids(PROMPT["text"]), *prefix]])[0]
    best = logprobs.topk(4)
    assert [t["id"] for t in body["top"]] == best.indices.tolist()
    assert [t["logprob"] for t in body["top"]] == pytest.approx(best.values.tolist(), abs=1e-12)
    assert 0 < body["entropy_bits"] < math.log2(len(TOKENS) + 1)
    error_of(client.post("/api/next", json={"model": BASE, "prompt": PROMPT, "top_k": 0}), 422, "top_k")


# --- the streamed probes -----------------------------------------------------------------------------------


def test_distribution_streams_progress_then_the_exact_result(client: TestClient, models: list[AnalyticBackend]) -> None:
    request = {"models": [BASE, TUNED], "prompt": PROMPT, "integers": [0, 12]}
    response = client.post("/api/distribution", json=request)
    assert response.headers["content-type"].startswith("text/event-stream")
    found = events(response)
    assert found[0] == ("queued", {"ahead": 0})
    assert any(kind == "progress" for kind, _ in found)
    kind, result = found[-1]
    assert kind == "result"
    expected = distribution(models, PROMPT["text"], [str(i) for i in range(13)])
    for got, want in zip(result["results"], expected.results, strict=True):
        assert [o["mass"] for o in got["outcomes"]] == pytest.approx([o.mass for o in want.outcomes], rel=1e-9)
    assert result["comparisons"][0]["a"] == BASE


def test_distribution_choices_and_errors(client: TestClient) -> None:
    request: dict[str, Any] = {"models": [BASE], "prompt": PROMPT, "choices": [" cat", " dog"]}
    assert events(client.post("/api/distribution", json=request))[-1][0] == "result"
    request["integers"] = [0, 3]
    error_of(client.post("/api/distribution", json=request), 422, "exactly one of")
    error_of(
        client.post("/api/distribution", json={"models": [BASE], "prompt": PROMPT, "integers": [0, 1000]}),
        422,
        "max_candidates",
    )
    error_of(
        client.post("/api/distribution", json={"models": [BASE], "prompt": PROMPT, "choices": ["a", "a"]}),
        400,
        "listed twice",
    )


def test_multiverse_streams_the_tree_and_its_interactive_page(client: TestClient) -> None:
    request = {"models": [BASE, TUNED], "prompt": PROMPT, "depth": 2, "cutoff": 0.05, "max_nodes": 200}
    found = events(client.post("/api/multiverse", json=request))
    assert found[0][0] == "queued" and found[-1][0] == "result"
    assert any(kind == "progress" and data["expanded"] > 0 for kind, data in found)
    result = found[-1][1]
    assert result["tree"]["models"] == [BASE, TUNED] and result["size"] > 1
    assert 'id="multiverse-data"' in result["html"] and "<script>" in result["html"]


def test_multiverse_from_a_branch_prefix(client: TestClient, models: list[AnalyticBackend]) -> None:
    ids = models[0].encode(" the cat", add_special_tokens=False)
    request = {"models": [BASE], "prompt": PROMPT, "prefix": " the cat", "prefix_paths": [ids], "depth": 1}
    result = events(client.post("/api/multiverse", json=request))[-1][1]
    assert result["tree"]["prefix"] == " the cat"


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"max_nodes": 3001}, "cap: max_nodes"),
        ({"depth": 9}, "cap: max_depth"),
        ({"cutoff": 0}, "cutoff"),
        ({"prefix_paths": [[1], [2]]}, "one list of token ids per model"),
    ],
)
def test_multiverse_caps(client: TestClient, change: dict[str, Any], phrase: str) -> None:
    request = {"models": [BASE], "prompt": PROMPT} | change
    error_of(client.post("/api/multiverse", json=request), 422, phrase)


def test_attractor_streams_per_model_results(client: TestClient) -> None:
    request = {"models": [BASE, TUNED], "prompt": PROMPT, "max_tokens": 8, "swap_positions": 2, "alternatives": 2}
    found = events(client.post("/api/attractor", json=request))
    assert [d["model"] for k, d in found if k == "progress"] == [BASE, TUNED]
    result = found[-1][1]
    assert [r["model"] for r in result["results"]] == [BASE, TUNED]
    assert all(len(r["runs"]) == 2 and len(r["mainline_tokens"]) == 8 for r in result["results"])


def test_attractor_caps_and_a_failure_inside_the_stream(client: TestClient) -> None:
    request: dict[str, Any] = {"models": [BASE], "prompt": PROMPT, "swap_positions": 40, "alternatives": 3}
    error_of(client.post("/api/attractor", json=request), 422, "max_perturbations")
    request = {"models": [BASE], "prompt": PROMPT, "max_tokens": 1}
    error_of(client.post("/api/attractor", json=request), 422, "max_attractor_tokens")
    # an edit beyond the mainline is only known once the mainline exists: it arrives as an error event
    request = {"models": [BASE], "prompt": PROMPT, "max_tokens": 4, "edits": [{"start": 500, "end": 501, "text": "x"}]}
    kind, data = events(client.post("/api/attractor", json=request))[-1]
    assert kind == "error" and data["status"] == 400 and "outside the completion" in data["error"]


# --- limits, queue, token ----------------------------------------------------------------------------------


def test_body_over_the_cap_is_413(models: list[AnalyticBackend]) -> None:
    with TestClient(create_app(models, limits=Limits(max_body_bytes=2000))) as client:
        big = {"models": [BASE], "prompt": {"text": "x" * 3000}}
        error_of(client.post("/api/generate", json=big), 413, "max_body_bytes")

        def chunks() -> Any:  # no Content-Length: the body is counted as it arrives
            yield b'{"models": ["toy-base"], "prompt": {"text": "'
            yield b"x" * 3000
            yield b'"}}'

        error_of(client.post("/api/generate", content=chunks()), 413, "max_body_bytes")
        assert client.post("/api/generate", json={"models": [BASE], "prompt": PROMPT, "max_tokens": 2}).is_success


def test_full_queue_answers_503_json(models: list[AnalyticBackend]) -> None:
    app = create_app(models, limits=Limits(queue_size=1))
    release = threading.Event()
    with TestClient(app) as client:
        worker: Worker = app.state.worker
        running = worker.submit(lambda: release.wait(10))  # occupies the worker
        while not running.running():
            pass
        waiting = worker.submit(lambda: None)  # fills the queue
        try:
            response = client.post("/api/generate", json={"models": [BASE], "prompt": PROMPT})
            error_of(response, 503, "busy")
            assert response.headers["retry-after"] == "2"
            error_of(client.post("/api/multiverse", json={"models": [BASE], "prompt": PROMPT}), 503, "busy")
        finally:
            release.set()
        waiting.result(10)
        assert client.post("/api/generate", json={"models": [BASE], "prompt": PROMPT, "max_tokens": 2}).is_success


def test_worker_skips_cancelled_calls_and_reports_failures() -> None:
    worker = Worker(queue_size=2)
    gate = threading.Event()
    ran: list[str] = []
    first = worker.submit(lambda: gate.wait(10))
    while not first.running():
        pass
    skipped = worker.submit(lambda: ran.append("skipped"))
    assert skipped.cancel()
    failing = worker.submit(lambda: 1 / 0)
    with pytest.raises(Busy):
        worker.submit(lambda: None)
    gate.set()
    assert first.result(10) is True
    with pytest.raises(ZeroDivisionError):
        failing.result(10)
    assert ran == []
    worker.close()


def test_token_is_required_on_the_api_when_set(models: list[AnalyticBackend]) -> None:
    with TestClient(create_app(models, token="s3cret-token")) as client:
        error_of(client.get("/api/models"), 401, "token")
        error_of(client.get("/api/models", headers={"X-Modescope-Token": "wrong"}), 401, "token")
        assert client.get("/api/models", headers={"X-Modescope-Token": "s3cret-token"}).is_success
        assert client.get("/api/models", headers={"Authorization": "Bearer s3cret-token"}).is_success
        assert client.get("/").is_success  # the page itself holds no data; it reads the token from its URL


def test_page_static_files_and_openapi(client: TestClient) -> None:
    page = client.get("/")
    assert page.is_success and "modescope playground" in page.text
    assert client.get("/static/app.js").is_success and client.get("/static/style.css").is_success
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["models", "tokenize", "generate", "regenerate", "next", "distribution", "multiverse", "attractor"]:
        assert f"/api/{path}" in paths


# --- the serve command -------------------------------------------------------------------------------------


def test_binding_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    check_binding("127.0.0.1", 8765, None)
    check_binding("0.0.0.0", 8765, "long-enough")
    with pytest.raises(Exception, match="--token"):
        check_binding("0.0.0.0", 8765, None)


@pytest.fixture
def serve_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(serve)
    return app


def test_serve_refuses_an_exposed_address_without_a_token(serve_app: typer.Typer) -> None:
    result = CliRunner().invoke(serve_app, ["--host", "0.0.0.0", "-m", "toy"])
    assert result.exit_code == 2 and result.output.count("error:") == 1 and "--token" in result.output
    assert "Traceback" not in result.output


def test_serve_loads_models_and_prints_the_url(serve_app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: dict[str, Any] = {}
    monkeypatch.setattr("modescope.models.load", lambda name, **_: AnalyticBackend(TOKENS, name=name))
    monkeypatch.setattr("uvicorn.run", lambda app, **options: ran.update(app=app, **options))
    port = __import__("tests.web.conftest", fromlist=["free_port"]).free_port()
    result = CliRunner().invoke(serve_app, ["-m", "a", "-m", "b", "--port", str(port)])
    assert result.exit_code == 0, result.output
    assert f"http://127.0.0.1:{port}/" in result.output
    assert ran["host"] == "127.0.0.1" and ran["port"] == port
    with TestClient(ran["app"]) as client:
        listed = client.get("/api/models").json()["models"]
    assert [(m["name"], m["loaded"]) for m in listed] == [("a", True), ("b", True)]


def test_serve_reports_a_model_that_cannot_load(serve_app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    from modescope.errors import ModescopeError

    def fail(name: str, **_: Any) -> None:
        raise ModescopeError(f"unknown model '{name}'")

    monkeypatch.setattr("modescope.models.load", fail)
    result = CliRunner().invoke(serve_app, ["-m", "nope"])
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output and "Traceback" not in result.output
