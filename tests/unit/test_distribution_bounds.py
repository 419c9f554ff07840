"""Outcome distributions as intervals, on analytic backends whose every probability is known.

- In-process, the mass of next tokens that start with an incomplete UTF-8 character after a candidate is
  undecided: it is in `mass_upper`, not in `mass`.
- A backend that shows only its top k (a server) gives intervals that hold the exact masses, whether it
  scores given tokens (exact paths, bounded boundary) or not (unshown branches only in the upper bound).
- A full server's access pattern (scored paths, whole distributions only where a candidate needs one)
  gives the exact masses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace

import pytest
import torch

import modescope as ms
from modescope.models.analytic import AnalyticBackend, toy_model
from modescope.models.base import Capabilities

SERVER = "toy@http://127.0.0.1:9/v1"


class TopK(AnalyticBackend):
    """The toy model as a top-k server shows it: inside `partial_distributions`, only its k best tokens."""

    def __init__(self, base: AnalyticBackend, k: int, scores: bool) -> None:
        super().__init__(base.pieces[1:], name=base.name, seed=base.seed, sharpness=base.sharpness)
        self.capabilities = Capabilities("top-k", k, scores, False, SERVER)

    def next_logprobs(self, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        full = super().next_logprobs(prefixes)
        if not self.partial_ok:
            return full
        k = self.capabilities.top_k or 1
        shown = torch.full_like(full, -math.inf)
        best = full.topk(k, dim=-1)
        return shown.scatter(-1, best.indices, best.values)


def assert_holds(bounded: ms.ModelDistribution, exact: ms.ModelDistribution) -> None:
    for a, b in zip(bounded.outcomes, exact.outcomes, strict=True):
        assert a.mass <= b.mass * (1 + 1e-9) + 1e-15, a.text
        assert b.mass <= a.mass_upper * (1 + 1e-9) + 1e-15, a.text


@pytest.mark.parametrize("scores", [True, False])
@pytest.mark.parametrize("k", [3, 12])
def test_top_k_intervals_hold_the_exact_masses(scores: bool, k: int) -> None:
    base = toy_model("toy:bounds")
    exact = ms.distribution(base, "Q: a number?\nA:", ms.integers(0, 30)).results[0]
    capped = TopK(base, k, scores)
    bounded = ms.distribution(capped, "Q: a number?\nA:", ms.integers(0, 30)).results[0]
    assert bounded.bounds == f"bounds (top-{k} server)"
    assert_holds(bounded, exact)
    assert any(o.mass_upper > o.mass * 1.01 for o in bounded.outcomes)  # the tail really is unknown
    if scores:  # paths are exact, so only the boundary after each candidate is bounded: tighter intervals
        loose = ms.distribution(TopK(base, k, False), "Q: a number?\nA:", ms.integers(0, 30)).results[0]
        assert bounded.coverage_upper - bounded.coverage <= loose.coverage_upper - loose.coverage + 1e-12


def test_a_full_server_is_exact_and_fetches_whole_distributions_only_where_needed() -> None:
    base = toy_model("toy:bounds")
    exact = ms.distribution(base, "Q: a number?\nA:", ms.integers(0, 100)).results[0]
    served = toy_model("toy:bounds")
    served.capabilities = Capabilities("full", None, True, False, SERVER)
    far = ms.distribution(served, "Q: a number?\nA:", ms.integers(0, 100)).results[0]
    for a, b in zip(far.outcomes, exact.outcomes, strict=True):
        assert a.mass == pytest.approx(b.mass, rel=1e-6, abs=1e-15), a.text
        assert a.mass_upper - a.mass <= 1e-6 * a.mass + 1e-15
    assert far.bounds is None
    assert 0 < far.stats.whole_distributions < far.stats.nodes


def test_undecided_utf8_mass_is_in_the_upper_bound_only() -> None:
    backend = AnalyticBackend(["Q", "a", "b", " ", ".", "?"], seed=5, sharpness=1.0)
    table = list(backend.vocab.token_bytes)
    table[-1] = b"\xc3"  # "?" becomes the first byte of a two-byte character: undecided after a candidate
    backend.vocab = replace(backend.vocab, token_bytes=table, _by_bytes={})
    assert backend.vocab.undecided_ids == [len(table) - 1]
    result = ms.distribution(backend, "Q", ["a", "b"], leading_space="none").results[0]
    q = backend.encode("Q")
    for outcome, token in zip(result.outcomes, [2, 3], strict=True):
        after = torch.log_softmax(torch.tensor(backend.logits([*q, token])), -1).exp()
        path = math.exp(backend.sequence_logprob(q, [token]))
        boundary = [0, 4, 5]  # EOS, " ", "."
        assert outcome.mass == pytest.approx(path * float(after[boundary].sum()), rel=1e-9)
        assert outcome.mass_upper - outcome.mass == pytest.approx(path * float(after[-1]), rel=1e-9)


def test_sample_only_refuses_a_distribution() -> None:
    blind = toy_model("toy:blind")
    blind.capabilities = Capabilities("sample-only", None, False, False, SERVER)
    with pytest.raises(ms.ModescopeError, match="sample-only"):
        ms.distribution(blind, "Q", ["a"])
    capped = toy_model("toy:capped")
    capped.capabilities = Capabilities("top-k", 5, True, False, SERVER)
    with pytest.raises(ms.ModescopeError, match="whole next-token distributions"):
        ms.distribution(capped, "Q", ["a"], temperature=1.5)


def test_a_top_k_multiverse_leaves_the_tail_unexpanded_and_round_trips() -> None:
    """A multiverse of a top-k model: at most k children per node, the rest unexpanded, entropies unknown
    (null in JSON), and read back with the same expanded nodes."""
    from modescope.probes.multiverse import Multiverse, multiverse

    capped = TopK(toy_model("toy:tree"), 3, True)
    tree = multiverse(capped, "Q", depth=2, cutoff=0.001, cache=False)
    assert any("top 3" in notice for notice in tree.notices)
    nodes = [tree.root, *tree.nodes()]
    assert all(len(node.children) <= 3 for node in nodes) and (tree.root.unexpanded() or 0.0) > 0.0
    back = Multiverse.from_dict(json.loads(tree.to_json()))
    assert [n.expanded for n in [back.root, *back.nodes()]] == [n.expanded for n in nodes]
