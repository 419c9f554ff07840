"""Memory estimates before loading a model (modescope.resources): sizes read without weights, estimates equal
to hand-computed values, and the CLI refusing requests that cannot fit before any model loads."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from modescope import resources
from modescope.cli import app
from modescope.errors import ModescopeError
from modescope.models import load as real_load
from modescope.models.analytic import TOY_TOKENS
from modescope.models.presets import Preset
from modescope.resources import (
    ALTERNATIVE_BYTES,
    RECORD_BYTES,
    RUNTIME_BYTES,
    Available,
    Estimate,
    ModelShape,
    Part,
    Request,
)
from modescope.suites import schema
from modescope.suites.runner import SuitePlan, plan_entries, run_suite

GIB = 2**30
# vocabulary 1000, 2 layers, 2 KV heads of dim 8: 2 x 2 x 2 x 8 x 4 bytes = 256 bytes of KV cache per token
SMALL = ModelShape("small", vocab=1000, layers=2, kv_heads=2, head_dim=8, parameters=10_000)
KV_PER_TOKEN = 256


def held(tokens: int) -> int:
    """Positions a decoded row's KV cache holds room for: a quarter more, 64 at least (models/kv_growth.py)."""
    return tokens + max(64, tokens // 4)


def test_the_kv_room_counted_is_the_room_a_decode_keeps() -> None:
    from modescope.models.kv_growth import capacity

    for tokens in (1, 30, 255, 256, 257, 4000):
        assert resources.kv_positions(tokens) == held(tokens) == capacity(tokens)


SMALL_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 1000,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}
# attention 2 x 32 x (4 x 8) + 2 x 32 x (2 x 8) = 3072, MLP 3 x 32 x 64 = 6144, per layer; embeddings 1000 x 32
SMALL_CONFIG_PARAMETERS = 2 * (3072 + 6144) + 1000 * 32


def request(*shapes: ModelShape, prompt: int = 10) -> Request:
    return Request(list(shapes) or [SMALL], 4, prompt)


def by_name(parts: list[Part]) -> dict[str, int]:
    return {p.what: p.bytes for p in parts}


# --- estimates equal hand-computed values ------------------------------------------------------------------


def test_kv_cache_and_weights_per_model() -> None:
    gemma = resources.KNOWN_SHAPES["gemma-3-270m"]
    assert gemma.kv_bytes_per_token(4) == 2 * 18 * 1 * 256 * 4 == 36_864
    assert gemma.weight_bytes(2) == 268_098_176 * 2
    assert SMALL.kv_bytes_per_token(4) == KV_PER_TOKEN
    served = ModelShape("x@http://h/v1", 1000, 2, 2, 8, 10_000, in_process=False)
    assert served.kv_bytes_per_token(4) == 0 and served.weight_bytes(4) == 0


def test_sample_estimate() -> None:
    parts = by_name(resources.sample_parts(request(), n=4, max_tokens=5, top_alternatives=3))
    assert parts == {
        "token records": 1 * 4 * 5 * (RECORD_BYTES + 3 * ALTERNATIVE_BYTES),
        "decode buffers of small": 4 * 1000 * 8 * 6,
        "KV cache of small": 4 * held(10 + 5) * KV_PER_TOKEN,
    }


def test_sample_with_truncation_samplers_counts_more_copies() -> None:
    parts = by_name(resources.sample_parts(request(), n=4, max_tokens=5, filtered=True))
    assert parts["decode buffers of small"] == 4 * 1000 * 8 * 10


def test_sample_over_two_models_keeps_every_record_and_the_larger_decode() -> None:
    big = ModelShape("big", vocab=5000, layers=4, kv_heads=2, head_dim=8, parameters=1)
    parts = by_name(resources.sample_parts(request(SMALL, big), n=2, max_tokens=3, top_alternatives=0))
    assert parts == {
        "token records": 2 * 2 * 3 * RECORD_BYTES,
        "decode buffers of big": 2 * 5000 * 8 * 6,
        "KV cache of big": 2 * held(10 + 3) * 2 * 4 * 2 * 8 * 4,
    }


