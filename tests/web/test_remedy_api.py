"""Remedies for mode collapse as options of /api/generate and /api/regenerate, on toy models: the strategy
rewrites the prompt sent, a guide mixes another served model in (exactly `guided(...)` with the same seed),
verbalized completions carry their parsed responses, and every bad value answers a 4xx JSON error."""

from __future__ import annotations

import string
from typing import Any

import pytest
from fastapi.testclient import TestClient

import modescope
from modescope.engine.decode import generate
from modescope.engine.samplers import SamplerSettings
from modescope.models.analytic import AnalyticBackend, TransitionBackend
from modescope.models.base import ChatPrompt
from modescope.remedies.guided import guided
from modescope.remedies.strategies import FEW_SHOT_STOP, STRATEGIES, render_strategy
from modescope.remedies.verbalized import parse_verbalized
from modescope.web.app import create_app
from tests.web.conftest import BASE, TOKENS, TUNED
from tests.web.test_api import PROMPT, error_of

# --- scripted models: after "Responses:" they write a verbalized list, so parsing has something to read ------

RESPONSES = "Responses:"
FIRST = "\n1. (probability 0.60) blue"
RED = "<img src=x onerror=alert(1)>red"  # markup in model text, which the page must show as text
SECOND = f"\n2. (probability 0.40) {RED}"
OTHER = "\n2. (probability 0.40) green"
SCRIBE, SCRIBE_BASE = "scribe", "scribe-base"


def scribes() -> list[TransitionBackend]:
    """Two Markov models over one vocabulary: both write FIRST after "Responses:", then the tuned one SECOND
    and its base OTHER, then end. So the base as guide with alpha 1 turns "red" into "green"."""
    tokens = [*string.printable[:95], "\n", RESPONSES, FIRST, SECOND, OTHER]
    ends = {SECOND: {"<eos>": 1.0}, OTHER: {"<eos>": 1.0}}
    return [
        TransitionBackend(tokens, {RESPONSES: {FIRST: 1.0}, FIRST: {SECOND: 1.0}, **ends}, name=SCRIBE),
        TransitionBackend(tokens, {RESPONSES: {FIRST: 1.0}, FIRST: {OTHER: 1.0}, **ends}, name=SCRIBE_BASE),
    ]


class ChatToy(AnalyticBackend):
    """A toy model with a chat template: `<s>SYSTEM</s><u>USER</u><a>`."""

    @property
    def has_chat_template(self) -> bool:
        return True

    def render_chat(self, prompt: ChatPrompt) -> str:
        return f"<s>{prompt.system or ''}</s><u>{prompt.user}</u><a>{prompt.prefill}"


def ask(client: TestClient, remedy: dict[str, Any] | None, **change: Any) -> Any:
    request = {"models": [TUNED], "prompt": PROMPT, "n": 3, "max_tokens": 6, "seed": 5} | change
    if remedy is not None:
        request["remedy"] = remedy
    response = client.post("/api/generate", json=request)
    assert response.status_code == 200, response.text
    return response.json()


def texts(result: dict[str, Any]) -> list[str]:
    return [c["text"] for c in result["completions"]]


# --- backward compatibility ------------------------------------------------------------------------------------


def test_without_a_remedy_the_answer_is_as_before_and_models_lists_the_remedies(client: TestClient) -> None:
    body = ask(client, None)
    assert set(body) == {"results"} and set(body["results"][0]) == {"model", "completions"}
    assert "verbalized" not in body["results"][0]["completions"][0]
    remedies = client.get("/api/models").json()["remedies"]
    assert remedies == {
        "strategies": list(STRATEGIES),
        "mixes": ["geometric", "arithmetic"],
        "k": {"min": 2, "max": 20, "default": 5},
    }
    # the direct strategy without a guide samples exactly what no remedy samples
    direct = ask(client, {"strategy": "direct"})
    assert texts(direct["results"][0]) == texts(body["results"][0])
    assert direct["remedy"] == {
        "strategy": "direct",
        "k": None,
        "guide": None,
        "guide_alpha": None,
        "guide_mix": None,
        "stop": [],
    }


# --- strategies ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_strategy_rewrites_the_prompt_sent(
    client: TestClient, models: list[AnalyticBackend], strategy: str
) -> None:
    body = ask(client, {"strategy": strategy, "k": 3}, models=[BASE, TUNED])
    sent = render_strategy(strategy, PROMPT["text"], 3)
    stop = [FEW_SHOT_STOP] if strategy == "few-shot" else []
    assert body["remedy"]["strategy"] == strategy and body["remedy"]["stop"] == stop
    assert body["remedy"]["k"] == (3 if strategy == "verbalized" else None)
    for backend, result in zip(models, body["results"], strict=True):
        assert result["sent_prompt"] == sent and result["sampled_from"] == backend.name
        expected = generate(
            backend, backend.prompt_ids(sent), n=3, max_tokens=6, sampler=SamplerSettings(), seed=5, stop=stop
        )
        assert texts(result) == [c.text for c in expected]


