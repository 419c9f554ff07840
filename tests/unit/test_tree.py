"""The prefix-tree engine visits every requested node once, with its exact path probability and distribution."""

from __future__ import annotations

import pytest
import torch

from modescope.engine.tree import Child, Node, PrefixTree
from modescope.models.analytic import AnalyticBackend
from tests.unit.tiny_models import tiny_backend


def full_tree(branching: list[int], depth: int):  # type: ignore[no-untyped-def]
    """A visit function that asks for the same children below every node down to `depth`."""
    seen: dict[tuple[int, ...], tuple[float, torch.Tensor]] = {}

    def visit(node: Node, logprobs: torch.Tensor) -> list[Child]:
        assert node.path not in seen, "a node was visited twice"
        seen[node.path] = (node.logprob, logprobs.clone())
        return [Child(t) for t in branching] if len(node.path) < depth else []

    return visit, seen


@pytest.mark.parametrize(("batch_size", "max_rows"), [(128, 512), (1, 1), (3, 5), (4, 2)])
def test_every_node_visited_once_with_its_path_probability(batch_size: int, max_rows: int) -> None:
    backend = AnalyticBackend(["a", "b", "c", "d"], seed=1)
    visit, seen = full_tree([1, 2, 3], depth=3)
    stats = PrefixTree(backend, batch_size=batch_size, max_rows=max_rows).expand([4, 1], visit)
    assert len(seen) == 1 + 3 + 9 + 27
    assert stats.nodes == 39 and stats.levels == 3 and stats.prompt_tokens == 2
    for path, (logprob, logprobs) in seen.items():
        assert logprob == pytest.approx(backend.sequence_logprob([4, 1], path), abs=1e-12)
        assert torch.allclose(logprobs, backend.next_logprobs([[4, 1, *path]])[0], atol=1e-12)


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_cached_expansion_equals_uncached_forward_on_a_transformer(architecture: str) -> None:
    backend = tiny_backend(architecture)
    prompt = backend.encode("Q: a tree")
    visit, seen = full_tree([20, 21, 260], depth=3)
    stats = PrefixTree(backend, batch_size=4, max_rows=8).expand(prompt, visit)
    assert stats.tokens_forwarded == stats.minimum_tokens == len(prompt) + 39
    for path, (_, logprobs) in seen.items():
        assert torch.allclose(logprobs, backend.next_logprobs([prompt + list(path)])[0], atol=1e-10)


def test_padded_scoring_matches_one_prefix_at_a_time() -> None:
    backend = tiny_backend()
    sequences = [[5, 6, 7, 8], [5, 6], [9, 10, 11]]
    steps, last = backend.score_padded(sequences)
    for row, seq in enumerate(sequences):
        for i in range(len(seq) - 1):
            assert float(steps[row, i]) == pytest.approx(
                float(backend.next_logprobs([seq[: i + 1]])[0][seq[i + 1]]), abs=1e-10
            )
        assert torch.allclose(last[row], backend.next_logprobs([seq])[0], atol=1e-10)
