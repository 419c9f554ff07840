"""The block multiverse equals a tree computed by brute force, keeps its mass invariants, and renormalizes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend
from modescope.models.base import Backend
from modescope.probes.multiverse import Multiverse, MultiverseNode, branch, multiverse
from tests.unit.brute_force import Scorer
from tests.unit.tiny_models import tiny_backend

TOKENS = ["a", " a", "a ", "b", " b", "c", ".", " the", "\n", "\n\n", "x"]


def reference_tree(
    backends: Sequence[Backend],
    prompt: str,
    depth: int,
    cutoff: float,
    merge: bool = True,
    share: float = 0.01,
) -> dict[str, Any]:
    """The expected union tree, written independently of the engine: every prefix scored from scratch,
    one node at a time. Returns {key: (joints per model, children)}."""
    scorers = [Scorer(b, b.prompt_ids(prompt)) for b in backends]

    def key_of(backend: Backend, token: int) -> str:
        if token in backend.vocab.eos_ids:
            return "EOS"  # every test vocabulary has one end token
        data = backend.vocab.token_bytes[token]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # half a character: never merged
            return "\x00bytes:" + data.hex()
        return " ".join(text.split()) if merge else text

    def expand(spellings: list[list[tuple[tuple[int, ...], float]]], level: int) -> dict[str, Any]:
        joints: list[dict[str, float]] = []
        below: list[dict[str, list[tuple[tuple[int, ...], float]]]] = []
        for backend, scorer, model_spellings in zip(backends, scorers, spellings, strict=True):
            joint: dict[str, float] = {key_of(backend, t): 0.0 for t in range(backend.vocab.size)}
            children: dict[str, list[tuple[tuple[int, ...], float]]] = {}
            for path, logprob in model_spellings:
                dist = scorer.dist(path)
                for token in range(backend.vocab.size):
                    key = key_of(backend, token)
                    joint[key] += math.exp(logprob + float(dist[token]))
                    children.setdefault(key, []).append(((*path, token), logprob + float(dist[token])))
            joints.append(joint)
            below.append(children)
        listed = {k for joint in joints for k, v in joint.items() if v >= cutoff}
        tree = {}
        for key in listed:
            values = tuple(joint.get(key) for joint in joints)
            kept = [
                [(p, lp) for p, lp in model_below.get(key, []) if math.exp(lp) >= share * (values[m] or 0.0)]
                for m, model_below in enumerate(below)
            ]
            grow = level + 1 < depth and not key.startswith("EOS")
            tree[key] = (values, expand(kept, level + 1) if grow else {})
        return tree

    return expand([[((), 0.0)] for _ in backends], 0)


def assert_matches(node: MultiverseNode, expected: dict[str, Any], tolerance: float = 1e-9) -> None:
    keys = {("EOS" if c.eos else c.key) for c in node.children}
    assert keys == set(expected), f"below {node.path_text()!r}"
    for child in node.children:
        values, grandchildren = expected["EOS" if child.eos else child.key]
        for m, joint in enumerate(values):
            assert (child.joint(m) is None) == (joint is None)
            if joint is not None:
                assert child.joint(m) == pytest.approx(joint, abs=tolerance, rel=tolerance)
        assert_matches(child, grandchildren, tolerance)


def assert_mass_invariant(tree: Multiverse) -> None:
    """Children's joints plus the unexpanded mass equal the parent's, for every node and model."""
    for node in [tree.root, *tree.nodes()]:
        for m in range(len(tree.models)):
            joint = node.joint(m)
            if joint is None:
                continue
            children = math.fsum(c.joint(m) or 0.0 for c in node.children)
            assert children + (node.unexpanded(m) or 0.0) == pytest.approx(joint, abs=1e-12)


def assert_same_tree(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["text"] == b["text"] and a["eos"] == b["eos"]
    for field in ("prob", "joint", "unexpanded", "entropy_bits"):
        assert a[field] == pytest.approx(b[field], abs=1e-12)
    assert len(a["children"]) == len(b["children"])
    for x, y in zip(a["children"], b["children"], strict=True):
        assert_same_tree(x, y)


@pytest.fixture
def toy() -> AnalyticBackend:
    return AnalyticBackend(TOKENS, name="toy", seed=3, sharpness=2.0)


def test_tree_equals_the_closed_form_tree(toy: AnalyticBackend) -> None:
    tree = multiverse(toy, "a", depth=3, cutoff=0.02)
    assert_matches(tree.root, reference_tree([toy], "a", depth=3, cutoff=0.02))
    assert_mass_invariant(tree)


def test_without_merging_every_token_is_its_own_node(toy: AnalyticBackend) -> None:
    tree = multiverse(toy, "a", depth=2, cutoff=0.02, merge=False)
    assert_matches(tree.root, reference_tree([toy], "a", depth=2, cutoff=0.02, merge=False))


def test_merged_siblings_add_their_masses(toy: AnalyticBackend) -> None:
    merged = multiverse(toy, "b", depth=1, cutoff=1e-6)
    apart = multiverse(toy, "b", depth=1, cutoff=1e-6, merge=False)
    by_text = {c.text: c.joint() or 0.0 for c in apart.root.children}
    a_node = merged.find(["a"])
    assert a_node.joint() == pytest.approx(by_text["a"] + by_text[" a"] + by_text["a "], abs=1e-12)
    assert merged.find(["\n"]).joint() == pytest.approx(by_text["\n"] + by_text["\n\n"], abs=1e-12)
    assert len(merged.root.children) == len(apart.root.children) - 4  # a, a, a; b, b; newlines


def test_cutoff_is_respected_and_depth_bounds_the_tree(toy: AnalyticBackend) -> None:
    tree = multiverse(toy, "a", depth=3, cutoff=0.05)
    assert all((n.joint() or 0) >= 0.05 for n in tree.nodes())
    assert max(n.depth for n in tree.nodes()) == 3
    assert all(not n.children for n in tree.nodes() if n.depth == 3)
    for node in tree.nodes():  # everything not listed below an expanded node is under the cutoff
        if node.expanded:
            assert all((c.joint() or 0) >= 0.05 for c in node.children)
            assert node.values[0] is not None and node.values[0].entropy_bits is not None


def test_eos_is_a_leaf() -> None:
    eager = AnalyticBackend(["a", "b"], name="eager", seed=1, sharpness=0.5)
    tree = multiverse(eager, "a", depth=3, cutoff=0.01)
    ends = [n for n in tree.nodes() if n.eos]
    assert ends and all(not n.children and not n.expanded for n in ends)


def test_renormalizing_rescales_every_descendant(toy: AnalyticBackend) -> None:
    tree = multiverse(toy, "a", depth=3, cutoff=0.02)
    node = tree.root.children[0]
    view = tree.view(node)
    assert view.joint == node.joint()
    assert view.bits_gained == pytest.approx(-math.log2(node.joint() or 1))
    relative = tree.tree_dict(view=view)
    assert relative["joint"] == pytest.approx(1.0)

    def check(data: dict[str, Any], original: MultiverseNode) -> None:
        assert data["joint"] == pytest.approx((original.joint() or 0) / view.joint, rel=1e-12)
        assert view.scaled(original) == pytest.approx(data["joint"], rel=1e-12)
        for child_data, child in zip(data["children"], original.children, strict=True):
            check(child_data, child)

    check(relative, node)
    assert tree.view(node.index_path()).node is node


def test_tiny_transformers_models_with_batches_spanning_cache_rows() -> None:
    """A small batch size makes every step gather parent rows from several earlier batches and depths."""
    for architecture in ("llama", "gemma3"):
        backend = tiny_backend(architecture)
        tree = multiverse(backend, "Q: 1", depth=3, cutoff=0.01, batch_size=3)
        assert_matches(tree.root, reference_tree([backend], "Q: 1", depth=3, cutoff=0.01))
        assert_mass_invariant(tree)
        assert sum(tree.nodes_expanded) >= len([n for n in tree.nodes() if n.expanded])


def test_two_models_share_one_union_tree(toy: AnalyticBackend) -> None:
    other = AnalyticBackend(TOKENS, name="other", seed=11, sharpness=3.0)
    tree = multiverse([toy, other], "a", depth=2, cutoff=0.03)
    assert_matches(tree.root, reference_tree([toy, other], "a", depth=2, cutoff=0.03))
    assert_mass_invariant(tree)
    for m, backend in enumerate([toy, other]):  # each model's own tree is its single-model expansion
        alone = multiverse(backend, "a", depth=2, cutoff=0.03)
        assert_same_tree(tree.tree_dict(m), alone.tree_dict())


def test_a_model_without_the_token_is_not_comparable() -> None:
    first = AnalyticBackend(["a", "b", "zz"], name="first", seed=2, sharpness=2.0)
    second = AnalyticBackend(["a", "b", "c"], name="second", seed=5, sharpness=2.0)
    tree = multiverse([first, second], "a", depth=1, cutoff=1e-9)
    zz = tree.find(["zz"])
    assert zz.joint(0) is not None and zz.joint(1) is None
    assert tree.find(["c"]).joint(0) is None
    union = tree.to_dict()["union"]
    assert any(None in c["joints"] for c in union["children"])


def test_max_nodes_stops_cleanly_and_says_so(toy: AnalyticBackend) -> None:
    full = multiverse(toy, "a", depth=4, cutoff=0.005)
    small = multiverse(toy, "a", depth=4, cutoff=0.005, max_nodes=25)
    assert full.size > 25 and not full.truncated
    assert small.size == 25 and small.truncated
    assert "--max-nodes 25" in small.notices[0]
    assert_mass_invariant(small)
    # best first: the nodes kept are the most probable ones
    kept = sorted((n.joint() or 0 for n in small.nodes()), reverse=True)
    best = sorted((n.joint() or 0 for n in full.nodes()), reverse=True)[:25]
    assert kept[0] == pytest.approx(best[0])
    assert small.to_dict()["truncated"] is True


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"depth": 0}, "--depth"),
        ({"cutoff": 0.0}, "--cutoff"),
        ({"cutoff": 1.0}, "--cutoff"),
        ({"cutoff": -0.5}, "--cutoff"),
        ({"max_nodes": 0}, "--max-nodes"),
        ({"prefix": "a?"}, "cannot"),
    ],
)
def test_bad_options_are_clear_errors(toy: AnalyticBackend, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ModescopeError, match=message):
        multiverse(toy, "a", **options)


def test_a_prefix_the_tokenizer_changes_is_refused() -> None:
    backend = tiny_backend()
    with pytest.raises(ModescopeError, match="cannot reproduce the prefix"):
        multiverse(backend, "Q:", prefix=" 1<eos>")


def test_prefix_starts_a_branch_and_branch_reexpands_a_node(toy: AnalyticBackend) -> None:
    tree = multiverse(toy, "a", depth=2, cutoff=0.02)
    node = next(c for c in tree.root.children if c.expanded)
    with pytest.raises(ModescopeError, match="end of the text"):
        branch(toy, tree, next(c for c in tree.root.children if c.eos), "a")
    again = branch(toy, tree, node, "a", depth=2)
    direct = multiverse(toy, "a", prefix=node.text, depth=2, cutoff=0.02)
    assert again.prefix == node.text
    # the branch's first level equals the original's children renormalized to the node
    for child in node.children:
        assert again.find([child.text]).joint() == pytest.approx((child.joint() or 0) / (node.joint() or 1))
    assert {c.key for c in direct.root.children} == {c.key for c in again.root.children}


def test_expansions_are_cached(toy: AnalyticBackend, tmp_path: Path) -> None:
    first = multiverse(toy, "a", depth=2, cutoff=0.02)
    assert multiverse(toy, "a", depth=2, cutoff=0.02) is first
    assert multiverse(toy, "a", depth=2, cutoff=0.03) is not first


class FingerprintedToy(AnalyticBackend):
    def fingerprint(self) -> str | None:
        return f"toy-{self.seed}"


def test_disk_cache_round_trip(tmp_path: Path) -> None:
    tree = multiverse(FingerprintedToy(TOKENS, name="toy", seed=3), "a", depth=2, cutoff=0.02, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 1
    fresh = FingerprintedToy(TOKENS, name="toy", seed=3)  # another object: only the disk cache can answer
    again = multiverse(fresh, "a", depth=2, cutoff=0.02, cache_dir=tmp_path)
    assert again.cached and again.to_dict() == tree.to_dict()
    assert Multiverse.from_dict(tree.to_dict()).to_dict() == tree.to_dict()
