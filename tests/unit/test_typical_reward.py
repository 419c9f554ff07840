"""The typicality reward (`typical`: the mean token log-probability of a completion under a reference model) and
reward specs that mix it with text rewards, on the tiny in-process models of the lab tests."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modescope.cli.lab import reproduce_command
from modescope.engine import decode
from modescope.errors import ModescopeError
from modescope.lab import probe as probe_module
from modescope.lab.rewards import RewardSpec, make_reward, parse_reward
from modescope.lab.train import LabConfig, LabRun, check_same_tokenizer, run_lab
from modescope.models.hf import HFBackend
from tests.unit.test_cli import assert_user_error
from tests.unit.test_lab import HELD, PROMPTS, bag_of_trigrams, lab_cli, prefers_a, read_curves, tiny_config
from tests.unit.tiny_models import tiny_backend, tiny_tokenizer

runner = CliRunner()


def hand_typicality(backend: HFBackend, prompt: Sequence[int], completion: Sequence[int]) -> float:
    """The mean log-probability of the completion's tokens, one next-token distribution at a time."""
    prefixes = [[*prompt, *completion[:j]] for j in range(len(completion))]
    logprobs = backend.next_logprobs(prefixes)
    return sum(float(logprobs[j, token]) for j, token in enumerate(completion)) / len(completion)


def typical_run(out: Path, spec: str, reference: HFBackend | None = None, **changes: Any) -> LabRun:
    """A lab run of the tiny model against a reward spec (and a reference model, recorded as 'tiny-other')."""
    if reference is not None:
        changes["typical_reference"] = "tiny-other"
    return run_lab(
        tiny_config(reward=spec, **changes),
        out,
        tiny_backend(),
        parse_reward(spec),
        prompts=PROMPTS,
        held_prompts=HELD,
        number_prompt="Q: 1",
        embedder=bag_of_trigrams,
        reference=reference,
    )


