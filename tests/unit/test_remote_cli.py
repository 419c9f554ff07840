"""Models behind a server (NAME@URL) on the command line, in suites and in results, without a server.

`modescope.models.load` is replaced by a recorder that returns toy models, some of them marked as top-k
servers, so these tests check that the options reach `load` and that every result records each model's tier.
The one test that goes through the real `load` points at port 9, where nothing listens.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend
from modescope.models.base import Backend, Capabilities
from modescope.server_options import ServerOptions
from modescope.store import Store
from modescope.suites.runner import ModelPool, model_identity, plan_suite, run_suite
from modescope.suites.schema import parse_suite
from tests.unit.test_cli import TOKENS, assert_user_error, invoke

SERVER = "served@http://127.0.0.1:9/v1"  # nothing listens on port 9: connecting fails at once
OTHER = "other@http://127.0.0.1:9/v1"
TOP_K = 5


class Recorder:
    """A stand-in for `modescope.models.load` that records its calls; NAME@URL names get top-k toy models."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, device: str = "auto", dtype: str = "auto", **options: Any) -> Backend:
        self.calls.append((name, options))
        backend = AnalyticBackend(TOKENS, name=name, seed=zlib.crc32(name.encode()))
        if "@http" in name:
            backend.capabilities = Capabilities("top-k", TOP_K, True, False, name)
        return backend


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr("modescope.models.load", recorder)
    return recorder


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODESCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MODESCOPE_API_KEY", "sk-secret-never-shown")


# --- the options reach load() ------------------------------------------------------------------------------


def test_server_options_reach_load_for_server_models_only_and_the_tier_is_in_sample_json(
    loads: Recorder, tmp_path: Path
) -> None:
    out = tmp_path / "samples.json"
    command = f"sample -m {SERVER} -m local --prompt x -n 1 --max-tokens 3 --tokenizer smollm2-135m-instruct"
    result = invoke(command, "--max-concurrency", "3", "--max-logprobs", "5", "--json", out)
    assert result.exit_code == 0, result.output
    assert loads.calls == [
        (SERVER, {"tokenizer": "smollm2-135m-instruct", "max_concurrency": 3, "max_logprobs": 5}),
        ("local", {}),
    ]
    data = json.loads(out.read_text())
    assert data["capabilities"][SERVER] == {
        "tier": "top-k",
        "top_k": TOP_K,
        "scores_sequences": True,
        "chat_only": False,
        "chat_template": "local",
        "server": SERVER,
        "precision": None,  # a server does not say what its weights are
    }
    assert data["capabilities"]["local"] == Capabilities().metadata()
    assert "sk-secret" not in out.read_text()


def test_a_tokenizer_per_model_and_the_defaults(loads: Recorder) -> None:
    result = invoke(f"forks -m {SERVER} -m {OTHER} --prompt x --max-tokens 2 --samples 1 --tokenizer {OTHER}=tok")
    assert result.exit_code == 0, result.output
    assert loads.calls == [(SERVER, {}), (OTHER, {"tokenizer": "tok"})]


@pytest.mark.parametrize(
    "command",
    [
        "dist --prompt x --choices 1",
        "sample --prompt x -n 1 --max-tokens 1",
        "temperature --prompt x -n 1 --max-tokens 1 --temperature 1",
        "attractor --prompt x --max-tokens 4 --swap-positions 1",
        "forks --prompt x --max-tokens 2 --samples 1",
        "multiverse --prompt x --depth 1 --no-cache",
    ],
)
def test_every_model_command_takes_the_server_options(loads: Recorder, command: str) -> None:
    result = invoke(f"{command} -m {SERVER} --max-concurrency 2 --tokenizer tok")
    # dist, temperature and multiverse may refuse a top-k model; what matters is that load() got the options
    assert loads.calls == [(SERVER, {"tokenizer": "tok", "max_concurrency": 2})], result.output


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        ("--max-concurrency 0", "--max-concurrency must be at least 1 (got 0)"),
        ("--max-logprobs -1", "--max-logprobs must be 0 or more (got -1)"),
        ("--tokenizer a=", "--tokenizer 'a=' is malformed"),
        ("--tokenizer =tok", "--tokenizer '=tok' is malformed"),
        ("--tokenizer one --tokenizer two", "--tokenizer is given twice for every model"),
        (f"--tokenizer {OTHER}=tok", f"--tokenizer names '{OTHER}', which this command does not load"),
        ("--tokenizer local=tok", "--tokenizer is for models behind a server (NAME@URL); 'local' brings its own"),
    ],
)
def test_bad_server_options_exit_2_before_any_model_loads(loads: Recorder, options: str, phrase: str) -> None:
    result = invoke(f"sample -m {SERVER} -m local --prompt x {options}")
    assert_user_error(result, phrase)
    assert loads.calls == []


