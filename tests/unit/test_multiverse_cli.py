"""`modescope multiverse`: figures, page and JSON from toy models, and clear errors for bad options."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from modescope.models.analytic import AnalyticBackend
from modescope.probes.multiverse import multiverse
from modescope.viz.multiverse_plot import plot_multiverse, visible_text
from tests.unit.test_cli import PNG_MAGIC, WIDE, assert_user_error, invoke, toy_models  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("toy_models")


def check_tree(node: dict[str, Any], cutoff: float, top: bool = True) -> int:
    """The JSON tree's invariants: children plus unexpanded equal the node; listed nodes reach the cutoff."""
    covered = math.fsum(c["joint"] for c in node["children"])
    assert covered + node["unexpanded"] == pytest.approx(node["joint"], abs=1e-12)
    if not top:
        assert node["joint"] >= cutoff
    assert set(node) == {"text", "prob", "joint", "entropy_bits", "unexpanded", "eos", "children"}
    return 1 + sum(check_tree(c, cutoff, False) for c in node["children"])


def test_multiverse_writes_every_output(tmp_path: Path) -> None:
    out = {suffix: tmp_path / f"tree.{suffix}" for suffix in ("svg", "png", "html", "json")}
    command = "multiverse --model a --model b --prompt Q: --depth 3 --cutoff 0.02 --no-cache"
    result = invoke(
        command, "--svg", out["svg"], "--png", out["png"], "--html", out["html"], "--json", out["json"], env=WIDE
    )
    assert result.exit_code == 0, result.output
    assert "most likely paths" in result.output
    assert out["png"].read_bytes().startswith(PNG_MAGIC)
    assert out["svg"].read_text().lstrip().startswith("<?xml")
    assert 'id="multiverse-data"' in out["html"].read_text()
    data = json.loads(out["json"].read_text())
    assert data["models"] == ["a", "b"] and [t["model"] for t in data["trees"]] == ["a", "b"]
    for tree in data["trees"]:
        assert tree["root"]["joint"] == 1.0
        assert check_tree(tree["root"], 0.02) > 1
    assert data["union"]["children"] and len(data["union"]["children"][0]["joints"]) == 2


def test_max_nodes_truncation_is_reported(tmp_path: Path) -> None:
    json_path = tmp_path / "t.json"
    result = invoke(
        "multiverse --model a --prompt Q: --depth 4 --cutoff 0.001 --max-nodes 30 --no-cache --json", json_path
    )
    assert result.exit_code == 0, result.output
    assert "--max-nodes 30" in result.output
    data = json.loads(json_path.read_text())
    assert data["truncated"] and data["notices"]
    assert check_tree(data["trees"][0]["root"], 0.001) - 1 == 30


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        ("--depth 0", "--depth must be an integer of at least 1"),
        ("--cutoff 0", "--cutoff must be a probability strictly between 0 and 1"),
        ("--cutoff 1.5", "--cutoff must be a probability"),
        ("--max-nodes 0", "--max-nodes must be at least 1"),
        ("--prefix ?", "cannot encode the prefix"),
        ("--model a --model a", "listed twice"),
    ],
)
def test_bad_options_exit_2(options: str, phrase: str) -> None:
    assert_user_error(invoke(f"multiverse --prompt Q: --no-cache {options}"), phrase)


def test_unwritable_output_is_refused_before_expanding(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_user_error(invoke("multiverse --model a --prompt Q: --png", blocker / "x.png"), "cannot create the folder")


def test_visible_text_shows_invisible_characters() -> None:
    assert visible_text(" Yes") == "␣Yes"
    assert visible_text("\n\n") == "⏎⏎"
    assert visible_text("a b ") == "a b␣"
    assert visible_text("  ") == "␣␣"


def test_plot_of_a_renormalized_view(tmp_path: Path) -> None:
    toy = AnalyticBackend(["a", " b", "c", "\n"], name="toy", seed=4, sharpness=2.0)
    tree = multiverse(toy, "a", depth=3, cutoff=0.02)
    node = next(c for c in tree.root.children if c.children)
    [png] = plot_multiverse(tree, [tmp_path / "view.png"], view=tree.view(node))
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_zoom_renormalizes_the_figures_and_refuses_a_missing_step(tmp_path: Path) -> None:
    json_path, png = tmp_path / "t.json", tmp_path / "zoom.png"
    assert invoke("multiverse --model a --prompt Q: --depth 3 --cutoff 0.02 --json", json_path).exit_code == 0
    first = json.loads(json_path.read_text())["trees"][0]["root"]["children"][0]
    result = invoke("multiverse --model a --prompt Q: --depth 3 --cutoff 0.02 --zoom", first["text"], "--png", png)
    assert result.exit_code == 0, result.output
    assert f"p = {first['joint']:.3g}" in result.output
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert_user_error(invoke("multiverse --model a --prompt Q: --depth 3 --cutoff 0.02 --zoom nowhere"), "no step")


def test_through_eos_expands_past_the_end(tmp_path: Path) -> None:
    stops, goes = tmp_path / "stops.json", tmp_path / "goes.json"
    command = "multiverse --model a --prompt Q: --depth 2 --cutoff 0.001 --no-cache --json"
    assert invoke(command, stops).exit_code == 0
    assert invoke(command, goes, "--no-stop-at-eos").exit_code == 0

    def eos_children(path: Path) -> int:
        root = json.loads(path.read_text())["trees"][0]["root"]
        return sum(len(c["children"]) for c in root["children"] if c["eos"])

    assert eos_children(stops) == 0 and eos_children(goes) > 0
