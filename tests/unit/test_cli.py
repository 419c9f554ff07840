"""The `modescope` command line, run in-process with typer's CliRunner.

Model loading is replaced by toy AnalyticBackend models (closed-form logits over a small vocabulary of digits
and punctuation), so these tests need no weights. Only the tests of model-loading errors (unknown name,
missing file, corrupt GGUF) go through the real `modescope.models.load`; they fail before any weights load.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from modescope.cli import app
from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend
from modescope.models.base import Backend

TOKENS = [str(i) for i in range(10)] + [" ", ".", "\n", "Q", ":", "A", "x", "10", "42", "12"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WIDE = {"COLUMNS": "200"}  # rich tables are cut at 80 columns otherwise

runner = CliRunner()


def invoke(command: str, *extra: str | Path, env: dict[str, str] | None = None) -> Result:
    """Run `modescope` with the words of `command` (split like a shell would) followed by `extra` arguments."""
    return runner.invoke(app, [*shlex.split(command), *map(str, extra)], env=env)


def assert_user_error(result: Result, phrase: str) -> None:
    """Exit code 2 with one `error:` line naming the problem, and no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.output.count("error:") == 1, result.output
    assert phrase in result.output, result.output


def fake_loader(max_context: int = 4096) -> Callable[..., Backend]:
    """A stand-in for `modescope.models.load`: a toy model named as asked, with its own seeded logits."""

    def load(name: str, device: str = "auto", dtype: str = "auto") -> Backend:
        return AnalyticBackend(TOKENS, name=name, seed=zlib.crc32(name.encode()), max_context=max_context)

    return load


def failing_loader(name: str, device: str = "auto", dtype: str = "auto") -> Backend:
    """A stand-in for `load` that proves the command got as far as loading models."""
    raise ModescopeError(f"fake loader reached for {name}")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep any converted-model cache the command might touch inside the test's folder."""
    monkeypatch.setenv("MODESCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def toy_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.models.load", fake_loader())


def _reject_nan(constant: str) -> Any:
    raise AssertionError(f"the JSON holds {constant}, which is not valid JSON")


# --- the happy path ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("toy_models")
def test_dist_writes_json_and_png(tmp_path: Path) -> None:
    json_path, png_path = tmp_path / "out" / "out.json", tmp_path / "out.png"
    command = "dist --model a --model b --prompt x --integers 0 12 --json"
    result = invoke(command, json_path, "--plot", png_path, env=WIDE)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert f"wrote {json_path}" in result.output

    data = json.loads(json_path.read_text(), parse_constant=_reject_nan)
    assert data["prompt"] == "x"
    candidates = [str(i) for i in range(13)]
    assert [r["model"] for r in data["results"]] == ["a", "b"]
    for r in data["results"]:
        assert isinstance(r["coverage"], float)
        assert 0.0 < r["coverage"] <= 1.0
        assert isinstance(r["entropy_bits"], float)
        assert 0.0 <= r["entropy_bits"] <= math.log2(len(candidates))
        assert [o["text"] for o in r["outcomes"]] == candidates  # candidate order, not rank order
        for o in r["outcomes"]:
            assert set(o) == {"text", "mass", "mass_upper", "prob"}
            assert isinstance(o["mass"], float)
            assert isinstance(o["prob"], float)
            assert 0.0 <= o["prob"] <= 1.0
            assert o["mass"] == pytest.approx(o["prob"] * r["coverage"], rel=1e-9, abs=1e-300)
        assert math.fsum(o["prob"] for o in r["outcomes"]) == pytest.approx(1.0, abs=1e-12)
        assert math.fsum(o["mass"] for o in r["outcomes"]) == pytest.approx(r["coverage"], rel=1e-12)

    [comparison] = data["comparisons"]
    assert {"a", "b", "kl_ab_bits", "kl_ba_bits", "js_bits", "tv", "spearman"} <= set(comparison)
    assert (comparison["a"], comparison["b"]) == ("a", "b")
    for key in ("kl_ab_bits", "kl_ba_bits", "js_bits", "tv", "spearman"):
        assert isinstance(comparison[key], float)
    assert 0.0 < comparison["js_bits"] <= 1.0  # differently seeded models disagree
    assert 0.0 < comparison["tv"] <= 1.0
    assert -1.0 <= comparison["spearman"] <= 1.0

    assert png_path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.usefixtures("toy_models")
def test_dist_prints_tables_for_each_model() -> None:
    result = invoke("dist -m first -m second --prompt Q: --choices 4 --choices 42 --choices 7", env=WIDE)
    assert result.exit_code == 0, result.output
    for heading in ("Top outcomes", "Per model", "Between models"):
        assert heading in result.output
    assert "first" in result.output
    assert "second" in result.output


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.usefixtures("toy_models")
def test_dist_json_is_valid_when_a_candidate_has_zero_mass(tmp_path: Path) -> None:
    # No token of the toy vocabulary spells "Z", so its mass is exactly 0.
    json_path = tmp_path / "out.json"
    result = invoke("dist --model a --model b --prompt x --choices 1 --choices Z --json", json_path)
    assert result.exit_code == 0, result.output
    data = json.loads(json_path.read_text(), parse_constant=_reject_nan)
    assert data["results"][0]["entropy_bits"] == pytest.approx(0.0, abs=1e-12)


