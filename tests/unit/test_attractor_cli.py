"""The attractor and forks commands on toy models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_cli import assert_user_error, invoke, toy_models  # noqa: F401 - fixture


@pytest.mark.usefixtures("toy_models")
def test_attractor_command_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    result = invoke(
        "attractor --model a --model b --prompt x --max-tokens 10 --swap-positions 3 --alternatives 3 "
        "--edit 0:1:Q --detour 2 --json",
        out,
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [m["model"] for m in data["models"]] == ["a", "b"]
    kinds = [r["kind"] for r in data["models"][0]["runs"]]
    assert kinds.count("swap") == 6 and kinds.count("edit") == 1 and kinds.count("detour") == 1
    assert 0.0 <= data["models"][0]["basin_share"] <= 1.0
    assert "basin share" in result.output


@pytest.mark.usefixtures("toy_models")
def test_forks_command_writes_json_and_html(tmp_path: Path) -> None:
    out, page = tmp_path / "f.json", tmp_path / "f.html"
    result = invoke(
        "forks --model a --prompt x --max-tokens 6 --samples 2 --outcome-regex ([0-9]) --json", out, "--html", page
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert len(data["models"]["a"]["positions"]) >= 1
    text = page.read_text()
    assert text.count('class="fork"') == len(data["models"]["a"]["positions"])

    from modescope.probes.forks import ForkPosition, ForkResult
    from modescope.viz.forks_html import forks_page

    hostile = ForkResult("<script>", [ForkPosition(0, "<script>", [], {"<b>": 1.0}, 0.0)])
    escaped = forks_page({"<m>": hostile}, "<p>")
    assert "<script" not in escaped.lower() and "&lt;script&gt;" in escaped and "<m>" not in escaped


@pytest.mark.usefixtures("toy_models")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("attractor --model a --prompt x --max-tokens 8 --edit 3:900:zz", "outside the completion"),
        ("attractor --model a --prompt x --max-tokens 8 --edit 5-9:zz", "I:J:TEXT"),
        ("attractor --model a --prompt x --max-tokens 8 --position 50", "beyond the mainline"),
        ("attractor --model a --prompt x --max-tokens 8 --alternatives 500", "vocabulary size"),
        ("forks --model a --prompt x --max-tokens 4 --outcome-regex (unclosed", "regex"),
        ("forks --model a --prompt x --max-tokens 4 --samples 0", "samples"),
    ],
)
def test_attractor_and_forks_reject_bad_input(args: str, message: str) -> None:
    assert_user_error(invoke(args), message)