class Recorder:
    """Wraps generate_many and keeps every batch it returned: (prompt ids, completion ids)."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[list[int]], list[list[int]]]] = []
        self.real = decode.generate_many

    def __call__(self, backend: Any, prompts: Sequence[Sequence[int]], **options: Any) -> Any:
        runs = self.real(backend, prompts, **options)
        self.batches.append(([list(p) for p in prompts], [[t.id for t in r.tokens] for r in runs]))
        return runs


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recording = Recorder()
    monkeypatch.setattr("modescope.engine.decode.generate_many", recording)  # the training steps
    monkeypatch.setattr(probe_module, "generate_many", recording)  # the checkpoint probes
    return recording


# --- the spec ------------------------------------------------------------------------------------------------------


def test_spec_syntax_terms_and_weights() -> None:
    spec = parse_reward("typical")
    assert [(t.name, t.weight, t.typical) for t in spec.terms] == [("typical", 1.0, True)]
    assert spec.typical_weight == 1.0 and spec.text_terms == ()
    spec = parse_reward(" typical + 0.5*sentiment + -2 * tests.unit.test_lab:prefers_a ")
    assert [(t.name, t.weight) for t in spec.terms] == [
        ("typical", 1.0),
        ("sentiment", 0.5),
        ("tests.unit.test_lab:prefers_a", -2.0),
    ]
    assert spec.terms[2].function is prefers_a and spec.typical_weight == 1.0
    assert parse_reward("format").typical_weight == 0.0 and not parse_reward("format").has_typical
    # the text rewards alone are still (prompt, completion) callables
    assert make_reward("tests.unit.test_lab:prefers_a") is prefers_a
    with pytest.raises(ModescopeError, match="not a single text reward"):
        make_reward("typical")


def test_weights_combine_as_stated() -> None:
    spec = parse_reward("2*typical+0.5*tests.unit.test_lab:prefers_a")
    texts = scores = spec.text_scores(["p", "p"], ["aaaa", "abab"])
    assert texts == {"tests.unit.test_lab:prefers_a": [1.0, 0.5]}
    assert spec.combine(scores, [-1.0, -3.0]) == pytest.approx([2 * -1.0 + 0.5 * 1.0, 2 * -3.0 + 0.5 * 0.5])
    only_text = parse_reward("-1*tests.unit.test_lab:prefers_a")
    assert only_text.combine(only_text.text_scores(["p"], ["aa"]), None) == [-1.0]
    with pytest.raises(ValueError, match="typicality"):
        spec.combine(scores, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "the reward is empty"),
        ("typical+", "has an empty term"),
        ("typical++sentiment", "has an empty term"),
        ("x*typical", "the weight 'x' is not a number"),
        ("typical-0.5*sentiment", "the weight 'typical-0.5' is not a number"),
        ("nan*typical", "must be a finite number"),
        ("happiness", "unknown reward 'happiness'; use one of sentiment, format, typical"),
        ("typical+0.5*happiness", "unknown reward 'happiness'"),
        ("typical+2*typical", "names 'typical' twice"),
        ("0.5*", "'0.5*' is not a term"),
        ("good vibes", "'good vibes' is not a term"),
        ("no_such_module_here:reward", "cannot import the reward module"),
    ],
)
def test_bad_specs_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ModescopeError) as caught:
        parse_reward(spec)
    assert message in str(caught.value)


# --- the value ------------------------------------------------------------------------------------------------------


def test_the_reward_is_the_start_models_mean_token_logprob(tmp_path: Path, recorder: Recorder) -> None:
    """At every step and probe the typical term is the start model's mean log-probability of the sampled
    tokens, and the step's reward is the weighted sum of its terms."""
    run = typical_run(tmp_path / "run", "2*typical+0.5*tests.unit.test_lab:prefers_a", steps=2, checkpoint_every=2)
    start = tiny_backend()  # the tiny model is the same at every call: the start model, untrained
    probe0, step1, step2, probe2 = recorder.batches
    curves = read_curves(tmp_path / "run")
    steps = [r for r in curves if r["kind"] == "step"]
    for batch, record in ((step1, steps[0]), (step2, steps[1])):
        typical = [hand_typicality(start, p, c) for p, c in zip(*batch, strict=True)]
        mean_typical = sum(typical) / len(typical)
        terms = record["reward_terms"]
        assert terms["typical"] == pytest.approx(mean_typical, abs=1e-9)
        assert record["reward"] == pytest.approx(2 * mean_typical + 0.5 * terms["tests.unit.test_lab:prefers_a"])
    # the checkpoint probes report the term too, per sample and on average
    for batch, checkpoint in ((probe0, run.checkpoints[0]), (probe2, run.checkpoints[-1])):
        typical = [hand_typicality(start, p, c) for p, c in zip(*batch, strict=True)]
        assert [s["typicality"] for s in checkpoint["samples"]] == pytest.approx(typical, abs=1e-9)
        assert checkpoint["metrics"]["reward_terms"]["typical"] == pytest.approx(sum(typical) / len(typical))
        assert checkpoint["metrics"]["typicality_nats"] == pytest.approx(sum(typical) / len(typical))
    first = run.checkpoints[0]
    rewards = [s["reward"] for s in first["samples"]]
    expected = [2 * s["typicality"] + 0.5 * prefers_a("", s["text"]) for s in first["samples"]]
    assert rewards == pytest.approx(expected)


def test_another_reference_model_scores_the_term(tmp_path: Path, recorder: Recorder) -> None:
    other = tiny_backend(seed=1)  # same tokenizer, other weights
    typical_run(tmp_path / "run", "typical", reference=other, steps=1, checkpoint_every=1)
    step1 = recorder.batches[1]
    typical = [hand_typicality(tiny_backend(seed=1), p, c) for p, c in zip(*step1, strict=True)]
    record = next(r for r in read_curves(tmp_path / "run") if r["kind"] == "step")
    assert record["reward_terms"]["typical"] == pytest.approx(sum(typical) / len(typical), abs=1e-9)
    start_typical = [hand_typicality(tiny_backend(), p, c) for p, c in zip(*step1, strict=True)]
    assert not math.isclose(record["reward_terms"]["typical"], sum(start_typical) / len(start_typical))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["typical_reference"] == "tiny-other"


def test_a_reference_with_another_tokenizer_is_refused(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["zz"])
    other = HFBackend("other-tokenizer", tiny_backend().model, tokenizer, source="in-process")
    with pytest.raises(ModescopeError, match="'other-tokenizer' has another tokenizer than 'tiny-llama'"):
        check_same_tokenizer(tiny_backend(), other)
    with pytest.raises(ModescopeError, match="another tokenizer"):
        typical_run(tmp_path / "run", "typical", reference=other)
    with pytest.raises(ModescopeError, match="needs the typical term"):
        typical_run(tmp_path / "run", "tests.unit.test_lab:prefers_a", reference=tiny_backend())
    with pytest.raises(ModescopeError, match="both in the config and as a backend"):
        typical_run(tmp_path / "run", "typical", typical_reference="tiny")


