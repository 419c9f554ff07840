"""The remedy grid, exact scoring of continuations, the frontier probe, its suite kind and `modescope frontier`,
on closed-form toy models (toy:NAME models share one tokenizer, so one can guide another)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import modescope as ms
from modescope.cli import app
from modescope.engine.score import continuation_logprobs
from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend, TransitionBackend
from modescope.probes.frontier import (
    FrontierSettings,
    FrontierUnit,
    PointSamples,
    fluency,
    frontier_prompts,
    pareto,
    sample_point,
    summarize,
)
from modescope.remedies.grid import RemedyPoint, parse_grid, parse_remedy
from modescope.store import Store
from modescope.suites.runner import plan_suite, run_suite


class FixedEmbedder:
    """Bag-of-characters vectors: deterministic and fast, and texts that share characters are similar."""

    def __call__(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), 128))
        for row, text in enumerate(texts):
            for ch in text:
                vectors[row, ord(ch) % 128] += 1.0
        vectors[:, 0] += 1e-3  # no zero vector
        return vectors


SETTINGS = FrontierSettings(n=4, max_tokens=5, seed=3, embedder=FixedEmbedder())
PROMPTS = ["Q: a random number?\nA:", "I think"]


# --- the grid ------------------------------------------------------------------------------------------------


def test_grid_specs_and_defaults() -> None:
    assert parse_remedy("min_p=0.05, 0.1") == [RemedyPoint("min_p", 0.05), RemedyPoint("min_p", 0.1)]
    assert [p.label for p in parse_remedy("guided")] == ["guided=0.25", "guided=0.5", "guided=0.75"]
    assert parse_remedy("vary") == [RemedyPoint("vary")]
    assert parse_remedy("verbalized=3")[0].k == 3
    points = parse_grid(["temperature=0.5", "direct", "temperature=0.5", "few-shot"])
    assert [p.label for p in points] == ["direct", "temperature=0.5", "few-shot"]  # direct first, each once


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["nucleus=0.9"], "unknown remedy 'nucleus'; use one of direct, temperature"),
        (["guided=1.5"], "the guide's weight α must lie in [0, 1] (got 1.5)"),
        (["guided=-0.1"], "the guide's weight α must lie in [0, 1]"),
        (["guided=nan"], "finite"),
        (["min_p=abc"], "strength 'abc' is not a number"),
        (["vary=2"], "remedy 'vary' takes no strength"),
        (["verbalized=1"], "k is a whole number from 2 to 20"),
        (["min_p="], "gives no strength"),
        ([], "the remedy grid is empty"),
    ],
)
def test_grid_refuses_bad_specs(specs: list[str], message: str) -> None:
    with pytest.raises(ModescopeError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_grid(specs)


def test_pareto_front() -> None:
    points = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.5), (math.nan, 1.0)]
    # (0.4, 0.4) is beaten by (0.5, 0.5); equal points do not beat each other; NaN is never on it
    assert pareto(points) == [True, True, False, True, True, False]


# --- exact scoring -------------------------------------------------------------------------------------------


def test_continuation_logprobs_equal_brute_force() -> None:
    model = ms.load("toy:scoring")
    assert isinstance(model, AnalyticBackend)
    prompts = [model.encode("I think"), model.encode("Q:"), model.encode("maybe")]
    continuations = [model.encode(" they are not"), [], model.encode(" 42 is")]
    scores = continuation_logprobs(model, prompts, continuations, max_rows=2)  # two chunks
    assert scores[1] == []
    for prompt, continuation, score in zip(prompts, continuations, scores, strict=True):
        assert len(score) == len(continuation)
        assert sum(score) == pytest.approx(model.sequence_logprob(prompt, continuation), abs=1e-9)


# --- the probe -----------------------------------------------------------------------------------------------


def test_frontier_points_are_reproducible_and_fluency_is_exact() -> None:
    tuned, base = ms.load("toy:tuned"), ms.load("toy:base")
    points = parse_grid(["temperature=0.5", "min_p=0.2", "vary", "guided=0.5"])
    first = frontier_prompts(tuned, PROMPTS, points, SETTINGS, guide=base)
    again = frontier_prompts(tuned, PROMPTS, points, SETTINGS, guide=base)
    assert first == again
    labels = [p["label"] for p in first[0]["points"]]
    assert labels == ["direct", "temperature=0.5", "min_p=0.2", "vary", "guided=0.5"]
    direct = first[0]["points"][0]
    assert len(direct["texts"]) == 4 and direct["metrics"]["parse_rate"] == 1.0
    # fluency: each text's mean log-likelihood under the model given the direct prompt, averaged by hand; the
    # texts are scored as sampled, token by token (the same tokenizer), so re-sample them to get their ids
    samples = sample_point(RemedyPoint("direct"), tuned, PROMPTS, SETTINGS, None)
    assert samples[0].texts == direct["texts"] and samples[0].ids is not None
    prompt = tuned.prompt_ids(PROMPTS[0])
    by_hand = [tuned.sequence_logprob(prompt, ids) / len(ids) for ids in samples[0].ids]
    assert direct["metrics"]["fluency"] == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-9)
    # another reference with the same tokenizer scores the same ids; text alone is encoded (with a space)
    scored = fluency(base, PROMPTS[:1], samples[:1], tuned)[0]
    hand = [base.sequence_logprob(prompt, ids) / len(ids) for ids in samples[0].ids]
    assert scored == pytest.approx(sum(hand) / len(hand), abs=1e-9)
    parsed = PointSamples(["they are", " not"], 2, 2)
    scored = fluency(base, PROMPTS[:1], [parsed], tuned)[0]
    hand = [base.sequence_logprob(prompt, base.encode(t)) / len(base.encode(t)) for t in (" they are", " not")]
    assert scored == pytest.approx(sum(hand) / len(hand), abs=1e-9)


def test_lower_temperature_is_more_fluent_on_average() -> None:
    model = ms.load("toy:tuned")
    settings = FrontierSettings(n=16, max_tokens=4, seed=1, embedder=FixedEmbedder())
    found = frontier_prompts(model, PROMPTS, parse_grid(["temperature=0.3,3"]), settings)
    for prompt in found:
        cold, hot = prompt["points"][1]["metrics"], prompt["points"][2]["metrics"]
        assert cold["fluency"] > hot["fluency"]


def test_guided_needs_a_guide() -> None:
    with pytest.raises(ModescopeError, match="needs a guide model"):
        frontier_prompts(ms.load("toy:tuned"), PROMPTS, parse_grid(["guided=0.5"]), SETTINGS)


def test_summary_estimates_differences_and_front() -> None:
    def unit(model: str, pid: str, values: dict[str, tuple[float, float]]) -> FrontierUnit:
        points = [
            {
                "remedy": label.split("=")[0],
                "strength": float(label.split("=")[1]) if "=" in label else None,
                "label": label,
                "metrics": {"embedding_diversity": d, "fluency": f, "class_share": None},
                "texts": [f"{label} text"],
            }
            for label, (d, f) in values.items()
        ]
        return FrontierUnit(model, pid, f"prompt {pid}", points)

    units = [
        unit("m", "1", {"direct": (0.2, -1.0), "min_p=0.1": (0.1, -0.5), "xtc=0.5": (0.6, -2.0), "vary": (0.1, -3.0)}),
        unit("m", "2", {"direct": (0.4, -1.0), "min_p=0.1": (0.3, -0.7), "xtc=0.5": (0.8, -2.2), "vary": (0.2, -3.0)}),
    ]
    payload = summarize(["m"], units, "embedding_diversity", "fluency")
    by_label = {p["label"]: p for p in payload["points"]}
    assert by_label["xtc=0.5"]["metrics"]["embedding_diversity"]["mean"] == pytest.approx(0.7)
    assert by_label["xtc=0.5"]["vs_direct"]["embedding_diversity"]["mean"] == pytest.approx(0.4)
    assert by_label["direct"]["vs_direct"] == {}
    assert [p["label"] for p in payload["points"] if p["on_front"]] == ["direct", "min_p=0.1", "xtc=0.5"]
    assert payload["prompts"][1]["points"]["m"]["vary"]["fluency"] == -3.0
    json.dumps(payload, allow_nan=False)  # strict JSON


# --- the suite kind and the command ----------------------------------------------------------------------------


def write_suite(folder: Path, remedies: list[str]) -> Path:
    path = folder / "frontier.toml"
    grid = ", ".join(json.dumps(r) for r in remedies)
    path.write_text(
        f"""name = "frontier-test"
