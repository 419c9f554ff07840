"""Fuzzing the playground's API from its own OpenAPI document (schemathesis) on the toy models.

Every operation gets requests drawn from its request schema (valid ones, boundary values of every field,
and invalid ones), and every answer is checked: no server error, a status the operation documents, the
content type it documents, a body valid against its schema (JSON bodies, and each server-sent event of the
streamed answers), declared headers present, invalid input refused with a 4xx, and two contracts of ours
(a stream opens with `queued` and ends with one `result` or `error`; every error is one line). The stateful
test follows the document's OpenAPI links as a client would: tokenize a prompt, generate from it, branch from
a generated token (regenerate, next).

The app serves small caps so that valid requests stay cheap; hypothesis runs derandomized (the same examples
on every run) without a database. The totals (operations, requests, checks, links followed) are printed at
the end of the module.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from modescope.models.analytic import AnalyticBackend
from modescope.models.base import ChatPrompt
from modescope.web.app import create_app
from modescope.web.schemas import Limits
from tests.web.conftest import TOKENS

# Small caps keep every valid request cheap on the toy models (the document states them as field bounds);
# each is at least the default of the fields it bounds, so a request that leaves a field out stays valid.
LIMITS = Limits(
    max_prompt_chars=200,
    max_n=3,
    max_tokens=48,
    max_top_k=20,
    max_prefix_tokens=32,
    max_stop=3,
    max_candidates=12,
    max_depth=4,
    max_nodes=500,
    max_attractor_tokens=32,
    max_perturbations=6,
)
EXAMPLES_PER_OPERATION = 25
SCENARIOS, STEPS_PER_SCENARIO = 80, 6

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"deterministic": True, "database": "none", "max-examples": EXAMPLES_PER_OPERATION},
        # read every stream to its end (by default the client stops after 20 events)
        "max-stream-events": 100_000,
        # a valid request can still be refused: a text the toy tokenizer cannot encode (400), a chat prompt for
        # a model without a chat template (400), a branch of another length than the models (422)
        "checks": {"positive_data_acceptance": {"enabled": False}},
        # scenarios follow links with valid requests (invalid ones are the stateless test's business) and
        # ASCII texts, which every toy model here can encode
        "phases": {"stateful": {"generation": {"mode": "positive", "codec": "ascii"}}},
    }
)


class ChatToy(AnalyticBackend):
    """A toy model with a chat template, so chat prompts (system message, prefill) reach the probes."""

    @property
    def has_chat_template(self) -> bool:
        return True

    def render_chat(self, prompt: ChatPrompt) -> str:
        system = f"{prompt.system}\n" if prompt.system else ""
        return f"{system}Q: {prompt.user}\nA:{prompt.prefill}"


# Every ASCII character is a token (the playground tests' toy vocabulary lacks control characters), so the
# scenarios' ASCII texts always encode; other text still meets a tokenizer that cannot encode it.
ASCII = [*TOKENS, *(chr(c) for c in range(128) if chr(c) not in TOKENS)]
MODELS = [
    ChatToy(ASCII, name="toy-base", seed=1, sharpness=2.0),
    ChatToy(ASCII, name="toy-tuned", seed=2, sharpness=6.0),
    AnalyticBackend(ASCII, name="toy-plain", seed=3, sharpness=4.0),  # no chat template: chat prompts get 400
]
APP = create_app(MODELS, limits=LIMITS)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)

TALLY: Counter[str] = Counter()


def _events(text: str) -> list[tuple[str, Any]]:
    """A server-sent event stream as (event, data) pairs; data parsed as JSON."""
    found = []
    for block in text.split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            found.append((fields["event"], json.loads(fields["data"])))
    return found


def _errors(response: schemathesis.Response) -> list[str]:
    """Every error message in an answer: the JSON error body, or a stream's `error` event."""
    content_type = response.headers.get("content-type", [""])[0]
    if content_type.startswith("text/event-stream"):
        return [data["error"] for kind, data in _events(response.text) if kind == "error"]
    if response.status_code >= 400 and content_type.startswith("application/json"):
        return [response.json()["error"]]
    return []


def stream_opens_queued_and_ends_once(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A stream is `queued`, then `progress` events only, then exactly one `result` or `error`."""
    if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return None
    kinds = [kind for kind, _ in _events(response.text)]
    assert kinds[:1] == ["queued"], f"the stream does not open with a queued event: {kinds}"
    assert kinds[-1] in ("result", "error"), f"the stream does not end with a result or an error: {kinds}"
    assert set(kinds[1:-1]) <= {"progress"}, f"the stream has events other than progress in between: {kinds}"
    return True


def errors_are_one_line(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Every error says what to change in one non-empty line (the project's convention for bad input)."""
    messages = _errors(response)
    for message in messages:
        assert message.strip() and "\n" not in message, f"the error is not one line: {message!r}"
    return True if messages else None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
    stream_opens_queued_and_ends_once,
    errors_are_one_line,
]


@schema.hook
def after_validate(
    context: schemathesis.HookContext,
    case: schemathesis.Case,
    response: schemathesis.Response,
    results: list[schemathesis.CheckResult],
) -> None:
    """Count what ran, for the totals printed at the end and the coverage test."""
    label = case.operation.label
    TALLY["requests"] += 1
    TALLY[f"requests {label}"] += 1
    TALLY["check runs"] += len(results)
    TALLY[f"status {response.status_code // 100}xx {label}"] += 1
    if case.meta is not None:
        TALLY[f"phase {case.meta.phase.name.value}"] += 1
        TALLY[f"mode {case.meta.generation.mode.value}"] += 1