def test_a_chat_prompt_has_its_user_message_rewritten() -> None:
    chat = ChatToy(TOKENS, name="chat-toy", seed=3)
    with TestClient(create_app([chat])) as client:
        prompt = {"text": "Name a colour.", "chat": True, "system": "Be brief."}
        result = ask(client, {"strategy": "vary"}, models=["chat-toy"], prompt=prompt)["results"][0]
    rewritten = ChatPrompt(render_strategy("vary", "Name a colour."), "Be brief.")
    assert result["sent_prompt"] == chat.render_chat(rewritten)
    assert result["sent_prompt"].startswith("<s>Be brief.</s><u>Be original:")
    expected = generate(chat, chat.prompt_ids(rewritten), n=3, max_tokens=6, sampler=SamplerSettings(), seed=5)
    assert texts(result) == [c.text for c in expected]


# --- guided sampling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "mix"), [(0.3, "geometric"), (0.7, "arithmetic"), (1.0, "geometric")])
def test_guided_sampling_is_sampling_the_mixture(
    client: TestClient, models: list[AnalyticBackend], alpha: float, mix: str
) -> None:
    base, tuned = models
    result = ask(client, {"guide": BASE, "guide_alpha": alpha, "guide_mix": mix})["results"][0]
    mixture = guided(tuned, base, alpha, mix)
    expected = generate(
        mixture, mixture.prompt_ids(PROMPT["text"]), n=3, max_tokens=6, sampler=SamplerSettings(), seed=5
    )
    assert texts(result) == [c.text for c in expected]
    assert [t["raw_logprob"] for t in result["completions"][0]["tokens"]] == pytest.approx(
        [t.raw_logprob for t in expected[0].tokens], abs=1e-12
    )
    assert result["model"] == TUNED and result["sampled_from"] == mixture.name
    unguided = ask(client, None)["results"][0]
    assert texts(result) != texts(unguided)


def test_a_model_guided_by_itself_is_that_model(client: TestClient) -> None:
    body = ask(client, {"guide": TUNED, "guide_alpha": 0.5}, models=[BASE, TUNED])
    assert body["remedy"]["guide"] == TUNED and body["remedy"]["guide_alpha"] == 0.5
    plain = ask(client, None, models=[BASE, TUNED])
    assert texts(body["results"][1]) == texts(plain["results"][1])  # tuned guided by itself
    assert texts(body["results"][0]) != texts(plain["results"][0])  # base guided by tuned


def test_regenerate_with_a_remedy_branches_the_remedied_run(client: TestClient, models: list[AnalyticBackend]) -> None:
    base, tuned = models
    kept = tuned.encode(" the cat", add_special_tokens=False)
    remedy = {"strategy": "vary", "guide": BASE, "guide_alpha": 0.4}
    request = {"model": TUNED, "prompt": PROMPT, "prefix_ids": kept, "edit": " sat", "n": 2, "max_tokens": 5}
    body = client.post("/api/regenerate", json=request | {"remedy": remedy}).json()
    sent = render_strategy("vary", PROMPT["text"])
    mixture = guided(tuned, base, 0.4)
    edit = [t["id"] for t in body["edit_tokens"]]
    ids = [*mixture.prompt_ids(sent), *kept, *edit]
    expected = generate(mixture, ids, n=2, max_tokens=5, sampler=SamplerSettings(), seed=0)
    assert texts(body) == [c.text for c in expected]
    assert body["sent_prompt"] == sent and body["remedy"]["guide"] == BASE
    plain = client.post("/api/regenerate", json=request).json()
    assert set(plain) == {"model", "edit_tokens", "completions"}


# --- verbalized sampling -----------------------------------------------------------------------------------------


@pytest.fixture
def scribe_client() -> Any:
    with TestClient(create_app(scribes())) as client:
        yield client


