"""A prompt-set probe's output aggregated from hand-made units (and from real distribution units of toy
models): means, paired differences, counts and Wilcoxon p-values computed by hand; the page and JSON."""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from rich.console import Console

from modescope.store import Artifact, Metric, ProbeOutput, StoredUnit, UnitRecord
from modescope.suites.aggregate import aggregate, print_aggregate, verdict

HOSTILE = "<script>alert(1)</script>"
BASE = {"score": [5, 6, 7, 8, 9], "length": [10, 20, None, 40, 50]}
TUNED = {"score": [3, 5, 4, 6, 2], "length": [12, 17, 33, 41, 55]}
IDS = ["p1", "p2", "p3", "p4", "p5"]


def make_unit(model: str, k: int, values: dict[str, list[float | None]], kind: str = "sample") -> StoredUnit:
    prompt_id = IDS[k]
    metrics = [Metric(model, name, None if v[k] is None else float(v[k])) for name, v in values.items()]
    metrics.append(Metric(model, "top1", None, "a text-only metric"))
    metrics.append(Metric(f"{model} vs other", "stray", 1.0))  # not this unit's model: not aggregated
    page = f"<!doctype html><html><body><h1>{prompt_id} by {model}</h1></body></html>"
    artifacts = {"samples.html": Artifact("text/html", page.encode())}
    record = UnitRecord("probe", prompt_id, model, k, f"prompt {k} {HOSTILE}", {"category": f"c{k % 2}"}, "key")
    return StoredUnit(record, ProbeOutput(metrics, {}, artifacts), 0.1, False)


def hand_units() -> list[StoredUnit]:
    return [make_unit(m, k, v) for k in range(5) for m, v in (("base", BASE), ("tuned", TUNED))]


def metric(output: ProbeOutput, model: str, name: str) -> float | None:
    found = [m.value for m in output.metrics if m.model == model and m.name == name]
    assert len(found) == 1, (model, name, found)
    return found[0]


def test_means_differences_counts_and_p_values_by_hand() -> None:
    output = aggregate("sample", ["base", "tuned"], hand_units())
    assert metric(output, "base", "score") == 7.0  # 35 / 5
    assert metric(output, "tuned", "score") == 4.0  # 20 / 5
    pair = "base vs tuned"
    assert metric(output, pair, "score.diff") == -3.0  # differences -2 -1 -3 -2 -7
    assert metric(output, pair, "score.a_higher") == 5.0
    assert metric(output, pair, "score.b_higher") == 0.0
    assert metric(output, pair, "score.wilcoxon_p") == pytest.approx(2 / 32)  # all five one way
    low, high = metric(output, pair, "score.diff_ci_low"), metric(output, pair, "score.diff_ci_high")
    assert low is not None and high is not None and -7.0 <= low < -3.0 < high <= -1.0
    assert metric(output, "base", "score.ci_low") is not None
    assert metric(output, "base", "prompts") == 5.0


def test_unmeasured_values_are_skipped_pairwise() -> None:
    output = aggregate("sample", ["base", "tuned"], hand_units())
    assert metric(output, "base", "length") == 30.0  # 120 / 4: prompt 3 unmeasured
    assert metric(output, "tuned", "length") == pytest.approx(158 / 5)
    pair = "base vs tuned"
    # prompts 1, 2, 4, 5: differences 2, -3, 1, 5 (ranks 2, 3, 1, 4). W- = 3; sign patterns with W- <= 3
    # are {}, {1}, {2}, {3}, {1, 2}: p = 2 x 5/16
    assert metric(output, pair, "length.diff") == pytest.approx(5 / 4)
    assert metric(output, pair, "length.wilcoxon_p") == pytest.approx(10 / 16)
    assert (metric(output, pair, "length.b_higher"), metric(output, pair, "length.a_higher")) == (3.0, 1.0)
    stats = output.payload["pairs"][0]["metrics"]["length"]
    assert (stats["n"], stats["ties"]) == (4, 0)
    assert output.payload["per_model"]["base"]["length"]["n"] == 4
    names = {m.name for m in output.metrics}
    assert "top1" not in names and "stray" not in names  # text-only, and another model's metric


