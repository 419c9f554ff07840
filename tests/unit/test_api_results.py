"""The Python API's results in a notebook: distribution, multiverse, suites and the store, on toy models.

Each result must give the same numbers as the lower-level call, tidy tables, strict JSON, a figure, and an
inline view: a sandboxed srcdoc iframe holding the page, with model and user text escaped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.figure import Figure

import modescope as ms
from modescope.errors import ModescopeError
from tests.inline import inline_page, strict_json
from tests.unit.test_frontier import FixedEmbedder
from tests.unit.test_suites import TOY_SUITE, write_suite

HOSTILE = "Q: <script>alert(1)</script> a number?\nA:"


def test_models_by_name_are_loaded_once_and_reused() -> None:
    first = ms.backends(["toy:api-a", "toy:api-b"])
    assert [b.name for b in first] == ["toy:api-a", "toy:api-b"]
    assert ms.backends("toy:api-a")[0] is first[0]
    with pytest.raises(ModescopeError, match="listed twice"):
        ms.backends(["toy:api-a", first[0]])
    with pytest.raises(ModescopeError, match="at least one model"):
        ms.backends([])
    with pytest.raises(ModescopeError, match="not int"):
        ms.backends([3])  # type: ignore[list-item]


def test_distribution_by_name_matches_loaded_models_and_renders_inline() -> None:
    by_name = ms.distribution(["toy:api-a", "toy:api-b"], HOSTILE, ms.integers(0, 20))
    loaded = ms.distribution([ms.load("toy:api-a"), ms.load("toy:api-b")], HOSTILE, ms.integers(0, 20))
    assert by_name.to_pandas().equals(loaded.to_pandas())  # same masses (timings differ)
    assert by_name.comparisons == loaded.comparisons

    wide = by_name.to_pandas(wide=True)
    assert list(wide.index) == [str(i) for i in range(21)] and list(wide.columns) == ["toy:api-a", "toy:api-b"]
    assert wide.sum().round(9).tolist() == [1.0, 1.0]
    long = by_name.to_pandas()
    assert len(long) == 42 and list(long.columns) == ["model", "text", "mass", "mass_upper", "prob"]
    assert json.loads(by_name.to_json())["results"][1]["model"] == "toy:api-b"

    page = inline_page(by_name._repr_html_())
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<tr><td>&#x27;") == 21  # every answer has a row
    assert "data:image/png;base64," in page and "Content-Security-Policy" in page
    figure = by_name.plot()
    assert isinstance(figure, Figure) and figure.axes[0].get_xlabel() == "candidate"


def test_multiverse_table_page_and_figure() -> None:
    tree = ms.multiverse(["toy:api-a", "toy:api-b"], HOSTILE, depth=2, cutoff=0.05, cache=False)
    table = tree.to_pandas()
    assert set(table["model"]) == {"toy:api-a", "toy:api-b"}
    assert (table["depth"].between(1, 2)).all() and table["joint"].le(table["prob"] + 1e-12).all()
    first = table[(table["model"] == "toy:api-a") & (table["depth"] == 1)]
    assert first["joint"].sum() <= 1.0 + 1e-9 and (first["joint"] == first["prob"]).all()
    page = inline_page(tree._repr_html_())
    assert 'id="multiverse-data"' in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert isinstance(tree.plot(), Figure)
    assert json.loads(tree.to_json())["models"] == ["toy:api-a", "toy:api-b"]


def test_run_suite_stores_the_run_and_shows_its_report(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    run = ms.run_suite(write_suite(tmp_path, TOY_SUITE), store=store_dir, progress=False)
    assert run.status == "finished" and run.models == ["toy:base", "toy:tuned"]
    assert [p["name"] for p in run.probes] == ["ints", "talk", "tree"]
    metrics = run.to_pandas()
    assert set(metrics["probe"]) == {"ints", "talk", "tree"} and set(metrics["model"]) >= {"toy:base", "toy:tuned"}
    assert json.loads(run.to_json())["metrics"][0]["run"] == run.run_id
    assert "<h1" in inline_page(run._repr_html_())

    again = ms.run_suite(write_suite(tmp_path, TOY_SUITE), store=store_dir, progress=False)
    assert again.run_id != run.run_id and all(p["from_cache"] for p in again.probes)
    with ms.Store(store_dir) as store:
        assert store.to_pandas(run.run_id).equals(metrics)
        assert [r["id"] for r in store.to_dict()["runs"]] == [run.run_id, again.run_id]
        shown = store._repr_html_()
        assert "2 runs" in shown and "<table" in shown
        assert ms.stored_run(store, run.run_id).probes == run.probes


def test_run_suite_refuses_an_unknown_suite(tmp_path: Path) -> None:
    with pytest.raises(ModescopeError, match="no-such-suite"):
        ms.run_suite("no-such-suite", store=tmp_path / "s", progress=False)


def test_a_prompt_set_result_shows_its_prompt_page() -> None:
    prompts = ["Q: a number?\nA:", HOSTILE]
    result = ms.distribution(["toy:api-a", "toy:api-b"], prompts, ms.integers(0, 9))
    assert isinstance(result, ms.PromptSetResult)
    data = strict_json(result.to_json())
    assert data["kind"] == "distribution" and [p["text"] for p in data["prompts"]] == prompts
    page = inline_page(result._repr_html_())
    assert page == result.to_html() and "prompts" in page
    assert "<script>alert(1)</script>" not in page
    assert set(result.to_pandas()["model"]) == {"toy:api-a", "toy:api-b"}


def test_a_frontier_result_has_a_figure_and_shows_its_page(tmp_path: Path) -> None:
    embedder = FixedEmbedder()
    front = ms.frontier(["toy:api-a"], ["Q: a number?\nA:"], ["temperature=0.5"], n=3, max_tokens=4, embedder=embedder)
    table = front.to_pandas()
    assert list(table["label"]) == ["direct", "temperature=0.5"]
    assert strict_json(front.to_json())["models"] == ["toy:api-a"]
    assert isinstance(front.plot(), Figure)
    assert inline_page(front._repr_html_()) == front.to_html()
    assert front.write_page(tmp_path / "f.html").read_text(encoding="utf-8") == front.to_html()
    with pytest.raises(ModescopeError, match="at least one prompt"):
        ms.frontier(["toy:api-a"], [], embedder=embedder)