def test_verbalized_completions_carry_their_parsed_responses(scribe_client: TestClient) -> None:
    remedy = {"strategy": "verbalized", "k": 2}
    body = ask(scribe_client, remedy, models=[SCRIBE, SCRIBE_BASE], prompt={"text": "Name a colour."})
    for result, last in zip(body["results"], [RED, "green"], strict=True):
        assert result["sent_prompt"].endswith("Prompt: Name a colour.\nResponses:")
        for completion in result["completions"]:
            assert completion["verbalized"] == {
                "responses": [
                    {"text": "blue", "stated": 0.6, "duplicate": False},
                    {"text": last, "stated": 0.4, "duplicate": False},
                ],
                "unparsed": 0,
                "complete": True,
                "problem": None,
            }
    # k counts: three asked for, two given
    three = ask(scribe_client, remedy | {"k": 3}, models=[SCRIBE], prompt={"text": "Name a colour."})
    verbalized = three["results"][0]["completions"][0]["verbalized"]
    assert verbalized["complete"] is False and "2 responses where 3" in verbalized["problem"]


def test_verbalized_on_a_toy_model_reports_what_it_could_not_read(client: TestClient) -> None:
    body = ask(client, {"strategy": "verbalized", "k": 4}, max_tokens=12)
    for completion in body["results"][0]["completions"]:
        parse = parse_verbalized(completion["text"], 4, truncated=completion["finish_reason"] == "length")
        assert completion["verbalized"]["unparsed"] == len(parse.unparsed)
        assert [r["text"] for r in completion["verbalized"]["responses"]] == [r.text for r in parse.responses]


def test_a_verbalized_branch_is_read_with_its_kept_tokens(scribe_client: TestClient) -> None:
    scribe = scribes()[0]
    kept = scribe.encode(FIRST, add_special_tokens=False)
    request = {"model": SCRIBE, "prompt": {"text": "Name a colour."}, "prefix_ids": kept, "max_tokens": 4}
    body = scribe_client.post("/api/regenerate", json=request | {"remedy": {"strategy": "verbalized", "k": 2}}).json()
    completion = body["completions"][0]
    assert completion["text"] == SECOND
    assert [r["text"] for r in completion["verbalized"]["responses"]] == ["blue", RED]


def test_a_guide_changes_what_is_verbalized(scribe_client: TestClient) -> None:
    remedy = {"strategy": "verbalized", "k": 2, "guide": SCRIBE_BASE, "guide_alpha": 1.0}
    result = ask(scribe_client, remedy, models=[SCRIBE], prompt={"text": "Name a colour."})["results"][0]
    assert result["sampled_from"] == f"{SCRIBE}~geometric1~{SCRIBE_BASE}"
    assert {c["text"] for c in result["completions"]} == {FIRST + OTHER}


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remedy", "status", "phrase"),
    [
        ({"strategy": "shout"}, 422, "unknown remedy.strategy 'shout'; use one of direct, vary, few-shot, verbalized"),
        ({"strategy": "verbalized", "k": 1}, 422, "remedy.k (responses verbalized asks for) must be from 2 to 20"),
        ({"k": 21}, 422, "must be from 2 to 20 (got 21)"),
        ({"guide": BASE, "guide_alpha": 1.5}, 422, "remedy.guide_alpha must be from 0"),
        ({"guide": BASE, "guide_alpha": -0.1}, 422, "(got -0.1)"),
        (
            {"guide": BASE, "guide_mix": "harmonic"},
            422,
            "unknown remedy.guide_mix 'harmonic'; use geometric or arithmetic",
        ),
        ({"guide": "nope"}, 404, "remedy.guide 'nope' is not served here; guide with one of: toy-base, toy-tuned"),
        ({"strength": 2}, 422, "remedy.strength"),
        ({"guide_alpha": "half"}, 422, "remedy.guide_alpha"),
    ],
)
def test_bad_remedies_are_4xx_json_errors(client: TestClient, remedy: dict[str, Any], status: int, phrase: str) -> None:
    request = {"models": [TUNED], "prompt": PROMPT, "max_tokens": 4, "remedy": remedy}
    error_of(client.post("/api/generate", json=request), status, phrase)
    branch = {"model": TUNED, "prompt": PROMPT, "max_tokens": 4, "remedy": remedy}
    error_of(client.post("/api/regenerate", json=branch), status, phrase)


def test_a_guide_with_another_tokenizer_is_refused(models: list[AnalyticBackend]) -> None:
    other = modescope.load("toy:base")
    with TestClient(create_app([*models, other])) as client:
        request = {"models": [TUNED], "prompt": PROMPT, "max_tokens": 4, "remedy": {"guide": "toy:base"}}
        error_of(client.post("/api/generate", json=request), 400, "base-guided decoding needs the same tokenizer")
        # the app still serves afterwards
        assert client.post("/api/generate", json=request | {"remedy": {"guide": BASE}}).status_code == 200