def test_a_unit_whose_backend_kept_another_name_still_counts() -> None:
    units = hand_units()
    renamed = units[1]  # tuned on p1, its metrics named by its backend
    metrics = [Metric("toy:tuned", m.name, m.value) for m in renamed.output.metrics if m.model == "tuned"]
    units[1] = StoredUnit(renamed.record, ProbeOutput(metrics, {}, {}), 0.0, False)
    assert metric(aggregate("sample", ["base", "tuned"], units), "tuned", "score") == 4.0


def test_payload_shape_and_strict_json() -> None:
    failed = [{"probe": "probe", "prompt_id": "p6", "model": "tuned", "error": "boom", "attempts": 3}]
    output = aggregate("sample", ["base", "tuned"], hand_units(), failed)
    payload = output.payload
    json.dumps(payload, allow_nan=False)
    assert payload["kind"] == "sample" and payload["models"] == ["base", "tuned"]
    assert [p["id"] for p in payload["prompts"]] == IDS
    third = payload["prompts"][2]
    assert third["meta"] == {"category": "c0"}
    assert third["metrics"]["base"] == {"score": 7.0, "length": None}
    assert payload["per_model"]["tuned"]["score"] == {"mean": 4.0, "low": pytest.approx(2.8), "high": 5.2, "n": 5}
    pair = payload["pairs"][0]
    assert (pair["a"], pair["b"], pair["comparisons"]) == ("base", "tuned", {})
    assert set(pair["metrics"]["score"]) == {"mean", "low", "high", "n", "wilcoxon_p", "a_higher", "b_higher", "ties"}
    assert payload["failed"] == failed
    assert output.notes == ["1 unit(s) failed and are left out of the statistics"]
    different = payload["most_different"][0]
    assert (different["metric"], different["by"]) == ("score", "score")  # the first metric: no sample headline
    assert [p["id"] for p in different["prompts"]][:2] == ["p5", "p3"]  # |diff| 7, then 3
    assert different["prompts"][0] == {"id": "p5", "a": 9.0, "b": 2.0, "diff": -7.0, "score": 7.0}


def test_three_models_give_every_pair_in_order_and_missing_units_shrink_n() -> None:
    units = hand_units() + [make_unit("chat", k, TUNED) for k in range(4)]  # the chat model lacks p5
    output = aggregate("sample", ["base", "tuned", "chat"], units)
    pairs = [(p["a"], p["b"]) for p in output.payload["pairs"]]
    assert pairs == [("base", "tuned"), ("base", "chat"), ("tuned", "chat")]
    assert metric(output, "chat", "prompts") == 4.0
    assert output.payload["pairs"][2]["metrics"]["score"]["ties"] == 4
    assert math.isclose(metric(output, "tuned vs chat", "score.wilcoxon_p") or 0, 1.0)  # all tied: no evidence
    assert "chat" not in output.payload["prompts"][4]["metrics"]


def test_one_model_or_no_unit_still_gives_a_page() -> None:
    one = aggregate("sample", ["base"], hand_units())
    assert one.payload["pairs"] == [] and one.payload["most_different"] == []
    assert metric(one, "base", "score") == 7.0
    assert "nothing to compare" in one.artifacts["prompts.html"].data.decode()
    empty = aggregate("sample", ["base", "tuned"], [])
    assert empty.payload["prompts"] == [] and "metrics.png" not in empty.artifacts
    assert metric(empty, "base", "prompts") == 0.0
    json.dumps(empty.payload, allow_nan=False)


def test_verdict_names_the_side_of_the_mean() -> None:
    lower = {"n": 100, "mean": -0.21, "a_higher": 87, "b_higher": 10, "ties": 3}
    assert verdict("base", "tuned", lower) == "tuned lower than base on 87 of 100 prompts (3 tied)"
    higher = {"n": 4, "mean": 0.5, "a_higher": 1, "b_higher": 3, "ties": 0}
    assert verdict("base", "tuned", higher) == "tuned higher than base on 3 of 4 prompts"
    assert verdict("a", "b", {"n": 2, "mean": 0.0, "a_higher": 0, "b_higher": 0, "ties": 2}) == (
        "b equal to a on all 2 prompts"
    )
    assert verdict("a", "b", {"n": 0, "mean": None, "a_higher": 0, "b_higher": 0, "ties": 0}).startswith("no prompt")


