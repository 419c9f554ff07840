"""examples/essay.ipynb runs top to bottom in a real Jupyter kernel on the default models, and its cells show
what they claim: the token view holds the sampled tokens, the distribution table has a row per answer, the
multiverse is interactive, the suite's report and the store render. The committed notebook carries no outputs."""

from __future__ import annotations

import ast
import html
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from tests.inline import inline_page

NOTEBOOK = Path(__file__).parents[2] / "examples" / "essay.ipynb"


def test_the_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every tagged cell's outputs after running the whole notebook in a fresh python3 kernel."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    folder = tmp_path_factory.mktemp("notebook")
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()
    return {cell.metadata["tags"][0]: cell.outputs for cell in notebook.cells if cell.metadata.get("tags")}


def data(outputs: list[dict[str, Any]], mime: str) -> str:
    found = [
        o["data"][mime]
        for o in outputs
        if o.get("output_type") in ("display_data", "execute_result") and mime in o["data"]
    ]
    assert found, f"no {mime} output among {[o.get('output_type') for o in outputs]}"
    return str(found[-1])


def page(outputs: list[dict[str, Any]]) -> str:
    """The page inside the sandboxed iframe of a result's inline view."""
    return inline_page(data(outputs, "text/html"))


def stdout(outputs: list[dict[str, Any]]) -> str:
    return "".join(o["text"] for o in outputs if o.get("output_type") == "stream" and o["name"] == "stdout")


def test_the_models_load(executed: dict[str, list[dict[str, Any]]]) -> None:
    assert stdout(executed["load"]).strip() == "gemma-3-270m | smollm2-135m-instruct"


def test_the_distribution_shows_every_answer(executed: dict[str, list[dict[str, Any]]]) -> None:
    shown = page(executed["distribution"])
    assert shown.count("<tr><td>&#x27;") == 101 and "data:image/png;base64," in shown
    assert "gemma-3-270m" in shown and "smollm2-135m-instruct" in shown
    assert stdout(executed["distribution-table"]).strip() == "101 rows"
    table = data(executed["distribution-table"], "text/html")
    assert table.split("<tbody>")[1].count("<tr>") == 10  # the ten likeliest answers
    assert data(executed["distribution-plot"], "image/png")


def test_the_token_view_holds_the_sampled_tokens(executed: dict[str, list[dict[str, Any]]]) -> None:
    shown = page(executed["sample"])
    tokens = ast.literal_eval(data(executed["sample-tokens"], "text/plain"))
    assert tokens, "the tuned model's first completion is empty"
    for text, probability in tokens:
        assert 0.0 <= probability <= 1.0  # rounded to 4 decimals
        assert f'>{html.escape(text)}<span class="alts">' in shown or text == ""
    assert shown.count('class="completion"') == 6  # three completions per model
    assert "<table" in data(executed["sample-table"], "text/html")


def test_temperature_attractor_forks_multiverse_and_suite_render(executed: dict[str, list[dict[str, Any]]]) -> None:
    assert "<table" in data(executed["sweep"], "text/html")
    assert "outcome" in page(executed["fit"])
    assert "smollm2-135m-instruct" in page(executed["attractor"])
    assert "<table" in data(executed["attractor-table"], "text/html")
    assert "smollm2-135m-instruct" in page(executed["forks"])
    assert 'id="multiverse-data"' in page(executed["multiverse"])
    assert "<table" in data(executed["multiverse-table"], "text/html")
    assert "die" in page(executed["suite"])
    assert "1 runs" in data(executed["store"], "text/html")
    assert "entropy_bits" in data(executed["store-table"], "text/html")
