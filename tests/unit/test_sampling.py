"""Batched sampling with per-token records, the sampling probe, its HTML page and the CLI commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modescope.engine.decode import generate, largest
from modescope.engine.samplers import SamplerSettings
from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend
from modescope.probes.sampling import sample_models
from modescope.viz.tokens_html import sampling_page
from tests.unit.test_cli import assert_user_error, invoke, toy_models  # noqa: F401 - fixture
from tests.unit.tiny_models import tiny_backend

TOKENS = ["a", "b", "c", " ", ".", "\n", "<script>", "&", "x"]


def fake_embedder(texts: list[str]) -> np.ndarray:
    """Bag-of-characters embeddings, L2-normalized: enough to tell identical texts from different ones."""
    vectors = np.array([[text.count(ch) for ch in "abcx .&"] + [1.0] for text in texts], dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def toy() -> AnalyticBackend:
    return AnalyticBackend(TOKENS, name="toy", seed=4, sharpness=1.0)


def test_same_seed_same_samples_and_labelled_probabilities(toy: AnalyticBackend) -> None:
    settings = SamplerSettings.make(temperature=1.0, top_k=3)
    first = generate(toy, [1], n=6, max_tokens=8, sampler=settings, seed=11)
    again = generate(toy, [1], n=6, max_tokens=8, sampler=settings, seed=11)
    other = generate(toy, [1], n=6, max_tokens=8, sampler=settings, seed=12)
    assert [c.text for c in first] == [c.text for c in again]
    assert [c.text for c in first] != [c.text for c in other]
    for completion in first:
        for record in completion.tokens:
            # top-3 renormalizes, so the sampled-from probability is at least the raw one
            assert record.logprob >= record.raw_logprob - 1e-12
            assert len(record.top) == 10 and record.top[0].logprob >= record.raw_logprob
            assert record.id in {a.id for a in record.top[:3]}


def test_greedy_rows_agree_and_carry_the_raw_probability(toy: AnalyticBackend) -> None:
    completions = generate(toy, [1], n=3, max_tokens=5)
    assert len({c.text for c in completions}) == 1
    for record in completions[0].tokens:
        assert record.logprob == 0.0  # a point mass
        assert record.raw_logprob == pytest.approx(record.top[0].logprob)


def test_finished_rows_leave_the_batch() -> None:
    backend = tiny_backend()
    prompt = backend.encode("Q: go")
    completions = generate(backend, prompt, n=8, max_tokens=12, temperature=3.0, seed=0, stop=["1"])
    lengths = [len(c.tokens) for c in completions]
    assert min(lengths) < 12, "no row stopped early: pick another seed"
    for c in completions:
        if c.finish_reason == "stop":
            assert "1" in c.text and "1" not in "".join(t.text for t in c.tokens[:-1])
    # one position per live row per step after the prompt: finished rows cost nothing
    assert backend.stats.tokens == len(prompt) + sum(n - 1 for n in lengths)


def test_stop_and_eos_reasons(toy: AnalyticBackend) -> None:
    completions = generate(toy, [1], n=16, max_tokens=30, temperature=1.0, seed=3, stop=["."])
    reasons = {c.finish_reason for c in completions}
    assert reasons <= {"stop", "eos", "length"} and "stop" in reasons
    for c in completions:
        if c.finish_reason == "eos":
            assert c.tokens[-1].special and c.text == "".join(t.text for t in c.tokens[:-1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be"),
        ({"max_tokens": 0}, "max tokens must be"),
        ({"stop": [""]}, "stop string is empty"),
    ],
)
def test_generate_rejects_bad_input(toy: AnalyticBackend, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ModescopeError, match=message):
        generate(toy, [1], **kwargs)  # type: ignore[arg-type]


def test_probe_reports_every_metric_and_the_json_shape(toy: AnalyticBackend) -> None:
    other = AnalyticBackend(TOKENS, name="other", seed=9, sharpness=4.0)
    result = sample_models([toy, other], "x", n=5, max_tokens=6, seed=1, embedder=fake_embedder)
    data = json.loads(json.dumps(result.to_dict()))
    assert [m["model"] for m in data["models"]] == ["toy", "other"]
    for model in data["models"]:
        assert len(model["completions"]) == 5
        token = model["completions"][0]["tokens"][0]
        assert {"id", "text", "logprob", "raw_logprob", "entropy_bits", "top"} <= set(token)
        assert {"text", "logprob"} <= set(token["top"][0])
        for name in ("distinct_1", "distinct_4", "self_bleu", "compression_ratio", "embedding_diversity"):
            assert name in model["metrics"]
        for name in ("equivalence_classes", "mean_entropy_bits", "branching_factor", "share_confident"):
            assert name in model["metrics"]
    sharp = result.models[1].metrics
    assert sharp["branching_factor"] == pytest.approx(math.exp(sharp["mean_entropy_bits"] * math.log(2)))


def test_probe_refuses_too_many_samples(toy: AnalyticBackend) -> None:
    with pytest.raises(ModescopeError, match="raise --max-n"):
        sample_models(toy, "x", n=9, max_samples=8)


def test_html_page_escapes_model_text(toy: AnalyticBackend) -> None:
    result = sample_models(toy, "<script>a.b", n=12, max_tokens=10, seed=2, embedder=fake_embedder)
    assert any("<script>" in c.text for c in result.models[0].completions)
    page = sampling_page(result)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert page.count('class="completion"') == 12


@pytest.mark.usefixtures("toy_models")
def test_sample_command_writes_json_and_html(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.metrics.diversity.default_embedder", lambda: fake_embedder)
    out = tmp_path / "s.json"
    page = tmp_path / "s.html"
    result = invoke(
        "sample --model a --model b --prompt x -n 4 --max-tokens 5 --min-p 0.05 --json", out, "--html", page
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert len(data["models"]) == 2 and data["sampler"]["min_p"] == 0.05
    assert page.read_text().startswith("<!doctype html>")


@pytest.mark.usefixtures("toy_models")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("sample --model a --prompt x --temperature -1", "temperature"),
        ("sample --model a --prompt x --top-p 0", "top-p"),
        ("sample --model a --prompt x --top-p 1.5", "top-p"),
        ("sample --model a --prompt x --min-p 1.5", "min-p"),
        ("sample --model a --prompt x -n 0", "-n must be between 1 and 1024"),
        ("sample --model a --prompt x -n 2000", "raise --max-n"),
        ("sample --model a --prompt x --stop ''", "stop string is empty"),
        ("sample --model a --prompt x --sampler-order nope", "nope"),
    ],
)
def test_sample_command_rejects_bad_input(args: str, message: str) -> None:
    assert_user_error(invoke(args), message)


@pytest.mark.usefixtures("toy_models")
def test_xtc_threshold_above_half_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.metrics.diversity.default_embedder", lambda: fake_embedder)
    result = invoke("sample --model a --prompt x -n 2 --max-tokens 3 --xtc-threshold 0.6 --xtc-probability 0.5")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "0.5" in result.output


def test_inverse_cdf_sampling_follows_the_distribution() -> None:
    import torch

    from modescope.engine.samplers import inverse_cdf_sample

    probs = torch.tensor([[0.5, 0.2, 0.0, 0.3]], dtype=torch.float64).expand(40_000, -1)
    drawn = inverse_cdf_sample(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=4).double() / len(drawn)
    assert counts[2] == 0
    assert counts.tolist() == pytest.approx([0.5, 0.2, 0.0, 0.3], abs=0.01)
    again = inverse_cdf_sample(probs, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)


def test_inverse_cdf_never_lands_on_a_zero_probability_tail() -> None:
    import torch

    from modescope.engine.samplers import inverse_cdf_sample

    probs = torch.tensor([[0.0, 1.0, 0.0, 0.0]] * 1000, dtype=torch.float64)
    assert set(inverse_cdf_sample(probs, torch.Generator().manual_seed(1)).tolist()) == {1}


@pytest.mark.parametrize("vocab", [300, 40_000])  # one partial block; chunks and blocks with a partial last one
def test_one_chunked_raw_pass_draws_what_the_whole_row_draws(vocab: int) -> None:
    import torch

    from modescope.engine.decode import entropy_bits, entropy_of
    from modescope.engine.samplers import _block_sums, inverse_cdf_sample, raw_pass, sample_raw

    logits = torch.randn(64, vocab, generator=torch.Generator().manual_seed(3)) * 4
    logprobs = torch.log_softmax(logits, dim=-1)
    logprobs[5, vocab // 2 :] = -torch.inf  # a row with a zero-probability tail (renormalized below)
    logprobs[5] = torch.log_softmax(logprobs[5], dim=-1)
    raw = raw_pass(logprobs)
    assert torch.equal(raw.cumulative, _block_sums(logprobs.exp()).double().cumsum(-1))
    for seed in range(5):
        drawn = sample_raw(logprobs, raw, torch.Generator().manual_seed(seed))
        assert torch.equal(drawn, inverse_cdf_sample(logprobs.exp(), torch.Generator().manual_seed(seed)))
        assert int(drawn[5]) < vocab // 2
    entropy = entropy_of(raw, logprobs)
    assert torch.allclose(entropy, entropy_bits(logprobs).double(), atol=1e-5, rtol=0)
    assert torch.isfinite(entropy).all()  # the -inf row goes the way entropy_bits takes it


def test_raw_draws_follow_the_distribution() -> None:
    import torch

    from modescope.engine.samplers import raw_pass, sample_raw

    logprobs = torch.tensor([[0.5, 0.2, 0.0, 0.3]], dtype=torch.float64).log().expand(40_000, -1).contiguous()
    drawn = sample_raw(logprobs, raw_pass(logprobs), torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=4).double() / len(drawn)
    assert counts[2] == 0
    assert counts.tolist() == pytest.approx([0.5, 0.2, 0.0, 0.3], abs=0.01)


@pytest.mark.usefixtures("toy_models")
def test_temperature_command_sweeps_and_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.metrics.diversity.default_embedder", lambda: fake_embedder)
    out, plot = tmp_path / "t.json", tmp_path / "t.png"
    result = invoke(
        "temperature --model a --model b --prompt x -n 3 --max-tokens 4 --temperature 0.5 --temperature 1.5 "
        "--integers 0 12 --json",
        out,
        "--plot",
        plot,
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [p["temperature"] for p in data["sweep"]] == [0.5, 0.5, 1.5, 1.5]
    forms = [(f["form"], f["source"]) for f in data["fits"]]
    assert forms == [("token", "a"), ("token", "b"), ("outcome", "a"), ("outcome", "b")]  # same toy tokenizer
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "Is it just temperature?" in result.output


@pytest.mark.usefixtures("toy_models")
def test_temperature_command_rejects_negative_temperatures() -> None:
    assert_user_error(invoke("temperature --model a --prompt x --temperature -0.5"), "temperatures must be")


def test_diversity_command_on_external_texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.metrics.diversity.default_embedder", lambda: fake_embedder)
    texts = tmp_path / "texts.jsonl"
    rows = [("p1", "a cat sat"), ("p1", "a cat sat"), ("p2", "the dog ran"), ("p2", "birds fly high")]
    texts.write_text("\n".join(json.dumps({"group": g, "text": t}) for g, t in rows) + "\n")
    out = tmp_path / "d.json"
    result = invoke("diversity --texts", texts, "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert list(data) == ["p1", "p2"]
    assert data["p1"]["equivalence_classes"] == 1 and data["p2"]["equivalence_classes"] == 2
    assert data["p1"]["distinct_1"] < data["p2"]["distinct_1"]


def test_diversity_command_rejects_bad_jsonl(tmp_path: Path) -> None:
    texts = tmp_path / "bad.jsonl"
    texts.write_text('{"group": "p", "text": "ok"}\nnot json\n')
    assert_user_error(invoke("diversity --texts", texts), "line 2")


def test_diversity_command_with_embedding_equivalence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.metrics.diversity.default_embedder", lambda: fake_embedder)
    texts = tmp_path / "texts.jsonl"
    rows = [("p", "a b c"), ("p", "c b a"), ("p", "x x x")]
    texts.write_text("\n".join(json.dumps({"group": g, "text": t}) for g, t in rows))
    out = tmp_path / "d.json"
    strict = invoke("diversity --equivalence embedding --equivalence-threshold 0.999 --texts", texts, "--json", out)
    assert strict.exit_code == 0, strict.output
    assert json.loads(out.read_text())["p"]["equivalence_classes"] == 2  # same bag of characters: one class


@pytest.mark.parametrize("architecture", ["llama", "gemma3", "analytic"])
def test_prompts_of_different_lengths_decode_in_one_batch_as_they_would_alone(architecture: str) -> None:
    """Left padding must not change anything: each row equals decoding its prompt on its own."""
    from modescope.engine.decode import generate_many

    backend = AnalyticBackend(TOKENS, seed=2) if architecture == "analytic" else tiny_backend(architecture)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 1, 2], [3, 3, 4, 5, 1]]
    together = generate_many(backend, prompts, max_tokens=6, stop=["zz"])
    for prompt, batched in zip(prompts, together, strict=True):
        (alone,) = generate(backend, prompt, max_tokens=6, stop=["zz"])
        assert [t.id for t in batched.tokens] == [t.id for t in alone.tokens]
        for a, b in zip(batched.tokens, alone.tokens, strict=True):
            assert a.raw_logprob == pytest.approx(b.raw_logprob, abs=1e-9)
            assert a.entropy_bits == pytest.approx(b.entropy_bits, abs=1e-9)


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_rows_of_a_padded_batch_finish_independently(architecture: str) -> None:
    from modescope.engine.decode import generate_many

    backend = tiny_backend(architecture)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 1, 2], [3, 3, 4, 5, 1]]
    (first,) = generate(backend, prompts[0], max_tokens=8)
    stop = [first.tokens[1].text]  # row 0 stops within two tokens; the others go on (or stop too)
    together = generate_many(backend, prompts, max_tokens=8, stop=stop)
    assert together[0].finish_reason == "stop" and len(together[0].tokens) <= 2
    for prompt, batched in zip(prompts, together, strict=True):
        (alone,) = generate(backend, prompt, max_tokens=8, stop=stop)
        assert [t.id for t in batched.tokens] == [t.id for t in alone.tokens]
        assert batched.finish_reason == alone.finish_reason
        for a, b in zip(batched.tokens, alone.tokens, strict=True):
            assert a.raw_logprob == pytest.approx(b.raw_logprob, abs=1e-9)


@pytest.mark.parametrize("size", [262_144, 49_152, 151_936, 40 * 256 + 7, 300])
def test_largest_gives_the_top_k_of_every_row(size: int) -> None:
    """`largest` (block maxima, then the chosen blocks) gives torch's top-k values on vocabularies of whole
    blocks, with a ragged tail, and too small to split; with ties, -inf entries and rows expanded from one."""
    generator = torch.Generator().manual_seed(size)
    x = torch.randn(6, size, generator=generator).log_softmax(-1)
    x[0, :] = x[0, 0]  # a whole row of ties
    x[1, size // 2 :] = -math.inf
    x[2, -3:] = 5.0  # the largest entries in the ragged tail
    x[3, 7] = x[3, size - 300] = x[3].max()  # a tie at the top, far apart
    for rows in (x, x[4:5].expand(5, -1)):
        for k in (1, 10, 50):
            values, ids = largest(rows, k)
            reference = rows.topk(k, dim=-1)
            assert torch.equal(values, reference.values)
            assert torch.equal(rows.gather(1, ids), values)  # each id holds its value
            assert all(len(set(r)) == k for r in ids.tolist())  # k distinct ids per row