def test_sample_with_a_guide_adds_its_weights_and_rows() -> None:
    guide = ModelShape("guide", vocab=1000, layers=1, kv_heads=1, head_dim=8, parameters=500)
    parts = by_name(resources.sample_parts(request(), n=4, max_tokens=5, guide=guide))
    assert parts["weights of guide"] == 500 * 4
    assert parts["decode buffers of guide"] == 4 * 1000 * 8 * 3
    assert parts["KV cache of guide"] == 4 * held(10 + 5) * 2 * 1 * 1 * 8 * 4


def test_sampling_on_a_server_keeps_only_records() -> None:
    served = ModelShape("s@http://h/v1", vocab=1000, in_process=False)
    parts = by_name(resources.sample_parts(request(served), n=4, max_tokens=5, top_alternatives=0))
    assert parts == {"token records": 4 * 5 * RECORD_BYTES}


def test_multiverse_nodes_are_bounded_by_the_cutoff() -> None:
    # the root and (depth 3 - 1) x 1 model / cutoff 0.5 = 4 nodes that can reach the cutoff above the last depth,
    # fewer than --max-nodes 100, each forwarded with 2 spellings
    parts = by_name(resources.multiverse_parts(request(), depth=3, cutoff=0.5, max_nodes=100))
    assert parts == {"KV cache of small": 5 * 2 * (10 + 3) * KV_PER_TOKEN, "expansion buffers": 128 * 1000 * 8 * 7}


def test_multiverse_nodes_are_bounded_by_max_nodes_and_every_model_keeps_its_cache() -> None:
    other = ModelShape("other", vocab=500, layers=1, kv_heads=1, head_dim=8, parameters=1)
    parts = by_name(resources.multiverse_parts(request(SMALL, other), depth=4, cutoff=0.01, max_nodes=50))
    assert parts == {
        "KV cache of small": (1 + 50) * 2 * (10 + 4) * KV_PER_TOKEN,
        "KV cache of other": (1 + 50) * 2 * (10 + 4) * 2 * 1 * 1 * 8 * 4,
        "expansion buffers": 128 * 1500 * 8 * 7,
    }


def test_attractor_estimate() -> None:
    # 3 swap positions x (3 - 1) alternatives + 1 edit + 2 detours = 9 rows of 10 + 2 x 8 + 4 tokens
    parts = by_name(resources.attractor_parts(request(), 8, 3, 3, positions=None, edits=1, detours=2, inserted=4))
    assert parts == {
        "token records": 9 * 8 * (RECORD_BYTES + ALTERNATIVE_BYTES),
        "decode buffers of small": 9 * 1000 * 8 * 6,
        "KV cache of small": 9 * held(10 + 16 + 4) * KV_PER_TOKEN,
    }


def test_attractor_swaps_at_most_one_per_mainline_token() -> None:
    parts = by_name(resources.attractor_parts(request(), max_tokens=4, swap_positions=50, alternatives=2))
    assert parts["decode buffers of small"] == 3 * 1000 * 8 * 6


def test_forks_estimate() -> None:
    # 1 / threshold 0.25 keeps at most 4 of --max-alternatives 8: 6 positions x 4 x 2 samples = 48 rows
    parts = by_name(resources.forks_parts(request(), max_tokens=6, samples=2, threshold=0.25, max_alternatives=8))
    assert parts == {
        "token records": 48 * 6 * (RECORD_BYTES + 10 * ALTERNATIVE_BYTES),
        "decode buffers of small": 48 * 1000 * 8 * 6,
        "KV cache of small": 48 * held(10 + 12) * KV_PER_TOKEN,
    }


