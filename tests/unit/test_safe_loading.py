"""Safe model loading: no code from a model's files runs unless the user opts in.

Tiny transformers models (tests/unit/tiny_models.py) are saved to folders the way the hub holds them:
safetensors, pickle (`pytorch_model.bin`), a crafted pickle whose unpickling runs code (it creates a marker
file), a config whose `auto_map` names a Python module shipped in the folder (importing it creates a marker
file), and peft adapters saved either way. Each is loaded through the real `modescope.models.load` (and the
CLI), and the markers show whether any code from the folder ran.

The threading tests swap `modescope.models.load` for a recorder, to check that every command that loads
models hands --trust-remote-code and --allow-pickle on to it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from typer.testing import CliRunner, Result

import modescope as ms
from modescope.cli import app
from modescope.errors import ModescopeError
from modescope.models.adapters import attach_adapter, load_with_adapter
from modescope.models.analytic import AnalyticBackend
from modescope.models.base import Backend
from modescope.models.hf import HFBackend
from modescope.models.safety import LoadPolicy, RefusedModel, pickle_weights, remote_code_needed
from tests.unit.tiny_models import tiny_backend, tiny_tokenizer

runner = CliRunner()
PREFIXES = ["Q: 12", "A: 10, 2"]


def invoke(*parts: str | Path) -> Result:
    """Run `modescope`: strings are split like a shell would, paths (and a BASE+ADAPTER spec) kept whole."""
    words = [word for part in parts for word in (shlex.split(part) if isinstance(part, str) else [str(part)])]
    return runner.invoke(app, words, env={"COLUMNS": "200"})


def assert_user_error(result: Result, *phrases: str) -> None:
    """Exit code 2 with one `error:` line, no traceback, naming every phrase."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.count("error:") == 1, result.output
    for phrase in phrases:
        assert phrase in result.output, result.output


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub, a private converted-model cache, and transformers' copies of remote code kept in the test's
    folder (it copies a trusted folder's modules into HF_MODULES_CACHE before importing them)."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MODESCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))


# --- folders like the hub's ------------------------------------------------------------------------------------


def save_model(folder: Path, seed: int = 0) -> HFBackend:
    """A tiny llama with its tokenizer, saved as safetensors (transformers' format)."""
    backend = tiny_backend(seed=seed)
    backend.model.save_pretrained(folder)
    backend.tokenizer.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return backend


def to_pickle(folder: Path) -> None:
    """Replace the folder's safetensors weights by the same tensors in a pickle (what older checkpoints hold)."""
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def payload(marker: Path) -> Any:
    """An object whose unpickling runs code: `exec` creates `marker` (a real payload would do anything)."""

    class RunsCode:
        def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
            return exec, (f"import pathlib; pathlib.Path({str(marker)!r}).touch()",)

    return RunsCode()


def crafted_pickle(path: Path, marker: Path) -> None:
    """A pytorch_model.bin that looks like a checkpoint (a real tensor) and carries the payload."""
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "extra": payload(marker)}, path)


@pytest.fixture
def safetensors_folder(tmp_path: Path) -> Path:
    save_model(tmp_path / "safe")
    return tmp_path / "safe"


@pytest.fixture
def pickle_folder(tmp_path: Path) -> Path:
    save_model(tmp_path / "pickled")
    to_pickle(tmp_path / "pickled")
    return tmp_path / "pickled"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


@pytest.fixture
def malicious_folder(tmp_path: Path, marker: Path) -> Path:
    folder = tmp_path / "malicious"
    save_model(folder)
    (folder / "model.safetensors").unlink()
    crafted_pickle(folder / "pytorch_model.bin", marker)
    return folder


def logprobs(backend: Backend) -> torch.Tensor:
    return backend.next_logprobs([backend.encode(p) for p in PREFIXES])


# --- the crafted pickle is dangerous ---------------------------------------------------------------------------


def test_the_crafted_pickle_runs_code_when_unpickled_the_unsafe_way(tmp_path: Path) -> None:
    control = tmp_path / "control-marker"
    crafted_pickle(tmp_path / "control.bin", control)
    assert not control.exists()  # saving it ran nothing
    torch.load(tmp_path / "control.bin", weights_only=False)  # what loaders did before torch 2.6
    assert control.exists()


