"""Random block multiverses (random toy models, depths, cutoffs, node budgets, batch sizes, one or two models)
keep every invariant the multiverse promises, equal a tree computed by brute force, and lay out as nested
blocks.

Invariants checked on every tree: no negative, NaN or infinite value; a node's joint is its parent's joint
times its conditional probability (so the product of the conditionals on its path); children's joints add up
to at most the parent's, and with the unexpanded mass exactly to it; listed children reach the cutoff in some
model; nothing lies deeper than the depth, below an end of text, or beyond the node budget; an expanded node's
entropy lies in [0, log2(steps)]; each model's own tree in a union equals that model expanded alone; JSON
round trips; the renormalized view scales every descendant by 1 / P(view); the figure's blocks nest.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from modescope.models.analytic import AnalyticBackend
from modescope.models.base import Backend
from modescope.probes.multiverse import SPELLING_SHARE, Multiverse, MultiverseNode, multiverse, step_keys
from modescope.viz.multiverse_plot import OTHER_COLOUR, Panel, _difference_panel, _draw, _model_panel
from tests.property.strategies import describe, encodable, property_settings, toy_backends
from tests.unit.brute_force import Scorer

ALPHABET = "ab .\n"  # "a", " a" and "a " are one step when merging; "\n" and "\n\n" too
TOLERANCE = 1e-12  # float64 sums of a few hundred probabilities


@dataclass
class Expansion:
    models: list[AnalyticBackend]
    prompt: str
    options: dict[str, Any] = field(default_factory=dict)


@st.composite
def expansions(draw: st.DrawFn) -> Expansion:
    first = draw(toy_backends(ALPHABET, "first", max_long=6, required="a"))
    models = [first]
    if draw(st.booleans()):  # a second model: another seed over the same tokens, or another vocabulary
        same = AnalyticBackend(first.pieces[1:], "second", draw(st.integers(0, 2**32 - 1)), draw(st.floats(0.1, 6)))
        models.append(same if draw(st.booleans()) else draw(toy_backends(ALPHABET, "second", 6, required="a")))
    # "a" is in every vocabulary, so every model encodes some prompt
    shared = [t for t in first.pieces[1:] if all(encodable(m, t) for m in models)]
    prompt = draw(st.sampled_from(shared))
    options = {
        "depth": draw(st.integers(1, 4)),
        # the nudge keeps round cutoffs (0.25) off exact products of round probabilities, where rounding decides
        "cutoff": draw(st.floats(0.008, 0.6)) * (1 + 1e-7),
        "max_nodes": draw(st.one_of(st.just(2000), st.integers(1, 60))),
        "merge": draw(st.booleans()),
        "stop_at_eos": draw(st.booleans()),
        "batch_size": draw(st.sampled_from([1, 2, 5, 64])),
    }
    return Expansion(models, prompt, options)


def values_of(tree: Multiverse) -> list[tuple[MultiverseNode, int]]:
    """(node, model) of every node (root included) where the model has a value."""
    nodes = [tree.root, *tree.nodes()]
    return [(n, m) for n in nodes for m in range(len(tree.models)) if n.values[m] is not None]


def check_values(tree: Multiverse, models: list[AnalyticBackend]) -> None:
    for node, m in values_of(tree):
        value = node.values[m]
        assert value is not None
        assert math.isfinite(value.joint) and 0.0 <= value.joint <= 1.0 + TOLERANCE, node.path_text()
        assert math.isfinite(value.prob) and 0.0 <= value.prob <= 1.0 + TOLERANCE, node.path_text()
        if node.expanded and value.joint > 0:
            steps = len(step_keys(models[m], tree.merge).names)
            entropy = value.entropy_bits
            assert entropy is not None and -TOLERANCE <= entropy <= math.log2(steps) + TOLERANCE


def check_products(tree: Multiverse) -> None:
    """joint = parent joint x conditional, and so the product of the conditionals along the path."""
    for node, m in values_of(tree):
        if node.parent is None:
            assert node.joint(m) == 1.0
            continue
        parent = node.parent.joint(m)
        assert parent is not None  # a model with no value at a node has none below it either
        assert node.joint(m) == pytest.approx(parent * node.values[m].prob, rel=1e-12, abs=1e-300)
        product = math.prod(n.values[m].prob for n in node.path())
        assert node.joint(m) == pytest.approx(product, rel=1e-9, abs=1e-300)


def check_children_masses(tree: Multiverse) -> None:
    for node, m in values_of(tree):
        joint = node.joint(m) or 0.0
        children = math.fsum(c.joint(m) or 0.0 for c in node.children)
        assert children <= joint * (1 + TOLERANCE) + TOLERANCE, node.path_text()
        unexpanded = node.unexpanded(m)
        assert unexpanded is not None and unexpanded >= 0.0
        assert children + unexpanded == pytest.approx(joint, abs=TOLERANCE)
        if not node.expanded:
            assert not node.children and unexpanded == joint


def check_shape(tree: Multiverse, options: dict[str, Any]) -> None:
    """Cutoff, depth, end of text and node budget; an untruncated tree expands everything it may."""
    cutoff, depth = options["cutoff"], options["depth"]
    assert tree.size <= options["max_nodes"]
    assert tree.truncated == any("--max-nodes" in notice for notice in tree.notices)
    if tree.truncated:
        assert tree.size == options["max_nodes"]
    for node in tree.nodes():
        assert max(node.joint(m) or 0.0 for m in range(len(tree.models))) >= cutoff
        assert node.depth <= depth and (node.depth < depth or not node.expanded)
        assert node.depth == node.parent.depth + 1
        if node.eos and options["stop_at_eos"]:
            assert not node.expanded and not node.children
        if not tree.truncated:
            assert node.expanded == (node.depth < depth and not (node.eos and options["stop_at_eos"]))


Identity = tuple[Any, ...]


def identity(backend: Backend, token: int, merge: bool) -> Identity:
    """What a step is, independently of the engine's keys: the end of text; when merging, the text with its
    whitespace normalized; else the token's text, and its id when an earlier token has the same text (such
    tokens stay apart, and are comparable across vocabularies only through the first of them)."""
    if token in backend.vocab.eos_ids:
        return ("EOS",) if merge else ("EOS", token)
    text = backend.vocab.token_bytes[token].decode()
    if merge:
        return ("text", " ".join(text.split()))
    first = backend.vocab.token_bytes.index(backend.vocab.token_bytes[token])
    return ("token", text) if first == token else ("token", text, token)


def node_identity(node: MultiverseNode, models: list[AnalyticBackend], merge: bool) -> Identity:
    """The identity of an engine node, from the token its most likely spelling ends with."""
    for model, value in zip(models, node.values, strict=True):
        if value is not None and value.spellings:
            return identity(model, value.spellings[0].path[-1], merge)
    raise AssertionError(f"node {node.path_text()!r} has no spelling in any model")


Reference = dict[Identity, tuple[list[float | None], "Reference"]]


def continued(spellings: list[tuple[tuple[int, ...], float]], joint: float) -> list[tuple[tuple[int, ...], float]]:
    """The spellings of a step that its expansion continues: those holding SPELLING_SHARE of its joint, or
    the likeliest one when none does."""
    if joint <= 0:
        return []
    kept = [(p, lp) for p, lp in spellings if math.exp(lp) >= SPELLING_SHARE * joint]
    # most likely first, ties in the order found, as the engine keeps them
    return sorted(kept or [max(spellings, key=lambda s: s[1])], key=lambda s: -s[1])


def brute_force_tree(models: list[AnalyticBackend], prompt: str, options: dict[str, Any]) -> Reference:
    """The union tree computed one node at a time from uncached next-token distributions (tests/unit's
    Scorer): per step, every model's joint summed over the spellings of the parent that hold at least
    SPELLING_SHARE of its mass (or the likeliest one); a step is listed when it reaches the cutoff in a model, and a model whose
    vocabulary lacks the step (or whose parent step) has no value (None)."""
    depth, cutoff, merge = options["depth"], options["cutoff"], options["merge"]
    scorers = [Scorer(m, m.prompt_ids(prompt)) for m in models]
    Spellings = list[tuple[tuple[int, ...], float]]

    def expand(spellings: list[Spellings | None], level: int) -> Reference:
        joints: list[dict[Identity, float] | None] = []
        below: list[dict[Identity, Spellings]] = []
        for model, scorer, paths in zip(models, scorers, spellings, strict=True):
            steps = {identity(model, t, merge) for t in range(model.vocab.size)}
            joint = {step: 0.0 for step in steps} if paths is not None else None
            children: dict[Identity, Spellings] = {}
            for path, logprob in paths or []:
                dist = scorer.dist(path)
                for token in range(model.vocab.size):
                    step = identity(model, token, merge)
                    joint[step] += math.exp(logprob + float(dist[token]))  # type: ignore[index]
                    children.setdefault(step, []).append(((*path, token), logprob + float(dist[token])))
            joints.append(joint)
            below.append(children)
        listed = {step for joint in joints if joint for step, mass in joint.items() if mass >= cutoff}
        tree: Reference = {}
        for step in listed:
            values = [None if joint is None else joint.get(step) for joint in joints]
            kept = [
                None if value is None else continued(below[m].get(step, []), value) for m, value in enumerate(values)
            ]
            ends = step[0] == "EOS" and options["stop_at_eos"]
            tree[step] = (values, expand(kept, level + 1) if level + 1 < depth and not ends else {})
        return tree

    return expand([[((), 0.0)] for _ in models], 0)


def assert_matches_reference(
    node: MultiverseNode, expected: Reference, models: list[AnalyticBackend], options: dict[str, Any]
) -> None:
    """The union tree equals the brute-force one: the same steps with the same joints (1e-9), except that a
    step whose joint lies within rounding of the cutoff may be listed by one and not the other."""
    cutoff = options["cutoff"]
    found = {node_identity(c, models, options["merge"]): c for c in node.children}
    assert len(found) == len(node.children), f"two children of {node.path_text()!r} are the same step"
    for step in set(found) ^ set(expected):
        joints = expected[step][0] if step in expected else [found[step].joint(m) for m in range(len(models))]
        near = [j for j in joints if j is not None and abs(j - cutoff) <= 1e-9 * cutoff]
        where = "the engine" if step in found else "brute force"
        assert near, f"step {step} below {node.path_text()!r} is listed by {where} only"
    for step in set(found) & set(expected):
        joints, below = expected[step]
        child = found[step]
        for m, joint in enumerate(joints):
            assert (child.joint(m) is None) == (joint is None), (step, m)
            if joint is not None:
                assert child.joint(m) == pytest.approx(joint, rel=1e-9, abs=1e-15), (step, m)
        assert_matches_reference(child, below, models, options)


def same_tree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two `tree_dict`s hold the same nodes, children compared as sets (ties in probability make the order of
    equally likely siblings arbitrary)."""
    fields = ("prob", "joint", "unexpanded", "entropy_bits")
    if a["text"] != b["text"] or a["eos"] != b["eos"] or len(a["children"]) != len(b["children"]):
        return False
    if not all(a[f] == pytest.approx(b[f], abs=1e-12) for f in fields):
        return False
    unmatched = list(b["children"])
    for child in a["children"]:
        match = next((k for k, other in enumerate(unmatched) if same_tree(child, other)), None)
        if match is None:
            return False
        unmatched.pop(match)
    return True