def test_distribution_estimate() -> None:
    # " 1" and " 22" with an optional space: 2 + 3 bytes x 2 variants x 2 spellings = 20 rows of 10 + 3 tokens
    parts = by_name(resources.distribution_parts(request(), ["1", "22"], batch_size=16, leading_space="optional"))
    assert parts == {"tree buffers of small": 16 * 1000 * 4 * 4, "KV cache of small": 20 * (10 + 3) * KV_PER_TOKEN}
    rows = by_name(resources.distribution_parts(request(), ["1", "22"], batch_size=16, leading_space="none"))
    assert rows["KV cache of small"] == (1 + 2) * 2 * (10 + 2) * KV_PER_TOKEN


def test_temperature_fit_counted_for_two_models_of_one_vocabulary() -> None:
    twin = ModelShape("twin", vocab=1000, layers=2, kv_heads=2, head_dim=8, parameters=1)
    with_fit = by_name(resources.temperature_parts(request(SMALL, twin), n=2, max_tokens=3))
    assert with_fit["token-level temperature fit"] == 9 * 32 * 1000 * 48
    other = ModelShape("other", vocab=999)
    assert "token-level temperature fit" not in by_name(resources.temperature_parts(request(SMALL, other), 2, 3))


def test_prompt_tokens_count_bytes_and_the_chat_template() -> None:
    assert resources.prompt_tokens("héllo") == 6 + 1  # 6 UTF-8 bytes and BOS
    assert resources.prompt_tokens("hi", "sys", chat=True) == 5 + resources.CHAT_TOKENS


# --- sizes without weights ---------------------------------------------------------------------------------


def test_shape_from_a_config_without_weights() -> None:
    shape = resources.shape_from_config("m", SMALL_CONFIG)
    assert shape == ModelShape("m", 1000, 2, 2, 8, SMALL_CONFIG_PARAMETERS)


def test_shape_from_a_multimodal_config_reads_its_text_part() -> None:
    shape = resources.shape_from_config("m", {"text_config": SMALL_CONFIG | {"head_dim": 16}}, parameters=7)
    assert shape == ModelShape("m", 1000, 2, 2, 16, 7)


def test_shape_from_an_incomplete_config_is_unknown() -> None:
    assert resources.shape_from_config("m", {"vocab_size": 10}) is None


def test_folder_parameters_come_from_safetensors_headers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMALL_CONFIG))
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, tmp_path / "model-1.safetensors")
    save_file({"c": torch.zeros(2, 2, 2)}, tmp_path / "model-2.safetensors")
    shape = resources.model_shape(str(tmp_path))
    assert shape == ModelShape(str(tmp_path), 1000, 2, 2, 8, 12 + 5 + 8)