# --- optimizing it ---------------------------------------------------------------------------------------------------


def test_a_lab_run_against_typicality_works_end_to_end(tmp_path: Path) -> None:
    """(Whether it raises typicality is measured on the real model: the tiny random model's next-token
    distributions are nearly flat, so 20 noisy steps move it about as much in either direction.)"""
    run = typical_run(tmp_path / "run", "typical")
    assert run.steps_done == 20 and run.skipped == []
    assert [c["step"] for c in run.checkpoints] == [0, 10, 20]
    for checkpoint in run.checkpoints:
        metrics = checkpoint["metrics"]
        assert metrics["reward"] == pytest.approx(metrics["reward_terms"]["typical"])
        assert metrics["typicality_nats"] == pytest.approx(metrics["reward_terms"]["typical"])  # start = reference
        assert metrics["reward"] < 0
    assert run.checkpoints[-1]["metrics"]["kl_nats"] > 0  # it moved
    steps = [r for r in read_curves(tmp_path / "run") if r["kind"] == "step"]
    assert all(r["reward"] == pytest.approx(r["reward_terms"]["typical"]) for r in steps)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["reward_terms"] == [{"name": "typical", "weight": 1.0}]
    assert info["config"]["reward"] == "typical" and info["config"]["typical_reference"] is None
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step-00020" / "modescope_adapter.json").read_text())
    assert meta["config"]["reward"] == "typical"


# --- the command line ------------------------------------------------------------------------------------------------


def test_cli_bad_spec_exits_2_with_one_line_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not load for a bad reward")

    monkeypatch.setattr("modescope.models.load", no_load)
    for spec, phrase in [
        ("typical+x*sentiment", "the weight 'x' is not a number"),
        ("typicl", "unknown reward 'typicl'"),
        ("typical+", "has an empty term"),
    ]:
        result = runner.invoke(lab_cli(), ["lab", "run", "--out", str(tmp_path / "run"), "--reward", spec])
        assert_user_error(result, phrase)
        assert len(result.output.strip().splitlines()) == 1, result.output
    result = runner.invoke(
        lab_cli(), ["lab", "run", "--out", str(tmp_path / "run"), "--reward", "sentiment", "--typical-reference", "m"]
    )
    assert_user_error(result, "--typical-reference needs the typical term")


def test_cli_runs_the_typical_reward_and_records_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.models.load", lambda name, device="auto", dtype="auto": tiny_backend())
    monkeypatch.setattr("modescope.metrics.diversity.default_embedder", lambda: bag_of_trigrams)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "run"
    options = ["--out", str(out), "--reward", "typical+0.5*tests.unit.test_lab:prefers_a", "--steps", "2"]
    options += ["--max-tokens", "6", "--checkpoint-every", "2", "--prompts-file", str(prompts), "--no-number-probe"]
    options += ["--typical-reference", "tiny-reference"]
    result = runner.invoke(lab_cli(), ["lab", "run", *options])
    assert result.exit_code == 0, result.output
    assert "typicality" in result.output
    info = json.loads((out / "run.json").read_text())
    assert "--reward 'typical+0.5*tests.unit.test_lab:prefers_a'" in info["command"]
    assert "--typical-reference tiny-reference" in info["command"]
    assert info["config"]["typical_reference"] == "tiny-reference"


def test_reproduce_command_spells_the_spec_and_the_reference() -> None:
    config = LabConfig(reward="typical+0.5*sentiment", typical_reference="smollm2-135m-instruct")
    command = reproduce_command(config, Path("out/x"), None)
    assert "--reward 'typical+0.5*sentiment'" in command
    assert command.endswith("--typical-reference smollm2-135m-instruct")
    assert "--typical-reference" not in reproduce_command(LabConfig(reward="typical"), Path("out/x"), None)


def test_a_callable_is_a_one_term_spec() -> None:
    from modescope.lab.rewards import as_spec

    spec = as_spec(prefers_a)
    assert isinstance(spec, RewardSpec) and spec.terms[0].function is prefers_a and not spec.has_typical