[[models]]
name = "toy:tuned"
[[models]]
name = "toy:other"
[[probes]]
name = "remedies"
kind = "frontier"
prompts = ["Q: a random number?\\nA:", "I think", "maybe"]
remedies = [{grid}]
n = 3
max_tokens = 4
guide = "toy:base"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(autouse=True)
def fast_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default MiniLM embedder replaced by the fixed one (the suite path has no embedder option)."""
    monkeypatch.setattr("modescope.metrics.diversity.default_embedder", lambda: FixedEmbedder())


def test_frontier_suite_is_stored_cached_and_rendered(tmp_path: Path) -> None:
    plan = plan_suite(str(write_suite(tmp_path, ["min_p=0.1", "guided=0.5"])))
    with Store(tmp_path / "store") as store:
        run_id = run_suite(plan, store)
        output = store.probe_output(run_id, "remedies")
        units = store.units(run_id, "remedies")
        again = run_suite(plan, store)
        assert store.probe_output(again, "remedies").payload == output.payload  # from the cache
    assert len(units) == 6  # 3 prompts x 2 models
    assert output.artifacts["frontier.png"].data.startswith(b"\x89PNG")
    page = output.artifacts["frontier.html"].data.decode()
    assert "Diversity-quality frontier" in page and "guided=0.5" in page
    labels = {(p["model"], p["label"]) for p in output.payload["points"]}
    assert ("toy:other", "guided=0.5") in labels and len(labels) == 6
    assert any(m.name == "min_p=0.1: fluency" and m.model == "toy:tuned" for m in output.metrics)


def test_frontier_suite_refuses_guided_without_guide(tmp_path: Path) -> None:
    path = write_suite(tmp_path, ["guided=0.5"])
    path.write_text(path.read_text().replace('guide = "toy:base"\n', ""))
    with pytest.raises(ModescopeError, match="the guided remedy needs guide"):
        plan_suite(str(path))


def test_frontier_command_writes_plot_page_and_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["frontier", "Q: a random number?\nA:", "I think", "-m", "toy:tuned", "-r", "temperature=0.5"]
    args += ["-r", "guided=0.5", "--guide", "toy:base", "-n", "3", "--max-tokens", "4", "--store", str(tmp_path / "s")]
    args += ["--png", str(out / "f.png"), "--html", str(out / "f.html"), "--json", str(out / "f.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "toy:tuned: frontier over 2 prompts" in result.output
    assert (out / "f.png").read_bytes().startswith(b"\x89PNG")
    payload = json.loads((out / "f.json").read_text())
    assert [p["label"] for p in payload["points"]] == ["direct", "temperature=0.5", "guided=0.5"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-r", "nucleus"], "unknown remedy 'nucleus'"),
        (["-r", "guided=2", "--guide", "toy:base"], "α must lie in [0, 1]"),
        (["-r", "guided=0.5"], "needs --guide"),
        (["-r", "min_p=0.1", "--guide", "toy:base"], "--guide is for the guided remedy"),
        (["-r", " "], "the remedy grid is empty"),
        (["-r", "guided=0.5", "--guide", "tiny-other-tokenizer"], "needs the same tokenizer"),
    ],
)
def test_frontier_command_bad_input_exits_2_with_one_line(
    extra: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = ms.load

    def load(name: str, *args: object, **kwargs: object) -> object:
        if name == "tiny-other-tokenizer":
            return AnalyticBackend(["a", "b", "c"], name=name)
        return real_load(name)

    monkeypatch.setattr("modescope.models.load", load)
    result = CliRunner().invoke(app, ["frontier", "I think", "-m", "toy:tuned", *extra])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_frontier_command_needs_prompts() -> None:
    result = CliRunner().invoke(app, ["frontier", "-m", "toy:tuned"])
    assert result.exit_code == 2
    assert "give prompts as arguments or a prompt set with --prompts-file" in result.output


class ScriptBackend(TransitionBackend):
    """Writes one script of whole-line tokens after any prompt: each line is followed by the next, the last by
    the end of text; after any other token, the first line (so every generation is the script)."""

    def __init__(self, lines: list[str]) -> None:
        table = {a: {b: 1.0} for a, b in zip(lines, [*lines[1:], "<eos>"], strict=True)}
        super().__init__(list(dict.fromkeys([*[chr(c) for c in range(32, 127)], "\n", *lines])), table, "script")
        self.first = self.rows[self.encode(lines[0])[0]] * 0.0
        self.first[self.encode(lines[0])[0]] = 50.0

    def logits(self, prefix: list[int]) -> np.ndarray:  # type: ignore[override]
        if prefix and prefix[-1] in self.rows:
            return self.rows[prefix[-1]]
        return self.first


def test_verbalized_point_keeps_parsed_responses_and_counts_the_rest() -> None:
    model = ScriptBackend(["1. (probability 0.60) yes\n", "2. (probability 0.40) no\n"])
    settings = FrontierSettings(n=4, max_tokens=6, seed=0, embedder=FixedEmbedder())
    (found,) = sample_point(RemedyPoint("verbalized", 3), model, ["Pick one."], settings, None)
    # k = 3 asked per generation, 2 generations (ceil(4 / 3)); each gives the two scripted responses
    assert found.texts == ["yes", "no", "yes", "no"]
    assert (found.asked, found.parsed) == (6, 4)
    (prompt,) = frontier_prompts(model, ["Pick one."], [RemedyPoint("verbalized", 3)], settings)
    metrics = prompt["points"][0]["metrics"]
    assert metrics["parse_rate"] == pytest.approx(4 / 6)
    assert metrics["class_share"] == pytest.approx(0.5)  # two classes among four texts