# --- pickle weights ---------------------------------------------------------------------------------------------


def test_pickle_weights_are_refused_without_allow_pickle(pickle_folder: Path) -> None:
    with pytest.raises(RefusedModel, match=r"only pickle \('.*pytorch_model\.bin'\).*--allow-pickle"):
        ms.load(str(pickle_folder), device="cpu")


def test_a_crafted_pickle_is_refused_before_it_is_read(malicious_folder: Path, marker: Path) -> None:
    with pytest.raises(ModescopeError, match=r"pytorch_model\.bin"):
        ms.load(str(malicious_folder), device="cpu")
    assert not marker.exists()
    result = invoke("dist --model", malicious_folder, "--prompt Q: --choices 1 --choices 2 --device cpu")
    assert_user_error(result, "pytorch_model.bin", "--allow-pickle")
    assert not marker.exists()


def test_allow_pickle_loads_legitimate_pickle_weights_exactly(safetensors_folder: Path, pickle_folder: Path) -> None:
    from_pickle = ms.load(str(pickle_folder), device="cpu", allow_pickle=True)
    from_safetensors = ms.load(str(safetensors_folder), device="cpu")
    assert torch.equal(logprobs(from_pickle), logprobs(from_safetensors))


def test_allow_pickle_still_refuses_a_pickle_that_would_run_code(malicious_folder: Path, marker: Path) -> None:
    # transformers reads pytorch_model.bin with torch.load(weights_only=True), whose unpickler allows tensors
    # and plain containers only: the payload's `exec` is refused, never called
    with pytest.raises(RefusedModel, match="weights-only loader refused them"):
        ms.load(str(malicious_folder), device="cpu", allow_pickle=True)
    assert not marker.exists()
    result = invoke("dist --model", malicious_folder, "--prompt Q: --choices 1 --choices 2 --allow-pickle")
    assert_user_error(result, "weights-only loader refused")
    assert not marker.exists()


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_safetensors_are_read_and_a_pickle_beside_them_is_never_opened(
    safetensors_folder: Path, marker: Path, allow_pickle: bool
) -> None:
    crafted_pickle(safetensors_folder / "pytorch_model.bin", marker)
    crafted_pickle(safetensors_folder / "training_args.bin", marker)
    backend = ms.load(str(safetensors_folder), device="cpu", allow_pickle=allow_pickle)
    assert torch.isfinite(logprobs(backend)).all()
    assert not marker.exists()


def test_weights_not_seen_beforehand_are_read_as_safetensors_only(
    pickle_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a hub id not cached yet is fetched by transformers: use_safetensors=True keeps it off pytorch_model.bin,
    # and the error still names the option
    monkeypatch.setattr("modescope.models.hf.check_model_folder", lambda *args: None)
    with pytest.raises(RefusedModel, match=r"no safetensors weights \(.*model\.safetensors.*--allow-pickle"):
        ms.load(str(pickle_folder), device="cpu")


def test_every_pickle_suffix_counts_and_safetensors_shards_count_as_safetensors(tmp_path: Path) -> None:
    for suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".PT"):
        folder = tmp_path / f"weights{suffix}"
        folder.mkdir()
        (folder / f"weights{suffix}").write_bytes(b"")
        assert pickle_weights(folder, ("model.safetensors",)) == folder / f"weights{suffix}"
        (folder / "model.safetensors").write_bytes(b"")
        assert pickle_weights(folder, ("model.safetensors",)) is None
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "pytorch_model-00001-of-00002.bin").write_bytes(b"")
    (sharded / "model.safetensors.index.json").write_text("{}")
    assert pickle_weights(sharded, ("model.safetensors", "model.safetensors.index.json")) is None


def test_safetensors_folders_load_as_before(safetensors_folder: Path) -> None:
    backend = ms.load(str(safetensors_folder), device="cpu")
    assert isinstance(backend, HFBackend)
    assert backend.source == str(safetensors_folder)
    expected = tiny_backend().model.float()
    assert torch.equal(backend.model.lm_head.weight, expected.lm_head.weight)
    assert backend.encode("Q: 12") == list(tiny_tokenizer()("Q: 12")["input_ids"])