class RecordingAxes:
    """Stands in for matplotlib axes: keeps every block `_draw` adds as (column, bottom, top, colour)."""

    def __init__(self) -> None:
        self.blocks: list[tuple[int, float, float, str]] = []

    def add_patch(self, patch: Any) -> None:
        from matplotlib.colors import to_hex

        column = round(patch.get_x())
        bottom = patch.get_y()
        self.blocks.append((column, bottom, bottom + patch.get_height(), to_hex(patch.get_facecolor())))

    def text(self, *args: Any, **kwargs: Any) -> None:
        pass


def check_layout_nests(tree: Multiverse, top: MultiverseNode, panel: Panel) -> None:
    """Draw `panel` with every node in a colour of its own, then check that each block lies inside its
    parent's block one column to the left, siblings (and the grey rest) do not overlap, and no block leaves the
    view. The view is tall enough (1e9 points) that no block is skipped as too thin."""
    ids = {id(node): k for k, node in enumerate([top, *top.walk()])}
    colour_of = {k: f"#{k + 1:06x}" for k in ids.values()}
    tagged = Panel(panel.title, panel.size, lambda n: colour_of[ids[id(n)]], panel.label, panel.children)
    axes = RecordingAxes()
    depth = max(1, tree.depth - top.depth)
    _draw(axes, tagged, top, depth, (1.0, 1e9))
    spans = {colour: (column, low, high) for column, low, high, colour in axes.blocks if colour != OTHER_COLOUR}
    slack = 1e-9

    def within(inner: tuple[float, float], outer: tuple[float, float]) -> bool:
        return outer[0] - slack <= inner[0] and inner[1] <= outer[1] + slack

    for node in top.walk():
        if node is top or (span := spans.get(colour_of[ids[id(node)]])) is None:
            continue
        _, low, high = span
        parent = node.parent
        while parent is not top and colour_of[ids[id(parent)]] not in spans:  # too thin to draw: look higher
            parent = parent.parent
        assert parent is not None
        outer = (0.0, 1.0) if parent is top else spans[colour_of[ids[id(parent)]]][1:]
        assert within((low, high), outer), f"block {node.path_text()!r} leaves its parent's span"
        if parent is not node.parent:  # an ancestor had no room left, so its descendants have none either
            raise AssertionError(f"block {node.path_text()!r} is drawn below an ancestor that is not")
    for column in {c for c, _, _, _ in axes.blocks}:
        row = sorted((low, high) for c, low, high, _ in axes.blocks if c == column)
        for (_, high), (low, _) in itertools.pairwise(row):
            assert low >= high - slack, f"blocks overlap in column {column}"
        assert all(within(span, (0.0, 1.0)) for span in row)