def write_gguf(path: Path, vocab: int = 10) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_embedding_length(32)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_token_list([f"t{i}" for i in range(vocab)])
    writer.add_tensor("token_embd.weight", np.zeros((vocab, 32), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((32, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_shape_from_a_gguf_header(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, vocab=10)
    shape = resources.model_shape(str(path))
    # head dim 32 / 4 heads; parameters 10 x 32 + 32 x 32, as gguf's own reader counts them
    assert shape == ModelShape(str(path), 10, 2, 2, 8, 10 * 32 + 32 * 32)
    assert shape.parameters == sum(int(np.prod(t.shape)) for t in gguf.GGUFReader(str(path)).tensors)


def test_a_file_that_is_not_gguf_has_no_shape(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    assert resources.model_shape(str(path)) is None
    assert resources.model_shape(str(tmp_path / "missing.gguf")) is None


def test_presets_have_known_shapes_before_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODESCOPE_CACHE", str(tmp_path))  # nothing converted
    monkeypatch.setattr(Preset, "installed", lambda self: True)
    monkeypatch.setattr(Preset, "cache_key", lambda self: f"{self.name}-test")
    gemma = resources.model_shape("gemma-3-270m")
    assert gemma == ModelShape("gemma-3-270m", 262_144, 18, 1, 256, 268_098_176)
    adapter = resources.model_shape("smollm2-135m-sentiment-rl")  # a LoRA on its base: the base's sizes
    assert adapter == ModelShape("smollm2-135m-sentiment-rl", 49_152, 30, 3, 64, 134_515_008)


def test_a_converted_preset_is_read_from_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODESCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(Preset, "installed", lambda self: True)
    monkeypatch.setattr(Preset, "cache_key", lambda self: f"{self.name}-test")
    folder = tmp_path / "converted" / "gemma-3-270m-test"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(SMALL_CONFIG))
    assert resources.model_shape("gemma-3-270m") == ModelShape("gemma-3-270m", 1000, 2, 2, 8, SMALL_CONFIG_PARAMETERS)


def test_toy_served_and_unknown_models(tmp_path: Path) -> None:
    assert resources.model_shape("toy:a") == ModelShape("toy:a", len(TOY_TOKENS) + 1)
    (tmp_path / "config.json").write_text(json.dumps(SMALL_CONFIG))
    served = resources.model_shape("served@http://127.0.0.1:9/v1", tokenizer=str(tmp_path))
    assert served == ModelShape("served@http://127.0.0.1:9/v1", 1000, in_process=False)
    assert resources.model_shape("nobody/not-in-the-cache") is None
    assert resources.model_shape(str(tmp_path / "missing")) is None


# --- what the machine has ----------------------------------------------------------------------------------


def test_meminfo_and_cgroup_limits(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:    2000000 kB\n")
    assert resources.meminfo_available(meminfo) == 2_000_000 * 1024
    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.current").write_text("73741824\n")
    assert resources.cgroup_room(tmp_path) == 1_000_000_000
    (tmp_path / "memory.max").write_text("max\n")  # cgroup v2 without a limit
    assert resources.cgroup_room(tmp_path) is None
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))  # v1 without a limit
    (tmp_path / "memory" / "memory.usage_in_bytes").write_text("5")
    assert resources.cgroup_room(tmp_path) is None


def test_available_memory_is_bounded_by_the_cgroup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "meminfo_available", lambda: 8 * GIB)
    monkeypatch.setattr(resources, "cgroup_room", lambda: 2 * GIB)
    assert resources.available_memory() == Available(2 * GIB, "the cgroup's memory limit")
    monkeypatch.setattr(resources, "cgroup_room", lambda: None)
    assert resources.available_memory() == Available(8 * GIB, "MemAvailable")


def test_this_machine_reports_its_memory() -> None:
    found = resources.available_memory()
    assert found is not None and found.bytes > 0


def test_dtype_bytes() -> None:
    assert resources.dtype_bytes("auto", on_accelerator=False) == 4
    assert resources.dtype_bytes("auto", on_accelerator=True) == 2
    assert resources.dtype_bytes("bfloat16", on_accelerator=False) == 2


# --- the refusal -------------------------------------------------------------------------------------------


def estimate_of(*parts: Part) -> Estimate:
    return Estimate("sample", list(parts))


def test_refusal_names_the_estimate_its_parts_the_room_and_the_option() -> None:
    records = Part("token records", 3 * GIB, "--n 4,096 x --max-tokens 512 x 1,280 bytes", ("lower --n",))
    kv = Part("KV cache of m", 2 * GIB, "--n 4,096 x 512 tokens x 1 KiB per token", ("lower --max-tokens",), True)
    with pytest.raises(ModescopeError) as caught:
        resources.check_memory(estimate_of(records, kv), host=Available(4 * GIB, "MemAvailable"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("sample needs about 5 GiB, more than the 4 GiB available (MemAvailable): ")
    assert "token records: --n 4,096 x --max-tokens 512 x 1,280 bytes = 3 GiB; KV cache of m:" in message
    assert "lower --n or --max-tokens" in message


def test_enough_memory_passes() -> None:
    part = Part("token records", 3 * GIB, "x", ("lower --n",))
    resources.check_memory(estimate_of(part), host=Available(3 * GIB + 1, "MemAvailable"))


def test_weights_and_kv_cache_go_to_the_accelerator() -> None:
    kv = Part("KV cache of m", 3 * GIB, "x", ("lower --n",), True)
    records = Part("token records", GIB, "x", ("lower --n",))
    host, accelerator = Available(2 * GIB, "MemAvailable"), Available(4 * GIB, "free on cuda:0")
    resources.check_memory(estimate_of(kv, records), host=host, accelerator=accelerator)
    with pytest.raises(ModescopeError, match=r"more than the 2 GiB available \(free on cuda:0\)"):
        resources.check_memory(estimate_of(kv, records), host=host, accelerator=Available(2 * GIB, "free on cuda:0"))


def test_refusal_of_weights_alone_suggests_a_smaller_model_or_dtype() -> None:
    weights = Part("weights of m", 9 * GIB, "2,000,000,000 parameters x 4 bytes", (), True)
    with pytest.raises(ModescopeError, match="use a smaller model, --dtype bfloat16"):
        resources.check_memory(estimate_of(weights), host=Available(GIB, "MemAvailable"))


def test_the_check_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODESCOPE_MEMORY_CHECK", "off")
    resources.check_memory(estimate_of(Part("token records", 9 * GIB, "x")), host=Available(1, "MemAvailable"))


def test_sizes_read_well() -> None:
    assert resources.size_text(4.1 * 2**40) == "4.1 TiB"
    assert resources.size_text(1022 * 2**20) == "1,022 MiB"
    assert resources.size_text(36 * 2**10) == "36 KiB"
    assert resources.size_text(12) == "12 bytes"


# --- the commands refuse before loading a model ------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def small_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """4 GiB of memory, no accelerator, a model folder with a config but no weights, and a loader that fails
    the test if any model is loaded. Returns the model folder."""
    monkeypatch.setenv("MODESCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MODESCOPE_MEMORY_CHECK", raising=False)
    monkeypatch.setattr(resources, "available_memory", lambda: Available(4 * GIB, "MemAvailable"))
    monkeypatch.setattr(resources, "accelerator_memory", lambda device: None)

    def no_loading(name: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"model {name} was loaded")

    monkeypatch.setattr("modescope.models.load", no_loading)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMALL_CONFIG))
    return folder


def invoke(command: str, model: Path) -> Result:
    return runner.invoke(app, [*shlex.split(command), "-m", str(model), "--prompt", "Q: Are bugs real?"])


def assert_refused(result: Result, *phrases: str) -> None:
    """Exit code 2 with one error line naming the estimate and the options, and no model loaded."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "more than the 4 GiB available (MemAvailable)" in lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.mark.parametrize(
    ("command", "phrases"),
    [
        ("sample -n 1024 --max-tokens 1000000", ["sample needs about", "TiB", "lower --n or --max-tokens"]),
        (
            "multiverse --max-nodes 100000000 --cutoff 0.000000001 --depth 64",
            ["multiverse needs about", "lower --max-nodes or --depth, or raise --cutoff"],
        ),
        ("attractor --alternatives 1000000", ["4,999,995 rows:", "lower --alternatives or --swap-positions"]),
        ("forks --max-tokens 1000 --samples 1000", ["forks needs about", "lower --samples"]),
        ("dist --integers 1 10 --batch-size 100000000", ["tree buffers of", "lower --batch-size"]),
        ("temperature -n 100000 --max-tokens 100000", ["temperature needs about", "lower --n or --max-tokens"]),
    ],
)
def test_a_huge_request_is_refused_before_loading(small_machine: Path, command: str, phrases: list[str]) -> None:
    assert_refused(invoke(command, small_machine), *phrases)


def test_a_huge_sample_on_a_gguf_file_is_refused(small_machine: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, vocab=100_000)
    assert_refused(invoke("sample -n 1024 --max-tokens 100000", path), "decode buffers of", "vocabulary 100,000")


def test_a_normal_request_goes_on_to_load(small_machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def reached(name: str, *args: object, **kwargs: object) -> None:
        raise ModescopeError(f"the loader was reached for {name}")

    monkeypatch.setattr("modescope.models.load", reached)
    for command in ("sample -n 16 --max-tokens 64", "multiverse", "attractor", "forks", "dist --integers 1 10"):
        result = invoke(command, small_machine)
        assert result.exit_code == 2 and "the loader was reached" in result.output, (command, result.output)


def test_a_normal_request_runs(small_machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.models.load", real_load)  # a toy model: no weights to load
    result = runner.invoke(app, ["dist", "-m", "toy:a", "--prompt", "Q:", "--integers", "1", "3"])
    assert result.exit_code == 0, result.output


def test_a_suite_probe_that_cannot_fit_is_refused_before_a_run_is_recorded(small_machine: Path, tmp_path: Path) -> None:
    from modescope.store import Store

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(SMALL_CONFIG))
    probes = [
        {"name": "small", "kind": "sample", "prompt": "Q:", "n": 4},
        {"name": "big", "kind": "multiverse", "prompt": "Q:", "max_nodes": 10**9, "cutoff": 1e-9, "depth": 64},
    ]
    data = {"name": "s", "models": [{"name": "a", "model": str(small_machine)}, {"name": "b", "model": str(other)}]}
    suite = schema.Suite.model_validate(data | {"probes": probes})
    plan = plan_entries(suite, tmp_path, json.dumps(data), list(suite.models))
    with Store(tmp_path / "store.sqlite") as store:
        with pytest.raises(ModescopeError) as caught:
            run_suite(plan, store)
        assert len(store.runs()) == 0
    message = str(caught.value)
    assert message.startswith("probe 'big' (multiverse) needs about")
    assert "lower max_nodes or depth, or raise cutoff" in message
    assert f"runtime: transformers, tokenizers and the metrics' embedding model = {RUNTIME_BYTES // 2**20} MiB" in (
        message
    )


def test_models_on_the_cpu_use_no_accelerator_memory() -> None:
    assert resources.accelerator_memory("cpu") is None


def suite_plan(tmp_path: Path, model: Path, probe: dict[str, object]) -> SuitePlan:
    data = {"name": "s", "models": [{"name": "a", "model": str(model)}], "probes": [probe]}
    suite = schema.Suite.model_validate(data)
    return plan_entries(suite, tmp_path, json.dumps(data), list(suite.models), min_models=1)


def test_prompt_set_probes_sent_to_another_executor_are_left_to_it(small_machine: Path, tmp_path: Path) -> None:
    huge = {"name": "big", "kind": "multiverse", "prompts": ["a", "b"], "max_nodes": 10**9, "cutoff": 1e-9}
    plan = suite_plan(tmp_path, small_machine, huge)
    resources.check_suite(plan.probes, "cpu", "auto", executor=True)
    with pytest.raises(ModescopeError, match=r"probe 'big' \(multiverse\) needs about"):
        resources.check_suite(plan.probes, "cpu", "auto", executor=False)


def test_a_prompt_set_run_from_the_command_line_is_checked(
    small_machine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resources, "available_memory", lambda: Available(GIB, "MemAvailable"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Are bugs real?\nName a colour.\n")
    store = tmp_path / "results.sqlite"
    args = ["sample", "-m", str(small_machine), "--prompts-file", str(prompts), "--store", str(store)]
    result = runner.invoke(app, [*args, "-n", "256", "--max-tokens", "1024"])
    assert result.exit_code == 2, result.output
    assert "probe 'sample' (sample) needs about" in result.output
    assert "token records: 1 model x n 256 x max_tokens 1,024" in result.output
    assert "lower n or max_tokens" in result.output