# --- a user's mistakes: exit code 2 and one clear line -----------------------------------------------------


@pytest.mark.usefixtures("toy_models")
@pytest.mark.parametrize("content", ["", "\n  \n\n"], ids=["empty", "blank-lines"])
def test_empty_candidate_set(tmp_path: Path, content: str) -> None:
    choices = tmp_path / "choices.txt"
    choices.write_text(content)
    result = invoke("dist --model a --prompt x --choices-file", choices)
    assert_user_error(result, "the candidate set is empty")


@pytest.mark.usefixtures("toy_models")
def test_candidate_set_over_the_default_limit() -> None:
    result = invoke("dist --model a --prompt x --integers 0 100000")
    assert_user_error(result, "100,001 candidates is more than the limit of 100,000")
    assert "--max-candidates" in result.output


@pytest.mark.parametrize("limit", ["100001", "200000"])
def test_max_candidates_raises_the_limit(monkeypatch: pytest.MonkeyPatch, limit: str) -> None:
    # The loader fails on purpose: reaching it shows the 100,001 candidates passed the size check.
    monkeypatch.setattr("modescope.models.load", failing_loader)
    result = invoke(f"dist --model a --prompt x --integers 0 100000 --max-candidates {limit}")
    assert_user_error(result, "fake loader reached for a")
    assert "more than the limit" not in result.output


def test_prompt_longer_than_the_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.models.load", fake_loader(max_context=8))
    long_prompt = "x" * 20  # 20 tokens of the toy vocabulary
    result = invoke(f"dist --model small --prompt {long_prompt} --integers 0 3")
    assert_user_error(result, "model 'small' has a context of 8 tokens but this needs 20")


def test_unknown_model_name() -> None:
    result = invoke("dist --model no-such-model --prompt x --integers 0 3")
    assert_user_error(result, "unknown model 'no-such-model'")
    assert "gemma-3-270m" in result.output  # the message lists the presets


def test_missing_model_file() -> None:
    result = invoke("dist --model /nonexistent/model.gguf --prompt x --integers 0 3")
    assert_user_error(result, "model file '/nonexistent/model.gguf' does not exist")


def test_corrupt_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(range(256)) * 4)
    result = invoke("dist --prompt x --integers 0 3 --model", bad)
    assert_user_error(result, "is not a readable GGUF file")
    assert str(bad) in result.output
    assert not (tmp_path / "cache" / "converted").exists()  # refused before any conversion started


@pytest.mark.usefixtures("toy_models")
def test_integer_range_with_lo_above_hi() -> None:
    result = invoke("dist --model a --prompt x --integers 5 3")
    assert_user_error(result, "integer range 5..3 is empty")


@pytest.mark.usefixtures("toy_models")
def test_prompt_file_that_is_not_utf8(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"\xff\xfe\xfa")
    result = invoke("dist --model a --integers 0 3 --prompt-file", prompt)
    assert_user_error(result, "is not valid UTF-8")
    assert "prompt.txt" in result.output


@pytest.mark.usefixtures("toy_models")
def test_missing_prompt_file(tmp_path: Path) -> None:
    result = invoke("dist --model a --integers 0 3 --prompt-file", tmp_path / "nope.txt")
    assert_user_error(result, "does not exist")


@pytest.mark.usefixtures("toy_models")
def test_both_prompt_and_prompt_file(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("x")
    result = invoke("dist --model a --prompt x --integers 0 3 --prompt-file", prompt)
    assert_user_error(result, "give exactly one of --prompt and --prompt-file")


@pytest.mark.usefixtures("toy_models")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("dist --model a --integers 0 3", "give exactly one of --prompt and --prompt-file"),
        ("dist --model a --prompt x --choices 4 --choices 2 --choices 4", "candidate '4' is listed twice"),
        ("dist --model a --model a --prompt x --integers 0 3", "a model is listed twice"),
        ("dist --model a --prompt x --integers 0 3 --choices 4", "give exactly one candidate set"),
        ("dist --model a --prompt x --integers 0 3 --top 0", "--top must be at least 1"),
        ("dist --model a --prompt x --integers 0 3 --system s", "--system and --prefill need --chat"),
    ],
)
def test_inconsistent_options(args: str, message: str) -> None:
    assert_user_error(invoke(args), message)


# --- help and the model list -------------------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    result = invoke("--help", env=WIDE)
    assert result.exit_code == 0, result.output
    for command in ("dist", "models"):  # each starts a row of the Commands panel
        assert re.search(rf"^\W*{command}\s", result.output, re.MULTILINE), result.output


def test_models_lists_both_presets() -> None:
    result = invoke("models", env=WIDE)
    assert result.exit_code == 0, result.output
    assert "gemma-3-270m" in result.output
    assert "smollm2-135m-instruct" in result.output


def test_models_shows_full_preset_names_in_an_80_column_terminal() -> None:
    result = invoke("models", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct" in result.output