@given(expansion=expansions())
@property_settings(400)
def test_random_multiverses_keep_every_invariant(expansion: Expansion) -> None:
    models, options = expansion.models, expansion.options
    for model in models:
        note(describe(model))
    tree = multiverse(models, expansion.prompt, cache=False, **options)
    event(f"{len(models)} model(s), {'truncated' if tree.truncated else 'complete'}")
    check_values(tree, models)
    check_products(tree)
    check_children_masses(tree)
    check_shape(tree, options)
    if not tree.truncated:
        event("compared with brute force")
        assert_matches_reference(tree.root, brute_force_tree(models, expansion.prompt, options), models, options)
    if len(models) > 1 and not tree.truncated:
        for m, model in enumerate(models):  # each model's own tree is its expansion alone
            alone = multiverse(model, expansion.prompt, cache=False, **options)
            assert same_tree(tree.tree_dict(m), alone.tree_dict())
    back = Multiverse.from_dict(json.loads(tree.to_json()))
    assert back.to_dict() == tree.to_dict()
    assert [n.expanded for n in [back.root, *back.nodes()]] == [n.expanded for n in [tree.root, *tree.nodes()]]


@given(expansion=expansions(), data=st.data())
@property_settings(300)
def test_views_rescale_and_blocks_nest(expansion: Expansion, data: st.DataObject) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm

    for model in expansion.models:
        note(describe(model))
    tree = multiverse(expansion.models, expansion.prompt, cache=False, **expansion.options)
    nodes = [tree.root, *tree.nodes()]
    m = data.draw(st.integers(0, len(tree.models) - 1))
    top = data.draw(st.sampled_from([n for n in nodes if (n.joint(m) or 0.0) > 0.0 and not n.eos]))
    view = tree.view(top, m)
    relative = tree.tree_dict(m, view=view)
    assert relative["joint"] == pytest.approx(1.0, rel=1e-12)

    def check_scaled(item: dict[str, Any], node: MultiverseNode) -> None:
        assert item["joint"] == pytest.approx((node.joint(m) or 0.0) / view.joint, rel=1e-12)
        children = math.fsum(c["joint"] for c in item["children"])
        assert children + item["unexpanded"] == pytest.approx(item["joint"], rel=1e-9, abs=TOLERANCE)
        listed = sorted(
            node.listed_children(m, tree.cutoff if len(tree.models) > 1 else 0.0), key=lambda c: -(c.joint(m) or 0)
        )
        for child_item, child in zip(item["children"], listed, strict=True):
            check_scaled(child_item, child)

    check_scaled(relative, top)
    cmap = colormaps["Blues"]
    check_layout_nests(tree, top, _model_panel(tree, m, cmap))
    if len(tree.models) > 1:
        norm = TwoSlopeNorm(vmin=-4.0, vcenter=0.0, vmax=4.0)
        check_layout_nests(tree, top, _difference_panel(tree, norm, colormaps["RdBu_r"]))
