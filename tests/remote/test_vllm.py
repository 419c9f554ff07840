"""modescope against a real vLLM server (CPU build) serving the same weights as the in-process SmolLM2.

Full tier: masses, samples, multiverse and attractors agree with the in-process model. Top-k tier (the same
server with the alternatives capped at 5 and 20): every candidate's interval holds the exact mass.
Sample-only tier (capped at 0): probability probes refuse. Failures: a server killed mid-probe, bad URLs,
401, a model the server does not serve, a tokenizer mismatch.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import modescope as ms
from modescope.cli import app
from modescope.engine.decode import generate
from modescope.models.base import Backend, ChatPrompt
from modescope.probes.attractors import AttractorPlan, attractor_experiment
from modescope.probes.distribution import DistributionResult
from modescope.probes.multiverse import multiverse
from modescope.probes.sampling import sample_models
from modescope.probes.temperature import outcome_level_fits, token_level_fits
from tests.remote import vllm_server
from tests.remote.conftest import API_KEY

pytestmark = pytest.mark.remote

INTEGERS = "Q: Tell me a random integer between 0 and 100.\nA: Ok, the integer is"
FARM = "Q: Which animal lives on a farm?\nA: The"
ANIMALS = [" dog", " cow", " horse", " pig", " sheep"]
runner = CliRunner()


@pytest.fixture(scope="module")
def exact_integers(local: Backend) -> DistributionResult:
    return ms.distribution(local, INTEGERS, ms.integers(0, 100))


def test_connect_detects_the_full_tier(remote: Backend, local: Backend, vllm: vllm_server.VLLMServer) -> None:
    caps = remote.capabilities
    assert (caps.tier, caps.top_k, caps.scores_sequences, caps.chat_only) == ("full", None, True, False)
    assert caps.server == vllm.spec and remote.vocab.size == local.vocab.size
    shown = runner.invoke(app, ["models", vllm.spec])
    assert shown.exit_code == 0, shown.output
    assert "full" in shown.output


def test_whole_distribution_matches_in_process(remote: Backend, local: Backend) -> None:
    ids = local.prompt_ids(INTEGERS)
    far = remote.next_logprobs([ids, [*ids, 216]])
    near = local.next_logprobs([ids, [*ids, 216]])
    assert (far.exp() - near.exp()).abs().max() < 1e-5
    assert far.exp().sum(-1).sub(1).abs().max() < 1e-9


def test_integer_masses_are_exact(
    remote: Backend, exact_integers: DistributionResult, record_property: pytest.RecordProperty
) -> None:
    started = time.perf_counter()
    far = ms.distribution(remote, INTEGERS, ms.integers(0, 100)).results[0]
    record_property("seconds", time.perf_counter() - started)
    near = exact_integers.results[0]
    assert far.bounds is None and far.capabilities["tier"] == "full"
    for a, b in zip(far.outcomes, near.outcomes, strict=True):
        assert a.mass == pytest.approx(b.mass, rel=1e-3), a.text
        assert a.mass_upper == pytest.approx(b.mass_upper, rel=1e-3), a.text
    assert far.top1 == near.top1
    # whole distributions were fetched only where a candidate's interval needed them
    assert 0 < far.stats.whole_distributions <= far.stats.nodes


def test_choice_masses_are_exact(remote: Backend, local: Backend) -> None:
    far = ms.distribution(remote, FARM, ANIMALS, leading_space="none").results[0]
    near = ms.distribution(local, FARM, ANIMALS, leading_space="none").results[0]
    for a, b in zip(far.outcomes, near.outcomes, strict=True):
        assert a.mass == pytest.approx(b.mass, rel=1e-3), a.text
        assert a.mass <= a.mass_upper
    # the rare spellings (" d" "og", ...) stay bounded by their tiny width instead of costing a request each
    assert far.stats.whole_distributions < far.stats.nodes / 4


@pytest.mark.parametrize("cap", [5, 20])
def test_top_k_bounds_hold_the_exact_masses(
    vllm: vllm_server.VLLMServer, exact_integers: DistributionResult, cap: int
) -> None:
    capped = ms.load(vllm.spec, max_logprobs=cap)
    assert (capped.capabilities.tier, capped.capabilities.top_k) == ("top-k", cap)
    bounded = ms.distribution(capped, INTEGERS, ms.integers(0, 100)).results[0]
    assert bounded.bounds == f"bounds (top-{cap} server)"
    for a, exact in zip(bounded.outcomes, exact_integers.results[0].outcomes, strict=True):
        slack = 1e-3 * exact.mass + 1e-12  # the server computes in float32 (masses agree within ~1e-4)
        assert a.mass - slack <= exact.mass <= a.mass_upper + slack, a.text
    assert any(a.mass_upper > a.mass * 1.01 for a in bounded.outcomes)  # a top-k tail really is unknown


def test_top_k_choices_bounds_hold(vllm: vllm_server.VLLMServer, local: Backend) -> None:
    capped = ms.load(vllm.spec, max_logprobs=5)
    bounded = ms.distribution(capped, FARM, ANIMALS, leading_space="none").results[0]
    exact = ms.distribution(local, FARM, ANIMALS, leading_space="none").results[0]
    for a, b in zip(bounded.outcomes, exact.outcomes, strict=True):
        assert a.mass * (1 - 1e-3) <= b.mass <= a.mass_upper * (1 + 1e-3), a.text


def test_seeded_sampling_repeats_and_records_tokens(remote: Backend, local: Backend) -> None:
    prompt = remote.prompt_ids(ChatPrompt("Tell me a story about a robot."))
    assert prompt == local.prompt_ids(ChatPrompt("Tell me a story about a robot."))
    first = generate(remote, prompt, n=6, max_tokens=16, temperature=1.0, seed=7)
    again = generate(remote, prompt, n=6, max_tokens=16, temperature=1.0, seed=7)
    other = generate(remote, prompt, n=6, max_tokens=16, temperature=1.0, seed=8)
    assert [c.text for c in first] == [c.text for c in again]
    assert [c.text for c in first] != [c.text for c in other]
    assert len({c.text for c in first}) > 1
    for record in first[0].tokens:
        assert math.isfinite(record.raw_logprob) and record.raw_logprob <= 0
        assert len(record.top) == 10 and record.top[0].logprob >= record.top[-1].logprob
        assert record.entropy_bounds is not None
        low, high = record.entropy_bounds
        assert 0 <= low <= high and math.isnan(record.entropy_bits)
    greedy = generate(remote, prompt, n=1, max_tokens=16)
    assert greedy[0].text == generate(local, prompt, n=1, max_tokens=16)[0].text


def test_sampling_probe_reports_entropy_as_bounds(remote: Backend) -> None:
    result = sample_models(remote, "Q: Name a color.\nA:", n=4, max_tokens=8, seed=1)
    metrics = result.models[0].metrics
    assert math.isnan(metrics["mean_entropy_bits"])
    assert metrics["mean_entropy_bits_low"] <= metrics["mean_entropy_bits_high"]
    assert result.to_dict()["capabilities"][remote.name]["tier"] == "full"


def test_multiverse_matches_in_process_and_keeps_its_invariants(remote: Backend, local: Backend) -> None:
    far = multiverse(remote, "Q: Are bugs real?\nA:", depth=2, cutoff=0.05, cache=False)
    near = multiverse(local, "Q: Are bugs real?\nA:", depth=2, cutoff=0.05, cache=False)
    assert [n.path_text() for n in far.nodes()] == [n.path_text() for n in near.nodes()]
    for a, b in zip(far.nodes(), near.nodes(), strict=True):
        assert a.joint() == pytest.approx(b.joint(), rel=1e-3)
        assert a.values[0] is not None and b.values[0] is not None
        if b.values[0].entropy_bits is not None:
            assert a.values[0].entropy_bits == pytest.approx(b.values[0].entropy_bits, abs=1e-3)
    for node in [far.root, *far.nodes()]:
        children = math.fsum(c.joint() or 0.0 for c in node.children)
        assert children + (node.unexpanded() or 0.0) == pytest.approx(node.joint(), abs=1e-12)


def test_multiverse_on_a_top_k_server_leaves_the_tail_unexpanded(vllm: vllm_server.VLLMServer) -> None:
    capped = ms.load(vllm.spec, max_logprobs=5)
    tree = multiverse(capped, "Q: Are bugs real?\nA:", depth=2, cutoff=0.01, cache=False)
    assert any("top 5" in notice for notice in tree.notices)
    assert all(len(node.children) <= 5 for node in [tree.root, *tree.nodes()])
    assert (tree.root.unexpanded() or 0.0) > 0.0


def test_attractor_run(remote: Backend, local: Backend) -> None:
    prompt = ChatPrompt("Write one sentence about the sea.")
    plan = AttractorPlan(swap_positions=2, alternatives=2, detour_positions=[3])
    [far] = attractor_experiment([remote], prompt, plan, max_tokens=24)
    [near] = attractor_experiment([local], prompt, plan, max_tokens=24)
    assert far.mainline.text == near.mainline.text
    assert len(far.runs) == len(near.runs) > 0
    swaps = [(a, b) for a, b in zip(far.runs, near.runs, strict=True) if a.perturbation.kind != "detour"]
    matching = sum(a.continuation.text == b.continuation.text for a, b in swaps)
    assert matching >= len(swaps) - 1  # float32 on the server may flip a near-tie
    assert far.to_dict()["capabilities"][remote.name]["tier"] == "full"


def test_both_temperature_fits_run_on_the_server(remote: Backend, local: Backend) -> None:
    """τ* of the served model against the same weights in-process: both forms find τ* = 1, divergence 0."""
    token = token_level_fits(local, remote, ChatPrompt("Name a color."), n=2, max_tokens=6, seed=0)
    outcome = outcome_level_fits(
        local, remote, "Q: Roll a die.\nA: I rolled a", ms.integers(1, 6), tokenizations="canonical"
    )
    assert [f.form for f in token + outcome] == ["token", "token", "outcome", "outcome"]
    for fit in token + outcome:
        assert fit.tau == pytest.approx(1.0, abs=0.02), fit
        assert fit.divergence_at_one < 1e-3, fit


def test_sample_only_tier_samples_and_refuses_probabilities(vllm: vllm_server.VLLMServer) -> None:
    blind = ms.load(vllm.spec, max_logprobs=0)
    assert blind.capabilities.tier == "sample-only"
    texts = [c.text for c in generate(blind, blind.prompt_ids("Q: Name a fruit.\nA:"), n=3, max_tokens=6, seed=2)]
    assert len(texts) == 3 and all(texts)
    with pytest.raises(ms.ModescopeError, match="sample-only"):
        ms.distribution(blind, INTEGERS, ms.integers(0, 10))
    with pytest.raises(ms.ModescopeError, match="whole next-token distributions"):
        blind.next_logprobs([[1, 2, 3]])
    with pytest.raises(ms.ModescopeError, match="sample-only"):
        multiverse(blind, "Q: Are bugs real?\nA:", depth=1, cache=False)
    result = runner.invoke(
        app, ["dist", "-m", blind.name, "--max-logprobs", "0", "--prompt", "Q", "--integers", "0", "9"]
    )
    assert result.exit_code == 2 and "sample-only" in result.output


def test_cli_dist_on_the_server(vllm: vllm_server.VLLMServer, tmp_path: Path) -> None:
    out = tmp_path / "dist.json"
    options = ["--max-logprobs", "20", "--leading-space", "none", "--json", str(out)]
    choices = ["--choices", " dog", "--choices", " cow"]
    result = runner.invoke(app, ["dist", "-m", vllm.spec, "--prompt", FARM, *choices, *options])
    assert result.exit_code == 0, result.output
    assert "bounds (top-20 server)" in out.read_text()


@pytest.mark.parametrize(
    ("spec", "options", "expected"),
    [
        ("smollm2-135m-instruct@http://127.0.0.1:{closed}/v1", [], "connection refused"),
        ("smollm2-135m-instruct@http://127.0.0.1:{port}/nope", [], "HTTP 404"),
        ("not-served@http://127.0.0.1:{port}/v1", [], "does not serve 'not-served'"),
        ("smollm2-135m-instruct@http://127.0.0.1:{port}/v1", ["--tokenizer", "gemma-3-270m"], "does not match"),
        ("mystery-model@http://127.0.0.1:{port}/v1", [], "does not serve"),
    ],
)
def test_bad_servers_exit_2_with_one_line(
    vllm: vllm_server.VLLMServer, spec: str, options: list[str], expected: str
) -> None:
    spec = spec.format(port=vllm.port, closed=vllm_server.free_port())
    result = runner.invoke(app, ["models", spec, *options])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3


def test_a_served_name_that_is_not_a_preset_needs_a_tokenizer(vllm: vllm_server.VLLMServer) -> None:
    spec = f"{vllm_server.ALIAS}@{vllm.base_url}"
    refused = runner.invoke(app, ["models", spec])
    assert refused.exit_code == 2 and "--tokenizer" in refused.output
    named = runner.invoke(app, ["models", spec, "--tokenizer", "smollm2-135m-instruct"])
    assert named.exit_code == 0 and "full" in named.output


def _kill_when_finished(server: vllm_server.VLLMServer, store_path: Path, probe: str) -> threading.Thread:
    """Kill the server a few seconds after `probe` is stored: in the middle of the next probe."""
    from modescope.store.store import Store

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if store_path.exists():
                with Store(store_path) as store:
                    run_id = store.latest_run()
                    if run_id is not None and probe in store.finished_probes(run_id):
                        break
            time.sleep(0.5)
        time.sleep(4.0)
        server.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_the_key_then_a_crash_mid_probe(
    vllm: vllm_server.VLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Last in this file: it kills the session's server. Without the key the server answers 401; then the
    server is killed in the middle of a suite's distribution probe, which fails with a clear error and leaves
    nothing partial in the store."""
    monkeypatch.delenv("MODESCOPE_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    refused = runner.invoke(app, ["models", vllm.spec])
    assert refused.exit_code == 2 and "401" in refused.output and "MODESCOPE_API_KEY" in refused.output
    assert API_KEY not in refused.output
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # the fallback variable
    shown = runner.invoke(app, ["models", vllm.spec])
    assert shown.exit_code == 0 and "full" in shown.output and API_KEY not in shown.output

    suite = tmp_path / "crash.toml"
    integers = INTEGERS.encode("unicode_escape").decode()
    suite.write_text(
        f'name = "crash"\n[[models]]\nname = "toy:a"\n[[models]]\nname = "served"\nmodel = "{vllm.spec}"\n'
        '[[probes]]\nname = "first"\nkind = "distribution"\nprompt = "Q: a number?\\nA:"\nchoices = [" 1", " 2"]\n'
        f'[[probes]]\nname = "second"\nkind = "distribution"\nprompt = "{integers}"\nintegers = [0, 100]\n'
    )
    store_path = tmp_path / "results.sqlite"
    killer = _kill_when_finished(vllm, store_path, "first")
    result = runner.invoke(app, ["run", str(suite), "--store", str(store_path)])
    killer.join(timeout=60)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "check that the server is up" in result.output
    from modescope.store.store import Store

    with Store(store_path) as store:
        run_id = store.latest_run()
        assert run_id is not None
        assert store.finished_probes(run_id) == ["first"]
        assert [p["name"] for p in store.probes(run_id)] == ["first"]
    assert all(API_KEY not in record.getMessage() for record in caplog.records)
    assert API_KEY.encode() not in store_path.read_bytes()