class StrictHTML(HTMLParser):
    """Every element closed in order (void elements aside): the page is well-formed."""

    VOID = frozenset({"meta", "input", "img", "br", "hr", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def page_data(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="units">(.*?)</script>', page, re.S)
    assert found is not None
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def test_page_is_well_formed_escaped_and_embeds_every_unit_view() -> None:
    output = aggregate("sample", ["base", "tuned"], hand_units())
    page = output.artifacts["prompts.html"].data.decode()
    parser = StrictHTML()
    parser.feed(page)
    parser.close()
    assert parser.stack == [] and parser.tags.count("script") == 2
    assert HOSTILE not in page  # escaped in tables, \u003c in the JSON
    for prompt_id in IDS:
        assert f"<td>{prompt_id}</td>" in page
    assert "tuned lower than base on 5 of 5 prompts" in page
    data = page_data(page)
    assert data["prompts"][0]["prompt"] == f"prompt 0 {HOSTILE}"
    view = data["views"][3]["tuned"][0]
    raw = base64.b64decode(view["data"])
    text = (gzip.decompress(raw) if view["gz"] else raw).decode()
    assert view["name"] == "samples.html" and "p4 by tuned" in text
    assert output.artifacts["metrics.png"].data.startswith(b"\x89PNG")


def test_terminal_view_prints_both_tables() -> None:
    output = aggregate("sample", ["base", "tuned"], hand_units())
    console = Console(file=io.StringIO(), width=160, color_system=None)
    print_aggregate(output.payload, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "7 [" in text and "tuned − base" in text
    assert "tuned lower than base on 5 of 5 prompts" in text and "0.0625" in text


def distribution_units() -> tuple[list[StoredUnit], list[Any]]:
    """Real single-model distribution units of two toy models on three prompts, through JSON as stored; and
    the two-model probe on each prompt, whose comparisons the aggregate must reproduce."""
    from modescope.models import load
    from modescope.probes.distribution import distribution
    from modescope.suites import kinds, schema

    prompts = ["Q: a number?\nA:", "Q: pick one\nA:", "Numbers: 4, 8,"]
    probe = schema.DistributionProbe(name="d", kind="distribution", prompts=prompts, integers=(0, 12))
    backends = [load("toy:base"), load("toy:tuned")]
    units = []
    for backend in backends:
        for k, out in enumerate(kinds.run_prompts(backend, probe, prompts, lambda message: None)):
            stored = ProbeOutput(out.metrics, json.loads(json.dumps(out.payload)), out.artifacts)
            record = UnitRecord("d", f"q{k}", backend.name, k, prompts[k], {}, "key")
            units.append(StoredUnit(record, stored, 0.0, False))
    return units, [distribution(backends, p, probe.values() or []) for p in prompts]


def test_distribution_divergences_per_prompt_match_the_two_model_probe() -> None:
    units, joint = distribution_units()
    output = aggregate("distribution", ["toy:base", "toy:tuned"], units)
    payload = output.payload
    json.dumps(payload, allow_nan=False)
    for k, both in enumerate(joint):
        comparison = both.comparisons[0]
        found = payload["prompts"][k]["comparisons"]["toy:base vs toy:tuned"]
        assert found["js_bits"] == pytest.approx(comparison.js_bits, abs=1e-9)
        assert found["tv"] == pytest.approx(comparison.tv, abs=1e-9)
    pair = "toy:base vs toy:tuned"
    js = [j.comparisons[0].js_bits for j in joint]
    assert metric(output, pair, "js_bits") == pytest.approx(sum(js) / 3, abs=1e-9)
    assert metric(output, pair, "tv.ci_low") is not None
    assert metric(output, "toy:base", "top1_share") is not None  # the overview's names keep working
    assert payload["headlines"][0] == "top1_share"
    assert payload["most_different"][0]["by"] == "js_bits"
    page = output.artifacts["prompts.html"].data.decode()
    assert "toy:base vs toy:tuned: js_bits" in page
    assert page_data(page)["views"][0]["toy:base"][0]["mime"] == "image/png"