def test_server_options_without_a_server_model_are_refused(loads: Recorder) -> None:
    result = invoke("sample -m local --prompt x --tokenizer tok --max-logprobs 3")
    assert_user_error(result, "--tokenizer and --max-logprobs are for models behind a server (NAME@URL)")
    assert loads.calls == []


def test_resolve_keeps_a_folder_with_an_equals_sign_whole() -> None:
    options = ServerOptions.resolve(["runs/lr=3e-4/final"], None, None, [SERVER])
    assert options.for_model(SERVER) == {"tokenizer": "runs/lr=3e-4/final"}
    assert options.for_model("local") == {}


# --- modescope models --------------------------------------------------------------------------------------


def test_models_with_a_server_prints_its_tier_and_the_probes_it_supports(loads: Recorder) -> None:
    result = invoke(f"models {SERVER} --max-logprobs 5", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert loads.calls == [(SERVER, {"max_logprobs": 5})]
    for phrase in ("served name", "served", "tier", "top-k", "top-5 alternatives", "scores given sequences"):
        assert phrase in result.output
    assert "bounds (top-5 shown)" in result.output  # dist
    assert "nodes below the top 5 count as unexpanded" in result.output  # multiverse


def test_models_cannot_reach_a_server_exits_2_with_one_line() -> None:
    result = invoke(f"models {SERVER}")
    assert_user_error(result, "connection refused")
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_models_refuses_a_name_that_is_not_a_server() -> None:
    assert_user_error(invoke("models gemma-3-270m"), "'gemma-3-270m' is not NAME@URL")
    assert_user_error(invoke("models --max-logprobs 3"), "need a NAME@URL argument")


# --- suites ------------------------------------------------------------------------------------------------

SERVER_SUITE = f"""
name = "served"

[[models]]
name = "base"
model = "toy:base"

[[models]]
name = "tuned"
model = "{SERVER}"
tokenizer = "smollm2-135m-instruct"
max_concurrency = 4
max_logprobs = 20

[[probes]]
name = "talk"
kind = "sample"
prompt = "Q: x\\nA:"
n = 1
max_tokens = 3
"""


def test_suite_model_entries_take_the_server_keys(tmp_path: Path, loads: Recorder) -> None:
    path = tmp_path / "suite.toml"
    path.write_text(SERVER_SUITE)
    plan = plan_suite(str(path))
    tuned = plan.models[1]
    assert (tuned.tokenizer, tuned.max_concurrency, tuned.max_logprobs) == ("smollm2-135m-instruct", 4, 20)
    assert tuned.server_options() == {"tokenizer": "smollm2-135m-instruct", "max_concurrency": 4, "max_logprobs": 20}
    # an unset key is left out of what is hashed and stored, so suites without servers keep their hashes
    assert plan.models[0].model_dump(mode="json") == {
        "name": "base",
        "model": "toy:base",
        "chat": False,
        "system": None,
    }

    ModelPool().get(tuned)
    assert loads.calls == [(SERVER, tuned.server_options())]

    overridden = plan_suite(str(path), tokenizer=["other-tok"], max_logprobs=0)
    assert overridden.models[1].server_options() == {"tokenizer": "other-tok", "max_concurrency": 4, "max_logprobs": 0}
    assert overridden.probes[0].cache_key != plan.probes[0].cache_key  # another tokenizer and tier: other results


def test_server_identity_is_the_spec_and_tokenizer_without_connecting() -> None:
    # port 9 refuses connections: an identity that asked the server would fail
    assert model_identity(SERVER, "tok") == f"remote:{SERVER}|tokenizer:tok"
    assert model_identity(SERVER, "tok", 5) != model_identity(SERVER, "tok")
    assert model_identity(SERVER) != model_identity(SERVER, "tok")


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (("max_concurrency = 4", "max_concurrency = 0"), "models.1.max_concurrency: Input should be greater than"),
        (("max_logprobs = 20", "max_logprobs = -1"), "models.1.max_logprobs: Input should be greater than"),
        (('model = "toy:base"', 'model = "toy:base"\ntokenizer = "t"'), "model 'base': tokenizer is for models"),
        (("max_logprobs = 20", "max_logprob = 20"), "models.1.max_logprob: unknown key"),
    ],
)
def test_bad_server_keys_in_a_suite(tmp_path: Path, change: tuple[str, str], phrase: str) -> None:
    path = tmp_path / "suite.toml"
    path.write_text(SERVER_SUITE.replace(*change, 1))
    with pytest.raises(ModescopeError) as caught:
        plan_suite(str(path))
    assert phrase in str(caught.value)


