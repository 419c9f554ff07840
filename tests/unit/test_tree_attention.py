"""Tree calls (models/tree_attention.py): every node of a token tree forwarded against one shared key/value store
gives the log-probabilities of a full forward pass of its prefix, on tiny llama and gemma3 models (the gemma3 one
with a sliding window shorter than prompt + tree), in float64 and float32; the planned expansion gives the
level-by-level engine's masses and stats."""

from __future__ import annotations

import pytest
import torch

import modescope as ms
from modescope.engine.tree import Child, Planned, PrefixTree, per_node
from modescope.models import hf, lm_head
from modescope.models.hf import HFBackend
from modescope.models.tree_attention import TreeState
from modescope.probes.distribution import outcome_distributions
from tests.unit.tiny_models import tiny_backend

PROMPT = "Q: 12 or 7?\nA:"
# a tree of 12 nodes, 6 levels deep (deeper than the gemma3 model's sliding window of 4): (parent, token)
TREE = [(-1, 5), (-1, 17), (-1, 260), (0, 9), (0, 33), (1, 5), (3, 40), (3, 41), (6, 7), (8, 12), (2, 5), (9, 100)]


def paths(tree: list[tuple[int, int]]) -> list[tuple[int, ...]]:
    found: list[tuple[int, ...]] = []
    for parent, token in tree:
        found.append((*(found[parent] if parent >= 0 else ()), token))
    return found