# --- remote code -----------------------------------------------------------------------------------------------

CUSTOM_MODULE = """
import pathlib

from transformers import LlamaConfig, LlamaForCausalLM

pathlib.Path({marker!r}).touch()  # importing this module is running the folder's code


class CustomConfig(LlamaConfig):
    model_type = "modescope-custom"


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


def with_custom_code(folder: Path, marker: Path, model_type: str = "modescope-custom") -> Path:
    """Make a saved model folder name a module of its own in config.json's auto_map."""
    (folder / "custom_model.py").write_text(CUSTOM_MODULE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["architectures"] = ["CustomForCausalLM"]
    config["auto_map"] = {
        "AutoConfig": "custom_model.CustomConfig",
        "AutoModelForCausalLM": "custom_model.CustomForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_config_that_needs_its_own_code_is_refused_without_trust(safetensors_folder: Path, marker: Path) -> None:
    folder = with_custom_code(safetensors_folder, marker)
    with pytest.raises(RefusedModel, match=r"config.json names custom_model\.Custom.*--trust-remote-code"):
        ms.load(str(folder), device="cpu")
    assert not marker.exists()
    result = invoke("dist --model", folder, "--prompt Q: --choices 1 --choices 2 --allow-pickle")
    assert_user_error(result, "config.json", "--trust-remote-code")
    assert not marker.exists()


def test_trust_remote_code_runs_the_folders_code(safetensors_folder: Path, marker: Path) -> None:
    folder = with_custom_code(safetensors_folder, marker)
    backend = ms.load(str(folder), device="cpu", trust_remote_code=True)
    assert marker.exists()  # the opt-in reached transformers: it imported the folder's module
    assert isinstance(backend, HFBackend) and type(backend.model).__name__ == "CustomForCausalLM"


def test_transformers_own_refusal_backs_up_the_check(
    safetensors_folder: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a hub id not cached yet cannot be checked beforehand: trust_remote_code=False, passed explicitly, makes
    # transformers refuse (rather than ask on the terminal, its default), and the refusal reads like ours
    folder = with_custom_code(safetensors_folder, marker)
    monkeypatch.setattr("modescope.models.hf.local_files", lambda folder: None)
    monkeypatch.setattr("modescope.models.hf.check_model_folder", lambda *args: None)
    with pytest.raises(
        RefusedModel, match=r"^model '.*' needs Python code shipped with its files.*--trust-remote-code"
    ):
        ms.load(str(folder), device="cpu")
    assert not marker.exists()


def test_a_stale_auto_map_on_a_built_in_architecture_loads_without_running_code(
    safetensors_folder: Path, marker: Path
) -> None:
    # common on the hub: the config names custom code, but transformers has the architecture built in and,
    # under trust_remote_code=False, uses its own classes
    folder = with_custom_code(safetensors_folder, marker, model_type="llama")
    backend = ms.load(str(folder), device="cpu")
    assert type(backend.model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


def test_a_tokenizer_that_needs_its_own_code_is_refused_without_trust(safetensors_folder: Path, marker: Path) -> None:
    config_path = safetensors_folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "CustomTokenizer"
    config["auto_map"] = {"AutoTokenizer": [None, "custom_tokenizer.CustomTokenizer"]}
    config_path.write_text(json.dumps(config))
    (safetensors_folder / "custom_tokenizer.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    assert remote_code_needed(safetensors_folder) == "tokenizer_config.json names custom_tokenizer.CustomTokenizer"
    with pytest.raises(RefusedModel, match=r"tokenizer_config\.json.*--trust-remote-code"):
        ms.load(str(safetensors_folder), device="cpu")
    assert not marker.exists()


def test_a_served_models_tokenizer_needing_code_names_the_option(safetensors_folder: Path, marker: Path) -> None:
    from modescope.models.remote import RemoteOptions, _resolve_tokenizer

    folder = with_custom_code(safetensors_folder, marker)
    with pytest.raises(RefusedModel, match="--trust-remote-code"):
        _resolve_tokenizer("served", RemoteOptions(tokenizer=str(folder)))
    assert not marker.exists()


# --- adapters ----------------------------------------------------------------------------------------------------


def save_adapter(folder: Path) -> HFBackend:
    """A LoRA adapter on the tiny model, with random (not zero) B matrices so it changes the outputs; saved by
    peft as adapter_model.safetensors. Returns the model with the adapter attached."""
    base = tiny_backend()
    with warnings.catch_warnings():  # peft asks transformers a deprecated question
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(base.model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    peft_model.save_pretrained(str(folder))
    assert (folder / "adapter_model.safetensors").is_file()
    return HFBackend("tuned", peft_model.get_base_model().eval(), base.tokenizer, source="in-process")


def adapter_to_pickle(folder: Path) -> None:
    torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()


def test_a_pickle_adapter_is_refused_before_the_base_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_adapter(tmp_path / "adapter")
    adapter_to_pickle(tmp_path / "adapter")
    with pytest.raises(RefusedModel, match=r"adapter '.*' has no safetensors weights.*adapter_model\.bin.*--allow"):
        attach_adapter(tiny_backend(), tmp_path / "adapter")
    loaded: list[str] = []

    def load(name: str, **options: Any) -> HFBackend:
        loaded.append(name)
        return tiny_backend()

    monkeypatch.setattr("modescope.models.load", load)
    with pytest.raises(RefusedModel, match=r"adapter_model\.bin"):
        load_with_adapter(f"tiny+{tmp_path / 'adapter'}")
    assert loaded == []  # refused before any model time was spent


def test_allow_pickle_attaches_a_pickle_adapter_exactly(tmp_path: Path) -> None:
    tuned = save_adapter(tmp_path / "adapter")
    adapter_to_pickle(tmp_path / "adapter")
    attached = attach_adapter(tiny_backend(), tmp_path / "adapter", allow_pickle=True)
    assert torch.equal(logprobs(attached), logprobs(tuned))
    assert not torch.allclose(logprobs(tiny_backend()), logprobs(tuned))  # the adapter changes the outputs


def test_a_crafted_adapter_pickle_never_runs(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_adapter(tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    crafted_pickle(tmp_path / "adapter" / "adapter_model.bin", marker)
    with pytest.raises(RefusedModel, match=r"adapter_model\.bin"):
        attach_adapter(tiny_backend(), tmp_path / "adapter")
    with pytest.raises(RefusedModel, match="weights-only loader refused"):  # peft reads it weights-only too
        attach_adapter(tiny_backend(), tmp_path / "adapter", allow_pickle=True)
    assert not marker.exists()
    # BASE+ADAPTER on the command line: the base is a real model folder, the adapter refused first
    save_model(tmp_path / "base")
    spec = Path(f"{tmp_path / 'base'}+{tmp_path / 'adapter'}")
    assert_user_error(invoke("dist --prompt Q: --choices 1 --choices 2 --model", spec), "--allow-pickle")
    assert_user_error(invoke("dist --prompt Q: --choices 1 --choices 2 --allow-pickle --model", spec), "weights-only")
    assert not marker.exists()


def test_a_safetensors_adapter_loads_as_before_through_load(tmp_path: Path) -> None:
    tuned = save_adapter(tmp_path / "adapter")
    save_model(tmp_path / "base")
    backend = ms.load(f"{tmp_path / 'base'}+{tmp_path / 'adapter'}", device="cpu")
    assert torch.allclose(logprobs(backend).double(), logprobs(tuned), atol=1e-4)  # base saved float64, loaded float32


# --- the options reach every loader ------------------------------------------------------------------------------

BOTH = "--trust-remote-code --allow-pickle"
COMMANDS = {
    "dist": "dist -m stop --prompt Q: --choices 1 --choices 2",
    "dist over a prompt set": "dist -m stop --prompts-file open-ended --choices 1 --choices 2 --store {tmp}/store",
    "sample": "sample -m stop --prompt Q: -n 2",
    "sample --guide": "sample -m toy --guide stop --prompt Q: -n 2",
    "temperature": "temperature -m stop --prompt Q: -n 2",
    "attractor": "attractor -m stop --prompt Q:",
    "forks": "forks -m stop --prompt Q:",
    "multiverse": "multiverse -m stop --prompt Q: --no-cache",
    "verbalized": "verbalized 'Name a colour.' -m stop",
    "frontier --guide": "frontier 'Name a colour.' -m toy --remedy guided=0.5 --guide stop",
    "frontier": "frontier 'Name a colour.' -m stop --store {tmp}/store",
    "run": "run {tmp}/suite.toml --store {tmp}/store",
    "lab run": "lab run -m stop --out {tmp}/lab",
    "serve": "serve -m stop --port 0",
}
SUITE = """
name = "one"
[[models]]
name = "stop"
[[models]]
name = "toy"
[[probes]]
name = "d"
kind = "distribution"
prompt = "Q:"
choices = ["1", "2"]
"""


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """`modescope.models.load` replaced: it records each call's opt-ins; a name starting with `stop` then fails
    (the command ends right there), any other name is a toy model."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def load(name: str, device: str = "auto", dtype: str = "auto", **options: Any) -> Backend:
        opt_ins = {k: v for k, v in options.items() if k in ("trust_remote_code", "allow_pickle")}
        calls.append((name, opt_ins))
        if name.startswith("stop"):
            raise ModescopeError(f"fake loader stopped at {name} with {sorted(opt_ins)}")
        return AnalyticBackend([str(i) for i in range(10)] + [" ", "Q", ":"], name=name)

    monkeypatch.setattr("modescope.models.load", load)
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: None)
    return calls


@pytest.mark.parametrize("command", COMMANDS.values(), ids=list(COMMANDS))
@pytest.mark.parametrize("flags", ["", BOTH])
def test_every_command_hands_the_opt_ins_to_the_loader(
    command: str, flags: str, recorder: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> None:
    (tmp_path / "suite.toml").write_text(SUITE)
    result = invoke(f"{command.format(tmp=tmp_path)} {flags}")
    assert "fake loader stopped at stop" in result.output, result.output
    assert result.exit_code in (1, 2), result.output  # 1: a prompt-set run that stored the failed units
    expected = {"trust_remote_code": True, "allow_pickle": True} if flags else {}
    assert recorder and all(opt_ins == expected for _, opt_ins in recorder), recorder


def test_a_ray_worker_loads_with_the_runs_opt_ins(pickle_folder: Path) -> None:
    # the worker is a plain class (Ray wraps it): its pool is what loads the models on a Ray node
    from modescope.suites.ray_executor import ModelWorker
    from modescope.suites.schema import ModelEntry

    entry = ModelEntry(name="pickled", model=str(pickle_folder))
    with pytest.raises(RefusedModel, match="--allow-pickle"):
        ModelWorker("cpu", "auto").pool.get(entry)
    assert isinstance(ModelWorker("cpu", "auto", LoadPolicy(allow_pickle=True)).pool.get(entry), HFBackend)


def test_a_served_models_listing_passes_trust_remote_code(recorder: list[tuple[str, dict[str, Any]]]) -> None:
    result = invoke("models stop@http://127.0.0.1:9/v1 --trust-remote-code")
    assert_user_error(result, "fake loader stopped")
    assert recorder == [("stop@http://127.0.0.1:9/v1", {"trust_remote_code": True})]
    assert_user_error(invoke("models --trust-remote-code"), "need a NAME@URL argument")


def test_the_policy_gives_only_the_opt_ins_to_load() -> None:
    assert LoadPolicy().for_load() == {}
    assert LoadPolicy(allow_pickle=True).for_load() == {"allow_pickle": True}
    assert LoadPolicy(True, True).for_load() == {"trust_remote_code": True, "allow_pickle": True}


def test_a_hub_id_in_the_local_cache_is_checked_like_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pickle_folder: Path
) -> None:
    # the hub cache layout: models--ORG--NAME/snapshots/REVISION/<files>, refs/main naming the revision
    repo = tmp_path / "hub" / "models--someone--tiny"
    shutil.copytree(pickle_folder, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RefusedModel, match=r"only pickle.*pytorch_model\.bin"):
        ms.load("someone/tiny", device="cpu")
    # transformers reads the same cache, so with the opt-in it loads
    monkeypatch.setattr("transformers.utils.hub.HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    backend = ms.load("someone/tiny", device="cpu", allow_pickle=True)
    assert isinstance(backend, HFBackend)