def _totals() -> list[str]:
    operations = sorted({key.split(" ", 1)[1] for key in TALLY if key.startswith("requests ")})
    phases = ", ".join(f"{key.split()[1]} {n}" for key, n in sorted(TALLY.items()) if key.startswith("phase "))
    modes = ", ".join(f"{key.split()[1]} {n}" for key, n in sorted(TALLY.items()) if key.startswith("mode "))
    links = sorted(key.split(" ", 1)[1] for key in TALLY if key.startswith("link "))
    return [
        f"API fuzzing: {len(operations)} operations, {TALLY['requests']} generated requests ({phases}; {modes}), "
        f"{TALLY['check runs']} check runs of {len(CHECKS)} checks ({', '.join(c.__name__ for c in CHECKS)})",
        f"  stateful: {TALLY['scenarios']} scenarios, {TALLY['steps']} steps, "
        f"{TALLY['chains']} tokenize -> generate -> regenerate chains answered 200; links followed: "
        + (", ".join(f"{link} x{TALLY['link ' + link]}" for link in links) or "none"),
    ]


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the totals once the module ran (shown even when pytest captures output)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if not TALLY["requests"] or reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in _totals():
            reporter.write_line(line)


# --- the document ----------------------------------------------------------------------------------------------


def test_the_document_states_errors_streams_links_and_this_apps_bounds() -> None:
    """What the fuzzing relies on is in /openapi.json: every error answer with its JSON body, the event streams'
    events, the links, the served model names and the caps as bounds."""
    document = schema.raw_schema
    error = {"$ref": "#/components/schemas/ErrorOut"}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            answers = operation["responses"]
            assert answers["401"]["content"]["application/json"]["schema"] == error, path
            assert path == "/api/models" or answers["422"]["content"]["application/json"]["schema"] == error, path
    for name in ("distribution", "multiverse", "attractor", "generate/stream", "regenerate/stream"):
        stream = document["paths"][f"/api/{name}"]["post"]["responses"]["200"]["content"]
        assert list(stream) == ["text/event-stream"]
        events = [e["properties"]["event"]["const"] for e in stream["text/event-stream"]["itemSchema"]["oneOf"]]
        assert events == ["queued", "progress", "result", "error"]
    links = {
        (path, name, link["operationId"])
        for path, operations in document["paths"].items()
        for operation in operations.values()
        for name, link in operation["responses"]["200"].get("links", {}).items()
    }
    assert ("/api/tokenize", "GenerateFromPrompt", "generate") in links
    assert ("/api/generate", "BranchAfterFirstToken", "regenerate") in links
    generate = document["components"]["schemas"]["GenerateIn"]["properties"]
    assert generate["models"]["items"]["enum"] == [m.name for m in MODELS]
    assert (generate["n"]["minimum"], generate["n"]["maximum"]) == (1, LIMITS.max_n)
    next_ids = document["components"]["schemas"]["NextIn"]["properties"]["prefix_ids"]["items"]
    assert next_ids["maximum"] == len(ASCII)  # ids 0 (eos) .. len(ASCII)


# --- every operation, on its own -----------------------------------------------------------------------------


@schema.parametrize()
def test_every_operation_answers_by_its_documented_contract(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)


def test_the_fuzzing_reached_every_operation_and_the_models() -> None:
    """Not only refusals: every operation answered generated requests with a 2xx, so the checks saw answers
    from the models, not only errors."""
    if not TALLY["requests"]:
        pytest.skip("counts what the fuzz test of every operation did; run it in the same session")
    operations = [result.ok().label for result in schema.get_all_operations()]
    assert len(operations) == 10
    for label in operations:
        assert TALLY[f"requests {label}"] >= 10, (label, TALLY[f"requests {label}"])
        assert TALLY[f"status 2xx {label}"] >= 1, f"no generated request for {label} reached the models"


# --- stateful: following the links ----------------------------------------------------------------------------

CHAIN = ("POST /api/tokenize", "POST /api/generate", "POST /api/regenerate")


class Workflows(schema.as_state_machine()):  # type: ignore[misc]
    """Scenarios that follow the OpenAPI links; every answer gets the same checks as above."""

    def setup(self) -> None:
        TALLY["scenarios"] += 1
        self.paths: dict[str, tuple[str, ...]] = {}  # case id -> the successful calls that led to it

    def step(self, input: Any) -> Any:
        output = super().step(input)
        TALLY["steps"] += 1
        before: tuple[str, ...] = ()
        if input.transition is not None and input.is_applied:
            TALLY[f"link {input.transition.id}"] += 1
            before = self.paths.get(input.transition.parent_id, ())
        if output.response.status_code == 200:
            path = (*before, input.case.operation.label)
            self.paths[input.case.id] = path
            if path[-3:] == CHAIN:
                TALLY["chains"] += 1
        return output

    def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
        case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs or None, recorder=self.recorder)


def test_workflows_following_the_links() -> None:
    """tokenize -> generate -> regenerate (and next) as the links say; no answer breaks its contract, every
    link is followed, and some scenario goes the whole way with 200s."""
    chains_before = TALLY["chains"]
    settings = hypothesis.settings(
        max_examples=SCENARIOS,
        stateful_step_count=STEPS_PER_SCENARIO,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    Workflows.run(settings=settings)
    declared = {
        f"{result.ok().label} -> [200] {name} -> POST {path}"
        for result in schema.get_all_operations()
        for name, link in result.ok().definition.raw["responses"]["200"].get("links", {}).items()
        for path in [f"/api/{link['operationId']}"]
    }
    followed = {key.split(" ", 1)[1] for key in TALLY if key.startswith("link ")}
    assert declared and declared <= followed, declared - followed
    assert TALLY["chains"] > chains_before, "no scenario went tokenize -> generate -> regenerate with 200s"