def in_float32(architecture: str) -> HFBackend:
    reference = tiny_backend(architecture)
    return HFBackend(f"tiny-{architecture}-fp32", reference.model.float(), reference.tokenizer, source="in-process")


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
@pytest.mark.parametrize("split", [[0, 12], [3, 9], [1, 4, 7]])
@pytest.mark.parametrize("folded", [True, False])
def test_tree_calls_give_the_log_probabilities_of_full_passes(
    architecture: str, split: list[int], folded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not folded:  # the prompt in a pass of its own, as longer prompts go
        monkeypatch.setattr(hf, "FOLDED_PROMPT", 4)
    backend = tiny_backend(architecture)
    ids = backend.prompt_ids(PROMPT)
    assert len(ids) > 4
    head = TREE[: split[0]]
    begun = backend.tree_start(ids, [p for p, _ in head], [t for _, t in head])
    assert begun is not None
    tree, root = begun
    assert isinstance(tree, TreeState) and root.set_sums is None and len(root.logprobs) == 1 + len(head)
    found, first = [], split[0]
    for size in split[1:]:  # a parent in the same call or an earlier one
        part = TREE[first : first + size]
        found.append(backend.tree_extend(tree, [p for p, _ in part], [t for _, t in part]).logprobs)
        first += size
    reference = backend.next_logprobs([ids] + [ids + list(path) for path in paths(TREE)])
    assert torch.allclose(torch.cat([root.logprobs, *found]), reference, atol=1e-12, rtol=0)
    assert tree.nodes == len(TREE) and tree.depth(9) == 5


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
@pytest.mark.parametrize("fused", [True, False])
def test_tree_calls_in_float32_sum_token_sets(architecture: str, fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm_head, "CHUNK", 48)  # several vocabulary chunks, each summed on its own
    backend = in_float32(architecture)
    assert backend.fused_head
    backend.fused_head = fused
    ids = backend.prompt_ids(PROMPT)
    generator = torch.Generator().manual_seed(0)
    sets = (torch.rand(2, backend.vocab.size, generator=generator) < 0.3).float()
    begun = backend.tree_start(ids, [p for p, _ in TREE[:5]], [t for _, t in TREE[:5]], sets)
    assert begun is not None
    step = begun[1].then(backend.tree_extend(begun[0], [p for p, _ in TREE[5:]], [t for _, t in TREE[5:]]))
    reference = backend.next_logprobs([ids] + [ids + list(path) for path in paths(TREE)])
    assert step.logprobs.dtype == torch.float32
    assert torch.allclose(step.logprobs, reference, atol=2e-5, rtol=0)
    expected = reference.double().exp() @ sets.double().T
    assert step.set_sums is not None and step.set_sums.dtype == torch.float64
    assert torch.allclose(step.set_sums, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("folded", [True, False])
def test_tree_calls_with_columns_keep_those_of_the_whole_step(
    fused: bool, folded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree started with `columns` gives, at every step, the whole step's log-probabilities at those columns
    (fused head or transformers', the prompt in the first pass or in one of its own), looked up by token id."""
    monkeypatch.setattr(lm_head, "CHUNK", 48)
    if not folded:
        monkeypatch.setattr(hf, "FOLDED_PROMPT", 4)
    backend = in_float32("gemma3")
    backend.fused_head = fused
    ids = backend.prompt_ids(PROMPT)
    sets = (torch.rand(2, backend.vocab.size, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    columns = torch.tensor([260, 5, 100, 33, 9, 264])
    steps = []
    for kept in (None, columns):
        begun = backend.tree_start(ids, [p for p, _ in TREE[:5]], [t for _, t in TREE[:5]], sets, kept)
        assert begun is not None
        steps.append(begun[1].then(backend.tree_extend(begun[0], [p for p, _ in TREE[5:]], [t for _, t in TREE[5:]])))
    whole, picked = steps
    assert picked.columns is columns and picked.logprobs.shape == (1 + len(TREE), len(columns))
    assert torch.equal(picked.logprobs, whole.logprobs[:, columns])
    assert whole.set_sums is not None and picked.set_sums is not None
    assert torch.allclose(picked.set_sums, whole.set_sums, rtol=1e-12, atol=0)
    assert picked.at(3, [9, 264, 9]) == whole.at(3, [9, 264, 9]) == whole.logprobs[3, [9, 264, 9]].tolist()
    assert float(picked.row(7)[100]) == float(whole.row(7)[100]) == float(whole.logprobs[7, 100])


def test_tree_calls_leave_the_model_as_it_was() -> None:
    backend = tiny_backend("llama")
    implementation = backend.model.config._attn_implementation
    ids = backend.prompt_ids(PROMPT)
    begun = backend.tree_start(ids, [-1], [5])
    assert begun is not None
    backend.tree_extend(begun[0], [-1, 0], [5, 9])
    assert backend.model.config._attn_implementation == implementation
    rows, _ = backend.start(ids)  # ordinary calls go on with transformers' attention and cache
    _, step = backend.extend(rows, [0], [5])
    assert torch.allclose(step, backend.next_logprobs([[*ids, 5]]), atol=1e-12, rtol=0)


def test_a_parent_must_come_before_its_children() -> None:
    backend = tiny_backend("llama")
    with pytest.raises(ValueError, match="parents come before"):
        backend.tree_start(backend.prompt_ids(PROMPT), [1, -1], [5, 9])
    begun = backend.tree_start(backend.prompt_ids(PROMPT), [], [])
    assert begun is not None
    with pytest.raises(ValueError, match="parents come before"):
        backend.tree_extend(begun[0], [-1, 2], [5, 9])


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_the_planned_expansion_visits_what_the_level_engine_visits(architecture: str) -> None:
    backend = tiny_backend(architecture)
    ids = backend.prompt_ids(PROMPT)
    plan = [Planned(parent, token, k) for k, (parent, token) in enumerate(TREE)]
    below: dict[object, list[int]] = {}
    for k, (parent, _) in enumerate(TREE):
        below.setdefault(parent if parent >= 0 else None, []).append(k)

    def record(seen: dict[tuple[int, ...], tuple[float, torch.Tensor]]):  # type: ignore[no-untyped-def]
        def visit(node, logprobs):  # type: ignore[no-untyped-def]
            seen[node.path] = (node.logprob, logprobs.clone())
            return [Child(plan[k].token, k) for k in below.get(node.data, [])]

        return visit

    planned: dict[tuple[int, ...], tuple[float, torch.Tensor]] = {}
    each = per_node(record(planned))
    stats = PrefixTree(backend, batch_size=5).expand_planned(ids, plan, lambda nodes, step: each(nodes, step.logprobs))
    levels: dict[tuple[int, ...], tuple[float, torch.Tensor]] = {}
    PrefixTree(backend, batch_size=5).expand(ids, record(levels), None)
    assert stats is not None and set(planned) == set(levels) and len(planned) == len(TREE) + 1
    for path, (logprob, logprobs) in levels.items():
        assert planned[path][0] == pytest.approx(logprob, abs=1e-12)
        assert torch.allclose(planned[path][1], logprobs, atol=1e-12, rtol=0)
    assert (stats.nodes, stats.levels, stats.prompt_tokens) == (len(TREE), 6, len(ids))
    # the prompt with the first 5 nodes, then 5 and 2
    assert stats.tokens_forwarded == stats.minimum_tokens and stats.forward_calls == 3


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_distributions_take_tree_calls_and_keep_their_masses(architecture: str, temperature: float) -> None:
    """Tree calls (reading only the columns they need, or whole rows under a temperature) give the level path's
    masses and upper bounds."""
    backend = tiny_backend(architecture)
    candidates = ms.integers(0, 30)
    planned = ms.distribution(backend, PROMPT, candidates, temperature=temperature)
    calls = planned.results[0].stats.forward_calls
    backend.tree_start = lambda *args: None  # type: ignore[method-assign]  # as a backend without tree calls
    levels = ms.distribution(backend, PROMPT, candidates, temperature=temperature)
    for column in ("mass", "mass_upper"):
        got, reference = planned.to_pandas()[column], levels.to_pandas()[column]
        assert ((got - reference).abs() <= 1e-12 * reference + 1e-300).all()
    assert calls < levels.results[0].stats.forward_calls


def test_a_prompt_set_takes_tree_calls_one_prompt_after_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several prompts (of different lengths, one past the folded length) each get their own planned expansion:
    the level path's masses (every prompt together, left-padded), and stats of their own."""
    monkeypatch.setattr(hf, "FOLDED_PROMPT", 8)
    backend = tiny_backend("gemma3")
    prompts = [PROMPT, "1, 2,", "x"]
    candidates = ms.integers(0, 30)
    planned = outcome_distributions(backend, prompts, candidates)
    backend.tree_start = lambda *args: None  # type: ignore[method-assign]  # as a backend without tree calls
    levels = outcome_distributions(backend, prompts, candidates)
    for got, want, prompt in zip(planned, levels, prompts, strict=True):
        assert [o.text for o in got.outcomes] == [o.text for o in want.outcomes]
        for a, b in zip(got.outcomes, want.outcomes, strict=True):
            assert a.mass == pytest.approx(b.mass, rel=1e-12, abs=1e-300)
        ids = backend.prompt_ids(prompt)
        assert (got.stats.nodes, got.stats.prompt_tokens) == (want.stats.nodes, len(ids))
        assert got.stats.tokens_forwarded == got.stats.minimum_tokens
        assert got.stats.forward_calls == (1 if len(ids) <= hf.FOLDED_PROMPT else 2)  # its own passes only
    assert {r.stats.forward_calls for r in planned} == {1, 2}  # a folded prompt and one in a pass of its own
    assert levels[0].stats.forward_calls > 2  # the level path: the batch's passes, shared


@pytest.mark.parametrize("architecture", ["qwen2", "mistral", "qwen3"])
def test_tree_calls_on_the_other_families_they_take(architecture: str) -> None:
    """qwen2 with a sliding layer and mistral with a sliding window (4, under a 12-token prompt and a tree 4 deep),
    and qwen3 with its q/k norms: the same log-probabilities as full passes."""
    from transformers import (
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    from tests.unit.tiny_models import tiny_sizes, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    common = tiny_sizes(tokenizer)
    models = {
        "qwen2": lambda: Qwen2ForCausalLM(
            Qwen2Config(**common, use_sliding_window=True, sliding_window=4, max_window_layers=1)
        ),
        "mistral": lambda: MistralForCausalLM(MistralConfig(**common, sliding_window=4)),
        "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**common, head_dim=8)),
    }
    torch.manual_seed(0)
    backend = HFBackend(architecture, models[architecture]().double().eval(), tokenizer, source="in-process")
    ids = backend.prompt_ids(PROMPT)
    tree = [(-1, 5), (-1, 17), (0, 9), (2, 33), (3, 40), (4, 7)]
    begun = backend.tree_start(ids, [p for p, _ in tree[:3]], [t for _, t in tree[:3]])
    assert begun is not None
    step = begun[1].then(backend.tree_extend(begun[0], [p for p, _ in tree[3:]], [t for _, t in tree[3:]]))
    reference = backend.next_logprobs([ids] + [ids + list(path) for path in paths(tree)])
    assert torch.allclose(step.logprobs, reference, atol=1e-12, rtol=0)
