"""Prompt strategies, the Verbalized Sampling parser, and stated against real probabilities on a scripted toy model."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from modescope.cli.verbalized import verbalized_command
from modescope.engine.decode import generate
from modescope.errors import ModescopeError
from modescope.models.analytic import TOY_TOKENS, TransitionBackend
from modescope.models.base import Backend, Capabilities
from modescope.remedies.stated import _path_logprobs, spearman_with_reason, stated_vs_real
from modescope.remedies.strategies import (
    FEW_SHOT_STOP,
    STRATEGIES,
    VARY_INSTRUCTION,
    check_strategy,
    render_strategy,
    stop_strings,
)
from modescope.remedies.verbalized import (
    VerbalizedParse,
    VerbalizedResponse,
    normalized,
    parse_rate,
    parse_verbalized,
    response_key,
    verbalized_prompt,
)
from tests.unit.test_cli import assert_user_error

R = VerbalizedResponse

# --- prompt strategies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["Name a colour.", "The storm tore the roof off the farmhouse, and"])
def test_every_strategy_keeps_the_prompt_and_ends_where_the_model_answers(prompt: str) -> None:
    assert render_strategy("direct", prompt) == prompt
    assert render_strategy("vary", prompt) == f"{VARY_INSTRUCTION}\n\n{prompt}"
    few = render_strategy("few-shot", prompt)
    assert few.endswith(f"Prompt: {prompt}\nResponse:") and few.count("Response:") == 4
    vs = render_strategy("verbalized", prompt, k=7)
    assert vs == verbalized_prompt(prompt, 7)
    assert "Give 7 different responses" in vs and f"Prompt: {prompt}\n" in vs and vs.endswith("Responses:")
    assert "1. (probability 0.30) " in vs  # the one example line of the format


def test_the_example_line_of_the_prompt_is_read_by_the_parser() -> None:
    line = next(x for x in verbalized_prompt("x", 2).splitlines() if x.startswith("1."))
    assert parse_verbalized(line, 2).responses == [R("first response", 0.3)]


def test_unknown_strategy_and_bad_k_are_refused() -> None:
    assert STRATEGIES == ("direct", "vary", "few-shot", "verbalized")
    assert check_strategy("vary") == "vary"
    with pytest.raises(
        ModescopeError, match="unknown prompt strategy 'x'; use one of direct, vary, few-shot, verbalized"
    ):
        render_strategy("x", "p")
    with pytest.raises(ModescopeError, match="from 2 to 20"):
        render_strategy("verbalized", "p", k=1)
    assert stop_strings("few-shot") == (FEW_SHOT_STOP,) and stop_strings("vary") == ()


# --- the parser: well-formed and variant outputs ----------------------------------------------------------------


def responses(text: str, k: int = 3, truncated: bool = False) -> list[tuple[str, float]]:
    return [(r.text, r.stated) for r in parse_verbalized(text, k, truncated).responses]


def test_the_prompt_format_parses_completely() -> None:
    text = "1. (probability 0.30) Blue\n2. (probability 0.25) Red\n3. (probability 0.20) Forest green"
    parse = parse_verbalized(text, 3)
    assert parse == VerbalizedParse(
        [R("Blue", 0.3), R("Red", 0.25), R("Forest green", 0.2)], [], complete=True, problem=None
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1. Blue (0.3)\n2) Red - 30%\n- Green, p=0.2", [("Blue", 0.3), ("Red", 0.3), ("Green", 0.2)]),
        ("1. Blue [probability: 0.5]\n2. Red [0.25]\n3. 0.25 Green", [("Blue", 0.5), ("Red", 0.25), ("Green", 0.25)]),
        (
            "(1) Blue | prob=0.4\n#2 Red | Probability = 35 %\n* Green: .25",
            [("Blue", 0.4), ("Red", 0.35), ("Green", 0.25)],
        ),
        (
            "Response 1: \"Blue\" (probability: 0.3)\nResponse 2: **Red** [0.2]\n• 'Green' 10%",
            [("Blue", 0.3), ("Red", 0.2), ("Green", 0.1)],
        ),
        (
            "1. Text: Blue, Probability: 0.3\n2. Text: Red, Probability: 0.2\n3. Text: Green, Probability: 0.1",
            [("Blue", 0.3), ("Red", 0.2), ("Green", 0.1)],
        ),
        (
            "Blue (probability 0.6)\nRed (probability 0.3)\nGreen (probability 0.1)",
            [("Blue", 0.6), ("Red", 0.3), ("Green", 0.1)],
        ),
        (
            "1. (probability 0.3) Blue 2. (probability 0.2) Red 3. (probability 0.1) Green",
            [("Blue", 0.3), ("Red", 0.2), ("Green", 0.1)],
        ),
        (
            "   1.   (probability 0.3)    Blue   \r\n\r\n2.\t(probability 0.2)\tRed\n3. (probability 0.1) Green  ",
            [("Blue", 0.3), ("Red", 0.2), ("Green", 0.1)],
        ),
        (
            "1. Blue\n   probability: 0.3\n2. (probability 0.2)\n   Red\n3. Green 0.1.",
            [("Blue", 0.3), ("Red", 0.2), ("Green", 0.1)],
        ),
    ],
)
def test_variants_parse(text: str, expected: list[tuple[str, float]]) -> None:
    parse = parse_verbalized(text, 3)
    assert [(r.text, r.stated) for r in parse.responses] == expected
    assert parse.complete and parse.problem is None and parse.unparsed == []


def test_text_around_the_list_is_not_an_item() -> None:
    text = (
        "Sure! Here are 3 colours with their probabilities:\n\n"
        "1. (probability 0.5) Blue\n2. (probability 0.3) Red\n3. (probability 0.2) Green\n\n"
        "80% of people would pick one of these.\nI hope this helps! Let me know if you need 100% more."
    )
    parse = parse_verbalized(text, 3)
    assert parse.complete and [r.text for r in parse.responses] == ["Blue", "Red", "Green"]


def test_digits_and_percentages_inside_the_text_stay_text() -> None:
    text = (
        "1. (probability 0.2) A 50% chance of rain\n"
        "2. (0.3) Route 66 (1926)\n"
        "3. The 3 musketeers, 1844 - 0.1\n"
        "4. (probability 0.15) Version 2.0.1 ships"
    )
    assert responses(text, 4) == [
        ("A 50% chance of rain", 0.2),
        ("Route 66 (1926)", 0.3),
        ("The 3 musketeers, 1844", 0.1),
        ("Version 2.0.1 ships", 0.15),
    ]


def test_a_number_in_the_text_after_a_marker_does_not_split_the_item() -> None:
    parse = parse_verbalized("1. (probability 0.3) We took the 2. place", 2)
    assert [(r.text, r.stated) for r in parse.responses] == [("We took the 2. place", 0.3)]
    assert parse.problem == "1 responses where 2 were asked for"


def test_the_papers_tagged_form() -> None:
    text = (
        "<response><text>Blue</text><probability>0.4</probability></response>\n"
        "<response>\n  <text> Red </text>\n  <probability>35%</probability>\n</response>"
        "<response><response><text>The <text>odds</text> 0.9</text><probability>0.25</probability></response>"  # to the first </text>
    )
    assert responses(text) == [("Blue", 0.4), ("Red", 0.35), ("The odds", 0.25)]


def test_tagged_items_that_cannot_be_read_are_counted() -> None:
    text = (
        "<response><text>Blue</text><probability>high</probability></response>"
        "<response><text>Red</text></response>"
        "<response><text>Green</text><probability>2</probability></response>"
        "<response><text></text><probability>0.1</probability></response>"
        "<response><text>Pink</text><probability>0.1"
    )
    parse = parse_verbalized(text, 5)
    assert parse.responses == []
    assert parse.reasons == [
        "its probability is not a number",
        "no probability",
        "probability 2 is not a number in [0, 1]",
        "empty response text",
        "its probability is not closed (it may be cut short)",
    ]
    assert len(parse.unparsed) == 5 and not parse.complete


# --- malformed and adversarial outputs -------------------------------------------------------------------------


def test_bad_probabilities_are_unparsed_with_their_reason() -> None:
    text = (
        "1. (probability 1e308) Blue\n"
        "2. (probability 1.5) Red\n"
        "3. (probability 30) Green\n"
        "4. (probability: high) Pink\n"
        "5. Purple\n"
        "6. (probability -0.2) Grey\n"
        "7. (probability 0.2)\n"
        "8. (probability 0.1) Teal"
    )
    parse = parse_verbalized(text, 8)
    assert parse.responses == [R("Teal", 0.1)]
    assert parse.unparsed == [
        "(probability 1e308) Blue",
        "(probability 1.5) Red",
        "(probability 30) Green",
        "(probability: high) Pink",
        "Purple",
        "(probability -0.2) Grey",
        "(probability 0.2)",
    ]
    assert parse.reasons == [
        "probability 1e308 is not a number in [0, 1]",
        "probability 1.5 is not a number in [0, 1]",
        "probability 30 is not a number in [0, 1]",
        "its probability is not a number",
        "no probability",
        "probability -0.2 is not a number in [0, 1]",
        "empty response text",
    ]
    assert parse.problem == "7 item(s) could not be read (first: probability 1e308 is not a number in [0, 1])"


def test_a_huge_exponent_is_not_a_float() -> None:
    parse = parse_verbalized("1. (probability 1e999) Blue\n2. (probability 0.5) Red", 2)
    assert parse.reasons == ["probability 1e999 is not a number in [0, 1]"]
    assert parse.responses == [R("Red", 0.5)]


def test_a_truncated_last_item_is_unparsed_only_when_the_limit_cut_it() -> None:
    text = "1. (probability 0.3) Blue\n2. (probability 0.2) Re"
    assert responses(text, 2) == [("Blue", 0.3), ("Re", 0.2)]
    cut = parse_verbalized(text, 2, truncated=True)
    assert cut.responses == [R("Blue", 0.3)] and cut.unparsed == ["(probability 0.2) Re"]
    assert cut.reasons == ["cut off by the token limit"] and not cut.complete
    after = parse_verbalized(text + "d\n\nThat is all I can think of, and", 2, truncated=True)
    assert after.complete  # text after the last item was cut, not the item
    assert parse_verbalized("1. (probability 0.3) Blue\n2. (proba", 2).reasons == ["no probability"]


def test_duplicates_are_kept_flagged_and_make_the_output_incomplete() -> None:
    parse = parse_verbalized("1. (probability 0.5) Blue\n2. (probability 0.3) blue.\n3. (probability 0.2) Red", 3)
    assert parse.responses == [R("Blue", 0.5), R("blue.", 0.3, duplicate=True), R("Red", 0.2)]
    assert parse.duplicates == 1 and not parse.complete
    assert parse.problem == "response 'blue.' is given more than once"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the output is empty"),
        ("   \n\n\t", "the output is empty"),
        ("Blue is the most common colour, then red.", "no response with a probability was found"),
        ("1. (probability 0.5) Blue\n2. (probability 0.5) Red", "2 responses where 3 were asked for"),
    ],
)
def test_incomplete_outputs_say_why(text: str, problem: str) -> None:
    parse = parse_verbalized(text, 3)
    assert not parse.complete and parse.problem == problem


def test_unicode_and_no_newline() -> None:
    text = "1. (probability 0.4) Bleu céleste 🌌 2. (probability 0.35) 赤 3. (p=0.25) «Grün»"
    assert responses(text) == [("Bleu céleste 🌌", 0.4), ("赤", 0.35), ("Grün", 0.25)]


@pytest.mark.parametrize(
    "text",
    [
        " " * 100_000,
        "1" * 100_000,
        "(" * 100_000,
        "(probability " * 8_000,
        ("p" + " " * 50) * 2_000,
        "0.1 " * 25_000,
        "5% " * 33_000,
        "[0.1" * 25_000,
        "1e" * 50_000,
        "".join(f"{i % 999 + 1}. " for i in range(20_000)),
        "1. Blue\n" + "x\n" * 50_000,
        "1. (probability 0.1) x\n" * 4_000,
        "<response>" * 10_000,
        "<response>" + "<text>" * 16_000,
        "<response><text>a</text>" + "<probability>" * 7_000,
        "\n" * 100_000,
        "٣٠٪ 🐉 " * 14_000,
    ],
)
def test_adversarial_100kb_inputs_never_raise_and_return_quickly(text: str) -> None:
    started = time.perf_counter()
    parse = parse_verbalized(text, 5, truncated=True)
    assert time.perf_counter() - started < 5.0  # linear: about 0.2 s on one slow core
    assert isinstance(parse, VerbalizedParse)
    assert len(parse.unparsed) == len(parse.reasons)


# --- helpers ---------------------------------------------------------------------------------------------------


def test_normalized_and_parse_rate() -> None:
    assert normalized([R("a", 0.6), R("b", 0.6)]) == [0.5, 0.5]
    assert normalized([R("a", 0.1), R("b", 0.3)]) == pytest.approx([0.25, 0.75])
    assert normalized([R("a", 0.0), R("b", 0.0)]) == [0.5, 0.5]
    assert normalized([]) == []
    good, bad = parse_verbalized("1. (0.5) a\n2. (0.5) b", 2), parse_verbalized("nothing", 2)
    assert parse_rate([good, bad, good, good]) == 0.75
    assert math.isnan(parse_rate([]))
    assert response_key('  "Blue!!"  ') == response_key("blue") == "blue"


def test_spearman_on_constructed_values() -> None:
    assert spearman_with_reason([1, 2, 3, 4], [10, 30, 20, 40]) == (pytest.approx(0.8), None)
    assert spearman_with_reason([1, 2, 3], [3, 2, 1]) == (pytest.approx(-1.0), None)
    rho, why = spearman_with_reason([0.5, 0.5], [0.1, 0.2])
    assert math.isnan(rho) and why == "2 responses; a rank correlation needs at least 3"
    rho, why = spearman_with_reason([0.5, 0.5, 0.2, 0.2], [0.1, 0.2, 0.3, 0.4])
    assert math.isnan(rho) and why == "2 distinct x values; a rank correlation needs 3"
    rho, why = spearman_with_reason([0.1, 0.2, 0.3, math.nan], [0.0, 0.0, 0.1, 0.4])
    assert math.isnan(rho) and why == "2 distinct y values; a rank correlation needs 3"


# --- stated vs real on a scripted toy model ---------------------------------------------------------------------

COLOURS = [" Red", " Blue", " Green", " Dark"]
# P(next | last token): after the prompt's "." the model answers a colour; " Dark" goes on to " Red"
TABLE = {
    ".": {" Red": 0.4, " Blue": 0.25, " Green": 0.15, " Dark": 0.1},
    " Dark": {" Red": 0.8},
    " Red": {"<eos>": 0.99},
    " Blue": {"<eos>": 0.99},
    " Green": {"<eos>": 0.99},
}
SCRIPT = (
    "Here you go:\n1. (probability 0.40) Red\n2. (probability 0.30) Blue\n"
    "3. (probability 0.20) Green\n4. (probability 0.10) Dark Red\nDone."
)


class ScriptedBackend(TransitionBackend):
    """A Markov toy model (TABLE) that answers the Verbalized Sampling prompt with SCRIPT, token by token."""

    def __init__(self, name: str = "scripted", script: str = SCRIPT) -> None:
        super().__init__([*TOY_TOKENS, *COLOURS, "é"], TABLE, name=name)
        self.script_prompt = self.encode(verbalized_prompt("Name a colour.", 4), add_special_tokens=False)
        self.script = [*self.encode(script), 0]

    def logits(self, prefix: Sequence[int]) -> np.ndarray:
        start = len(self.script_prompt)
        if list(prefix[:start]) != self.script_prompt:
            return super().logits(prefix)
        onehot = np.full(self.vocab.size, -1000.0)
        onehot[self.script[min(len(prefix) - start, len(self.script) - 1)]] = 0.0
        return onehot


def test_stated_vs_real_end_to_end_with_hand_computed_probabilities() -> None:
    backend = ScriptedBackend()
    result = stated_vs_real(backend, "Name a colour.", k=4, n_vs=3, n_direct=40, max_tokens=200, seed=1)
    assert result.parse_rate == 1.0 and result.unparsed == 0 and result.responses_parsed == 12
    assert result.lead == " "  # the prompt ends in ".": a direct answer starts with a space
    rows = {r.text: r for r in result.rows}
    assert list(rows) == ["Red", "Blue", "Green", "Dark Red"]
    exact = {"Red": math.log(0.4), "Blue": math.log(0.25), "Green": math.log(0.15), "Dark Red": math.log(0.1 * 0.8)}
    for text, logprob in exact.items():
        assert rows[text].exact_logprob == pytest.approx(logprob, abs=1e-9)
        assert rows[text].exact_share == pytest.approx(math.exp(logprob) / 0.88, abs=1e-9)
        assert rows[text].listed == 3
    assert [rows[t].stated for t in exact] == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert [rows[t].stated_share for t in exact] == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert rows["Dark Red"].tokens == 2 and rows["Red"].tokens == 1
    assert result.spearman_exact == pytest.approx(1.0) and result.spearman_exact_reason is None
    # the frequencies are those of the same direct sampling run on its own
    direct = generate(backend, backend.prompt_ids("Name a colour."), 40, max_tokens=200, temperature=1.0, seed=1)
    for text, row in rows.items():
        assert row.direct_count == sum(response_key(c.text) == response_key(text) for c in direct)
        assert row.direct_frequency == row.direct_count / 40
    assert result.direct_matched == sum(r.direct_count for r in result.rows) / 40
    assert rows["Red"].direct_count > rows["Green"].direct_count > 0
    data = json.loads(json.dumps(result.to_dict()))
    assert data["parse_rate"] == 1.0 and len(data["rows"]) == 4 and len(data["generations"]) == 3
    assert data["generations"][0]["text"] == SCRIPT
    assert data["direct_outputs"] == [c.text for c in direct]


def test_the_exact_logprob_is_the_brute_force_sum_over_the_canonical_tokens() -> None:
    backend = ScriptedBackend()
    prompt = backend.prompt_ids("Name a colour.")
    paths = [tuple(backend.encode(t)) for t in [" Dark Red", " Red", " Blue sky", " 42"]]
    tree = _path_logprobs(backend, prompt, paths)
    assert tree == pytest.approx([backend.sequence_logprob(prompt, p) for p in paths], abs=1e-9)
    served = dataclasses.replace(backend.capabilities, server="scripted@http://x")
    backend.capabilities = served  # a server scores the sequences instead (here the in-process query)
    assert _path_logprobs(backend, prompt, paths) == pytest.approx(tree, abs=1e-9)


def test_a_cut_generation_and_an_unspellable_response() -> None:
    script = "1. (probability 0.5) Red\n2. (probability 0.3) Blé\n3. (probability 0.2) Green, then more and more"
    backend = ScriptedBackend(script=script)
    cut = len(backend.encode(script[: script.index(", then")]))  # the limit ends the output after "Green"
    canonical = backend.encode
    # a tokenizer that normalizes "é" to "e" does not spell " Blé" back: that response cannot be scored
    backend.encode = lambda text, add_special_tokens=True: canonical(text.replace("é", "e"), add_special_tokens)  # type: ignore[method-assign]
    result = stated_vs_real(backend, "Name a colour.", k=4, n_vs=2, n_direct=5, max_tokens=cut, seed=0)
    parse = result.parses[0]
    assert result.outputs[0].endswith("Green") and [r.text for r in parse.responses] == ["Red", "Blé"]
    assert parse.reasons == ["cut off by the token limit"] and result.unparsed == 2
    assert result.parse_rate == 0.0
    row = next(r for r in result.rows if r.text == "Blé")
    assert math.isnan(row.exact_logprob) and math.isnan(row.exact_share)
    assert result.notes == ["'Blé' not scored: the tokenizer does not spell it back exactly"]
    red = next(r for r in result.rows if r.text == "Red")
    assert red.exact_share == 1.0  # the only scored row
    assert math.isnan(result.spearman_exact)
    assert result.spearman_exact_reason == "1 responses; a rank correlation needs at least 3"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 1}, "from 2 to 20"),
        ({"n_vs": 0}, "generations must be at least 1"),
        ({"n_direct": 0}, "direct samples must be at least 1"),
        ({"max_tokens": 0}, "max tokens must be at least 1"),
    ],
)
def test_stated_vs_real_refuses_bad_settings(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ModescopeError, match=message):
        stated_vs_real(ScriptedBackend(), "Name a colour.", **kwargs)  # type: ignore[arg-type]


def test_a_top_k_server_is_refused() -> None:
    backend = ScriptedBackend()
    backend.capabilities = Capabilities(tier="top-k", top_k=5, server="s@http://x")
    with pytest.raises(ModescopeError, match="whole next-token distributions"):
        stated_vs_real(backend, "Name a colour.", k=4)


# --- the command ---------------------------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(verbalized_command)
    return app


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(name: str, device: str = "auto", dtype: str = "auto") -> Backend:
        return ScriptedBackend(name)

    monkeypatch.setattr("modescope.models.load", load)


@pytest.mark.usefixtures("scripted")
def test_command_prints_the_table_and_writes_json_and_png(tmp_path: Path) -> None:
    out, png = tmp_path / "vs.json", tmp_path / "calib.png"
    args = ["Name a colour.", "-m", "toy", "-k", "4", "--n", "2", "--direct-n", "16", "--max-tokens", "200"]
    result = CliRunner().invoke(_app(), [*args, "--json", str(out), "--png", str(png)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "parse rate 100% (2/2 generations complete)" in result.output
    assert "Spearman stated vs exact share: +1.00" in result.output and "Dark Red" in result.output
    data = json.loads(out.read_text())
    assert data["model"] == "toy" and data["spearman_exact"] == pytest.approx(1.0)
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.usefixtures("scripted")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("-k 1", "k (responses per generation) must be from 2 to 20 (got 1)"),
        ("-k 21", "must be from 2 to 20"),
        ("--n 0", "generations must be at least 1"),
        ("--direct-n 0", "direct samples must be at least 1"),
        ("--max-tokens 0", "max tokens must be at least 1"),
        ("--system hi", "--system and --prefill need --chat"),
        ("--chat", "has no chat template"),
    ],
)
def test_command_refuses_bad_input_in_one_line(args: str, message: str) -> None:
    result = CliRunner().invoke(_app(), ["Name a colour.", "-m", "toy", *args.split()])
    assert_user_error(result, message)


def test_command_refuses_an_empty_prompt() -> None:
    assert_user_error(CliRunner().invoke(_app(), ["  "]), "the prompt is empty")