def test_run_command_passes_the_server_options(tmp_path: Path, loads: Recorder) -> None:
    path = tmp_path / "suite.toml"
    path.write_text(SERVER_SUITE)
    result = invoke("run", path, "--store", tmp_path / "store", "--max-concurrency", "2")
    assert result.exit_code == 0, result.output
    assert (SERVER, {"tokenizer": "smollm2-135m-instruct", "max_concurrency": 2, "max_logprobs": 20}) in loads.calls
    assert ("toy:base", {}) in loads.calls


EVERY_KIND = f"""
name = "kinds"

[[models]]
name = "base"
model = "toy:base"

[[models]]
name = "tuned"
model = "{SERVER}"

[[probes]]
name = "talk"
kind = "sample"
prompt = "Q: x\\nA:"
n = 1
max_tokens = 3

[[probes]]
name = "heat"
kind = "temperature"
prompt = "Q: x\\nA:"
temperatures = [1.0]
n = 1
max_tokens = 2
models = ["base"]

[[probes]]
name = "back"
kind = "attractor"
prompt = "Q: x\\nA:"
max_tokens = 4
swap_positions = 1
alternatives = 2

[[probes]]
name = "fork"
kind = "forks"
prompt = "Q: x\\nA:"
max_tokens = 2
samples = 1

[[probes]]
name = "tree"
kind = "multiverse"
prompt = "Q: x\\nA:"
depth = 1
cutoff = 0.2
"""


def test_stored_probe_outputs_record_each_models_tier(tmp_path: Path, loads: Recorder) -> None:
    path = tmp_path / "suite.toml"
    path.write_text(EVERY_KIND)
    parse_suite(EVERY_KIND)
    full, top_k = Capabilities().metadata(), Capabilities("top-k", TOP_K, True, False, SERVER).metadata()
    with Store(tmp_path / "store") as store:
        run = run_suite(plan_suite(str(path)), store)
        payloads = {name: store.probe_output(run, name).payload for name in ("talk", "heat", "back", "fork", "tree")}
    assert payloads["talk"]["capabilities"] == {"base": full, "tuned": top_k}
    assert payloads["heat"]["capabilities"] == {"base": full}
    assert [m["capabilities"] for m in payloads["back"]["models"]] == [{"base": full}, {"tuned": top_k}]
    assert {k: v["capabilities"] for k, v in payloads["fork"]["models"].items()} == {
        "base": {"base": full},
        "tuned": {"tuned": top_k},
    }
    assert payloads["tree"]["capabilities"] == {"base": full, "tuned": top_k}
    assert "sk-secret" not in json.dumps(payloads)
