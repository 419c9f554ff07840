"""The overoptimization lab on tiny in-process models: optimization works, checkpoints load back exactly,
bad input fails clearly, and the basin share measures what it says."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from modescope.cli.lab import lab_app
from modescope.errors import ModescopeError
from modescope.lab.basin import basin
from modescope.lab.rewards import format_reward, make_reward, sentiment_reward
from modescope.lab.train import LabConfig, run_lab
from modescope.models.adapters import attach_adapter, load_with_adapter
from modescope.models.hf import HFBackend
from tests.unit.test_cli import assert_user_error
from tests.unit.tiny_models import tiny_backend

PROMPTS = ["Q: a", "Q: 12", "A: x", "Q: 7"]
HELD = ["Q: 1", "A: b"]
TARGET = "a"  # the token the test reward prefers


def prefers_a(prompt: str, completion: str) -> float:
    """The share of characters of the completion that are 'a' (a one-token target for the tiny vocabulary)."""
    return completion.count(TARGET) / max(len(completion), 1)


def bag_of_trigrams(texts: Sequence[str]) -> np.ndarray:
    """A cheap deterministic embedder, so the tests never load the sentence model."""
    out = np.full((len(texts), 32), 1e-3)
    for i, text in enumerate(texts):
        for j in range(len(text) - 2):
            out[i, sum(text[j : j + 3].encode()) % 32] += 1.0
    return out


def tiny_config(**changes: object) -> LabConfig:
    options: dict[str, object] = dict(
        model="tiny", steps=20, batch_size=8, group_size=4, max_tokens=8, learning_rate=0.05, kl_coef=0.0
    )
    options |= dict(
        checkpoint_every=10, probe_samples=4, lora_targets=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    )
    return LabConfig(**(options | changes))  # type: ignore[arg-type]


def tiny_run(out: Path, reward: object = prefers_a, backend: HFBackend | None = None, **changes: object) -> object:
    return run_lab(
        tiny_config(**changes),
        out,
        backend or tiny_backend(),
        reward,  # type: ignore[arg-type]
        prompts=PROMPTS,
        held_prompts=HELD,
        number_prompt="Q: 1",
        embedder=bag_of_trigrams,
    )


def read_curves(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]


# --- optimization ----------------------------------------------------------------------------------------------


def test_optimizing_a_one_token_reward_raises_reward_and_lowers_entropy(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "run")
    first, last = run.checkpoints[0]["metrics"], run.checkpoints[-1]["metrics"]  # type: ignore[attr-defined]
    assert [c["step"] for c in run.checkpoints] == [0, 10, 20]  # type: ignore[attr-defined]
    assert last["reward"] > first["reward"] + 0.1
    assert last["entropy_bits"] < first["entropy_bits"] - 0.2
    assert last["kl_nats"] > first["kl_nats"] == 0.0  # the policy left the start model; step 0 is the start model
    assert first["ppl_ratio"] == 1.0 and math.isfinite(last["ppl_ratio"])
    steps = [r for r in read_curves(tmp_path / "run") if r["kind"] == "step"]
    assert len(steps) == 20
    assert (tmp_path / "run" / "checkpoints" / "step-00020" / "adapter_model.safetensors").is_file()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["steps_done"] == 20 and info["skipped_steps"] == []


def test_kl_penalty_keeps_the_policy_closer_to_the_start_model(tmp_path: Path) -> None:
    free = tiny_run(tmp_path / "free", steps=10, checkpoint_every=10)
    held = tiny_run(tmp_path / "held", steps=10, checkpoint_every=10, kl_coef=1.0)
    kl_free = free.checkpoints[-1]["metrics"]["kl_nats"]  # type: ignore[attr-defined]
    kl_held = held.checkpoints[-1]["metrics"]["kl_nats"]  # type: ignore[attr-defined]
    assert kl_held < kl_free


def test_a_checkpoint_loads_back_with_identical_logits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = tiny_backend()
    tiny_run(tmp_path / "run", backend=backend, steps=10, checkpoint_every=10)
    folder = tmp_path / "run" / "checkpoints" / "step-00010"
    prefixes = [backend.encode("Q: a b"), backend.encode("A: 12,")]
    trained = backend.next_logprobs(prefixes)
    loaded = attach_adapter(tiny_backend(), folder)
    assert torch.equal(loaded.next_logprobs(prefixes), trained)
    assert not torch.allclose(tiny_backend().next_logprobs(prefixes), trained)  # the adapter changed something
    # the `base+adapter` name goes through the same loader
    monkeypatch.setattr("modescope.models.load", lambda name, device="auto", dtype="auto": tiny_backend())
    named = load_with_adapter(f"tiny+{folder}")
    assert named.name == f"tiny+{folder}"
    assert torch.equal(named.next_logprobs(prefixes), trained)


# --- bad input ---------------------------------------------------------------------------------------------------


def test_a_reward_that_raises_or_returns_nan_skips_the_step_and_the_run_goes_on(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(prompt: str, completion: str) -> float:
        calls["n"] += 1
        batch = (calls["n"] - 1) // 8  # the probes score 8 held completions at step 0, then 8 per training step
        if batch in (2, 4):
            calls["n"] = 8 * (batch + 1)  # the rest of this batch is never scored
            if batch == 2:
                raise RuntimeError("reward server down")
            return float("nan")
        return prefers_a(prompt, completion)

    run = tiny_run(tmp_path / "run", reward=flaky, steps=6, checkpoint_every=6)
    assert [s["step"] for s in run.skipped] == [2, 4]  # type: ignore[attr-defined]
    assert "RuntimeError: reward server down" in run.skipped[0]["reason"]  # type: ignore[attr-defined]
    assert "nan" in run.skipped[1]["reason"]  # type: ignore[attr-defined]
    assert run.steps_done == 4  # type: ignore[attr-defined]
    kinds = [(r["kind"], r["step"]) for r in read_curves(tmp_path / "run")]
    assert ("skipped", 2) in kinds and ("step", 3) in kinds and ("checkpoint", 6) in kinds


def test_an_adapter_for_another_base_model_is_refused(tmp_path: Path) -> None:
    tiny_run(tmp_path / "run", steps=1, checkpoint_every=1)
    folder = tmp_path / "run" / "checkpoints" / "step-00001"
    with pytest.raises(ModescopeError, match=r"was trained on base model 'tiny-llama'.*embedding weights differ"):
        attach_adapter(tiny_backend(seed=1), folder)  # same architecture and shapes, other weights
    with pytest.raises(ModescopeError, match="architecture"):
        attach_adapter(tiny_backend("gemma3"), folder)


def test_adapter_names_that_do_not_resolve_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModescopeError, match="neither a folder nor a shipped adapter"):
        load_with_adapter("tiny+no-such-adapter")
    with pytest.raises(ModescopeError, match="BASE\\+ADAPTER"):
        load_with_adapter("tiny+")
    with pytest.raises(ModescopeError, match="not an adapter folder"):
        attach_adapter(tiny_backend(), tmp_path)


def test_bad_options_and_rewards_are_clear_errors() -> None:
    with pytest.raises(ModescopeError, match="multiple of the group size"):
        tiny_config(batch_size=6).check()
    with pytest.raises(ModescopeError, match="at least 2"):
        tiny_config(group_size=1).check()
    with pytest.raises(ModescopeError, match="unknown reward"):
        make_reward("happiness")
    with pytest.raises(ModescopeError, match="cannot import"):
        make_reward("no_such_module_here:reward")


# --- rewards -------------------------------------------------------------------------------------------------------


def test_built_in_rewards() -> None:
    sentiment = sentiment_reward()
    assert sentiment("", "What a wonderful, happy day!") > 0.5 > sentiment("", "The table is made of wood.")
    assert sentiment("", "great great great") > 0.9  # hackable, which is the point
    fmt = format_reward(target_words=5)
    assert fmt("", "One two three four five.") == 1.0
    assert fmt("", "one two\nthree") < 0.5
    assert make_reward("tests.unit.test_lab:prefers_a") is prefers_a


# --- the basin share ----------------------------------------------------------------------------------------------


def test_basin_share_is_about_one_over_k_for_separate_themes_and_one_for_a_single_theme() -> None:
    rng = np.random.default_rng(0)
    themes = np.eye(4, 16)
    prompt_of = [i for i in range(4) for _ in range(5)]
    separate = np.array([themes[p] + 0.05 * rng.standard_normal(16) for p in prompt_of])
    found = basin(separate, prompt_of, k=4)
    assert found.share == pytest.approx(0.25) and found.prompts == 1
    collapsed = np.array([themes[0] + 0.05 * rng.standard_normal(16) for _ in prompt_of])
    found = basin(collapsed, prompt_of, k=4)
    assert found.share == 1.0 and found.prompts == 4 and found.clusters == 1


# --- the command line ----------------------------------------------------------------------------------------------

runner = CliRunner()


def lab_cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(lab_app, name="lab")
    return app


def test_cli_unwritable_folder_exits_2_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not load when the folder cannot be written")

    monkeypatch.setattr("modescope.models.load", no_load)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(lab_cli(), ["lab", "run", "--out", str(blocker / "run")])
    assert_user_error(result, "cannot write to the lab folder")


def test_cli_run_and_report_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.models.load", lambda name, device="auto", dtype="auto": tiny_backend())
    monkeypatch.setattr("modescope.metrics.diversity.default_embedder", lambda: bag_of_trigrams)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "run"
    options = ["--out", str(out), "--reward", "tests.unit.test_lab:prefers_a", "--steps", "4", "--max-tokens", "6"]
    options += ["--checkpoint-every", "2", "--lr", "0.05", "--prompts-file", str(prompts), "--no-number-probe"]
    result = runner.invoke(lab_cli(), ["lab", "run", *options])
    assert result.exit_code == 0, result.output
    assert "4 steps in" in result.output
    info = json.loads((out / "run.json").read_text())
    assert info["command"].startswith("modescope lab run --out")
    assert "--seed 0" in info["command"]
    again = runner.invoke(lab_cli(), ["lab", "run", *options])
    assert_user_error(again, "already holds a lab run")
    result = runner.invoke(lab_cli(), ["lab", "report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    page = (out / "report.html").read_text()
    assert "step 4" in page and "<script" not in page
    missing = runner.invoke(lab_cli(), ["lab", "report", str(tmp_path / "nothing")])
    assert_user_error(missing, "holds no lab run")
