"""Block multiverse: the tree of likely continuations with their joint probabilities, for one or more models.

Expansion is best-first. The frontier node with the highest joint probability (relative to the root, the
largest over the models) is expanded next; up to `batch_size` frontier nodes are popped at once and expanded
in one forward pass per model and depth, every node reusing its parent's KV cache row. A node is expanded
while its joint probability reaches `cutoff` in some model and it is shallower than `depth`, until the tree
holds `max_nodes` nodes (then the expansion stops and says so in `notices`).

Sibling tokens whose text is the same after whitespace normalization (" Yes" and "Yes", Gemma's byte
fallback "<0x30>" and "0") are merged into one node whose mass is their sum. Expanding a merged node
continues each of its spellings that holds at least `SPELLING_SHARE` of its mass (the likeliest one when none
does) and merges their children the same way, so a node's children are the exact mixture over those
spellings. Whatever is not covered by the listed children is the node's `unexpanded` mass: children below
the cutoff, spellings not continued, and everything below a node that was not expanded. Children plus
unexpanded always equal the node.

With several models the tree is their union aligned by text: a step is listed when it reaches the cutoff in
any model, and every expanded node is expanded in every model, so each model's value on each block is
exact. A model whose vocabulary has no token with a step's text has no value there (None: not comparable);
that happens only when the models' tokenizers differ.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modescope.errors import ModescopeError
from modescope.jsonsafe import finite
from modescope.models.base import Backend, ChatPrompt, Rows, partial_distributions
from modescope.results import NotebookResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

SPELLING_SHARE = 0.01  # spellings of a merged node holding less of its mass are not continued
EOS_KEY = "\x00eos"
CACHE_VERSION = 2  # 2: a node whose spellings all hold under SPELLING_SHARE continues its likeliest
MEMORY_CACHE_SIZE = 16


# --- what a step of text is ------------------------------------------------------------------------------


def normalize_whitespace(text: str) -> str:
    """The merge key of a token's text: runs of whitespace collapsed to one space, ends stripped."""
    return " ".join(text.split())


def display_token(data: bytes) -> str:
    """A token's text; bytes that are not complete UTF-8 show as <0xNN>."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" for b in data)


def token_key(text: str, data: bytes, merge: bool) -> str:
    """The key of an ordinary token: its text (whitespace-normalized when merging); bytes that are not
    complete UTF-8 (half a character) are never merged with anything else."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "\x00bytes:" + data.hex()
    return normalize_whitespace(text) if merge else text


@dataclass
class StepKeys:
    """The text key of every token of one vocabulary: tokens with equal keys are merged siblings."""

    names: list[str]  # key id -> key
    of_token: torch.Tensor  # [vocab] key id of each token
    token_order: np.ndarray  # token ids sorted by key id
    offsets: np.ndarray  # tokens of key k are token_order[offsets[k]:offsets[k + 1]]
    texts: list[str]  # display text of each token
    by_name: dict[str, int]

    def tokens(self, key: int) -> np.ndarray:
        return self.token_order[self.offsets[key] : self.offsets[key + 1]]


_KEYS: weakref.WeakKeyDictionary[Backend, dict[bool, StepKeys]] = weakref.WeakKeyDictionary()


def step_keys(backend: Backend, merge: bool) -> StepKeys:
    """Keys of a backend's vocabulary (built once per backend: about a second for 262k tokens)."""
    per_backend = _KEYS.setdefault(backend, {})
    if merge not in per_backend:
        per_backend[merge] = _build_keys(backend, merge)
    return per_backend[merge]


def _build_keys(backend: Backend, merge: bool) -> StepKeys:
    vocab = backend.vocab
    names: list[str] = []
    by_name: dict[str, int] = {}
    of_token = np.zeros(vocab.size, dtype=np.int64)
    texts: list[str] = []
    for token_id, data in enumerate(vocab.token_bytes):
        special = token_id in vocab.special_ids
        text = backend.token_text(token_id) if special or not data else display_token(data)
        texts.append(text)
        if token_id in vocab.eos_ids and merge:
            key = EOS_KEY
        elif special or not data:
            key = f"\x00special:{text}"
        else:
            key = token_key(text, data, merge)
        if not merge and key in by_name:  # identical text kept apart: make the key unique
            key = f"{key}\x00{token_id}"
        if key not in by_name:
            by_name[key] = len(names)
            names.append(key)
        of_token[token_id] = by_name[key]
    order = np.argsort(of_token, kind="stable")
    offsets = np.searchsorted(of_token[order], np.arange(len(names) + 1))
    return StepKeys(names, torch.from_numpy(of_token), order, offsets, texts, by_name)


# --- the tree ----------------------------------------------------------------------------------------------


@dataclass
class Spelling:
    """One token path realizing a node in one model."""

    path: tuple[int, ...]  # tokens after the root
    logprob: float  # log P(path | root), nats
    parent_row: tuple[Rows, int] | None = None  # cache row of path[:-1], held until this spelling is forwarded
    row: tuple[Rows, int] | None = None  # its own cache row, held until its children are forwarded


@dataclass
class ModelValues:
    """A node's numbers under one model."""

    joint: float  # P(path | root)
    prob: float  # P(step | parent): joint / parent joint
    entropy_bits: float | None = None  # of the children's (merged) distribution; None until expanded
    spellings: list[Spelling] = field(default_factory=list, repr=False)
    text: str | None = None  # this model's most likely spelling, when it differs from the node's text


@dataclass(eq=False)
class MultiverseNode:
    """A step of text below its parent, with each model's values (None where not comparable)."""

    key: str
    text: str
    depth: int
    eos: bool
    values: list[ModelValues | None]
    children: list[MultiverseNode] = field(default_factory=list)
    parent: MultiverseNode | None = field(default=None, repr=False)
    expanded: bool = False

    def joint(self, model: int = 0) -> float | None:
        value = self.values[model]
        return None if value is None else value.joint

    def listed_children(self, model: int | None = None, cutoff: float = 0.0) -> list[MultiverseNode]:
        """Children, or for one model those that reach the cutoff in it (that model's own tree)."""
        if model is None:
            return self.children
        return [c for c in self.children if (c.joint(model) or 0.0) >= cutoff]

    def unexpanded(self, model: int = 0, cutoff: float = 0.0) -> float | None:
        """Joint mass of this node not covered by its listed children (for one model's own tree, with its
        cutoff); clamped at 0 against float rounding."""
        joint = self.joint(model)
        if joint is None:
            return None
        covered = math.fsum(c.joint(model) or 0.0 for c in self.listed_children(model, cutoff))
        return max(0.0, joint - covered)

    def path(self) -> list[MultiverseNode]:
        """The nodes from the root's first child down to this one."""
        nodes: list[MultiverseNode] = []
        node: MultiverseNode | None = self
        while node is not None and node.parent is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def path_text(self, model: int | None = None) -> str:
        """The text from the root to here; with `model`, as that model spells each step most likely."""
        return "".join(_step_text(n, model) for n in self.path())

    def index_path(self) -> tuple[int, ...]:
        """Child indices from the root to this node."""
        return tuple(n.parent.children.index(n) for n in self.path() if n.parent is not None)

    def walk(self) -> Iterator[MultiverseNode]:
        yield self
        for child in self.children:
            yield from child.walk()


def _step_text(node: MultiverseNode, model: int | None) -> str:
    value = node.values[model] if model is not None else None
    return (value.text if value is not None else None) or node.text


@dataclass
class View:
    """A renormalized view: `node` fills the view and every descendant is scaled by 1 / P(node)."""

    node: MultiverseNode
    model: int
    joint: float  # P(node | root) under the model
    bits_gained: float  # -log2 joint: how surprising the branch is

    def scaled(self, node: MultiverseNode) -> float | None:
        joint = node.joint(self.model)
        return None if joint is None or self.joint == 0 else joint / self.joint


@dataclass
class Multiverse(NotebookResult):
    """The expanded tree of one or more models below one prompt (and optional prefix)."""

    frame_height = 980

    models: list[str]
    prompt: str
    prefix: str
    depth: int
    cutoff: float
    max_nodes: int
    merge: bool
    root: MultiverseNode
    truncated: bool = False
    notices: list[str] = field(default_factory=list)
    nodes_expanded: list[int] = field(default_factory=list)  # forwarded token paths, per model
    seconds: float = 0.0
    cached: bool = False  # whether this came from the expansion cache
    prefix_paths: list[list[int]] = field(default_factory=list, repr=False)  # each model's prefix tokens
    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> Capabilities.metadata()

    def nodes(self) -> Iterator[MultiverseNode]:
        """Every node below the root."""
        for child in self.root.children:
            yield from child.walk()

    @property
    def size(self) -> int:
        return sum(1 for _ in self.nodes())

    def model_index(self, model: int | str) -> int:
        if isinstance(model, int):
            return model
        if model not in self.models:
            raise ModescopeError(f"no model '{model}' in this multiverse; it has {', '.join(self.models)}")
        return self.models.index(model)

    def node(self, index_path: Sequence[int]) -> MultiverseNode:
        """The node reached by child indices from the root."""
        node = self.root
        for depth, index in enumerate(index_path):
            if not 0 <= index < len(node.children):
                raise ModescopeError(f"no child {index} at depth {depth}; the node has {len(node.children)}")
            node = node.children[index]
        return node

    def find(self, texts: Sequence[str]) -> MultiverseNode:
        """The node reached by step texts (compared after whitespace normalization when merging)."""
        node = self.root
        for text in texts:
            key = normalize_whitespace(text) if self.merge else text
            found = next((c for c in node.children if c.key == key or c.text == text), None)
            if found is None:
                raise ModescopeError(f"no step {text!r} below {node.path_text()!r}")
            node = found
        return node

    def view(self, node: MultiverseNode | Sequence[int], model: int | str = 0) -> View:
        """Renormalize to a node: it fills the view and its descendants scale by 1 / P(node)."""
        target = node if isinstance(node, MultiverseNode) else self.node(node)
        index = self.model_index(model)
        joint = target.joint(index)
        if joint is None or joint <= 0:
            raise ModescopeError(f"model '{self.models[index]}' gives this node no probability; view another model")
        return View(target, index, joint, -math.log2(joint))

    # --- serialization ----------------------------------------------------------------------------------
    def tree_dict(self, model: int | str = 0, view: View | None = None) -> dict[str, Any]:
        """One model's own tree (nodes reaching the cutoff in it), as nested nodes; with `view`, relative to
        the view's node (its joint becomes 1)."""
        index = self.model_index(model)
        top = view.node if view is not None else self.root
        scale = 1.0 / view.joint if view is not None else 1.0
        cutoff = self.cutoff if len(self.models) > 1 else 0.0

        def encode(node: MultiverseNode, is_top: bool) -> dict[str, Any]:
            value = node.values[index]
            assert value is not None
            return {
                "text": "" if is_top and node is self.root else (value.text or node.text),
                "prob": 1.0 if is_top else value.prob,
                "joint": value.joint * scale,
                "entropy_bits": value.entropy_bits,
                "unexpanded": (node.unexpanded(index, cutoff) or 0.0) * scale,
                "eos": node.eos,
                "children": [
                    encode(c, False)
                    for c in sorted(node.listed_children(index, cutoff), key=lambda c: -(c.joint(index) or 0))
                ],
            }

        return encode(top, True)

    def union_dict(self) -> dict[str, Any]:
        """The union tree with every model's values side by side (None: not comparable)."""

        def encode(node: MultiverseNode) -> dict[str, Any]:
            return {
                "text": node.text,
                "texts": [None if v is None else (v.text or node.text) for v in node.values],
                "probs": [None if v is None else v.prob for v in node.values],
                "joints": [None if v is None else v.joint for v in node.values],
                "entropy_bits": [None if v is None else v.entropy_bits for v in node.values],
                "unexpanded": [node.unexpanded(m) for m in range(len(self.models))],
                "eos": node.eos,
                "expanded": node.expanded,
                "children": [encode(c) for c in node.children],
            }

        return encode(self.root)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "prefix": self.prefix,
            "models": self.models,
            "depth": self.depth,
            "cutoff": self.cutoff,
            "max_nodes": self.max_nodes,
            "merge": self.merge,
            "truncated": self.truncated,
            "notices": self.notices,
            "capabilities": self.capabilities,
            "trees": [
                {
                    "model": name,
                    "root": self.tree_dict(m),
                    "nodes_expanded": self.nodes_expanded[m] if m < len(self.nodes_expanded) else 0,
                    "seconds": self.seconds,
                }
                for m, name in enumerate(self.models)
            ],
            "union": self.union_dict() if len(self.models) > 1 else None,
        }

    def to_json(self) -> str:
        """Strict JSON; an entropy a top-k server left unknown (NaN) is written as null."""
        return json.dumps(finite(self.to_dict()), ensure_ascii=False, allow_nan=False)

    def to_pandas(self) -> pd.DataFrame:
        """One row per (node, model) where the model has the node: model, depth, path (the text from the
        prompt to the node, as that model spells it most likely), text (the node's step), prob (probability of
        the step given its parent), joint (probability of the whole path), entropy_bits (of the next step;
        NaN where a server did not show it), eos (the step ends the text)."""
        import pandas as pd

        rows = [
            {
                "model": name,
                "depth": node.depth,
                "path": node.path_text(m),
                "text": value.text or node.text,
                "prob": value.prob,
                "joint": value.joint,
                "entropy_bits": value.entropy_bits,
                "eos": node.eos,
            }
            for node in self.nodes()
            for m, name in enumerate(self.models)
            if (value := node.values[m]) is not None
        ]
        columns = ["model", "depth", "path", "text", "prob", "joint", "entropy_bits", "eos"]
        return pd.DataFrame(rows, columns=columns)

    def plot(self, view: View | None = None) -> Figure:
        """The static block multiverse (a matplotlib Figure): one panel per model and, with two or more, a
        panel coloured by log2(p_second / p_first); with `view` (see `view()`), renormalized to that node."""
        from modescope.viz.figures import detached
        from modescope.viz.multiverse_plot import multiverse_figure

        return detached(multiverse_figure(self, view))

    def to_html(self) -> str:
        """The interactive page: click a block to zoom into it, tabs per model and for the difference."""
        from modescope.viz.multiverse_html import multiverse_html

        return multiverse_html(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Multiverse:
        """Rebuild a multiverse from `to_dict` output (spellings and cache rows are not kept)."""
        models = list(data["models"])
        union = data.get("union") or _single_as_union(data["trees"][0]["root"])
        merge = bool(data["merge"])

        def decode(item: dict[str, Any], depth: int, parent: MultiverseNode | None) -> MultiverseNode:
            texts = item.get("texts") or [None] * len(item["joints"])
            values = [
                None if joint is None else ModelValues(joint, prob, entropy, text=text)
                for joint, prob, entropy, text in zip(
                    item["joints"], item["probs"], item["entropy_bits"], texts, strict=True
                )
            ]
            key = EOS_KEY if item["eos"] else normalize_whitespace(item["text"]) if merge else item["text"]
            node = MultiverseNode(key, item["text"], depth, bool(item["eos"]), values, parent=parent)
            # a top-k model's entropies are unknown (null): then a node with children was expanded too
            known = any(v is not None and v.entropy_bits is not None for v in values) or bool(item["children"])
            node.expanded = bool(item.get("expanded", known))
            node.children = [decode(c, depth + 1, node) for c in item["children"]]
            return node

        return cls(
            models,
            data["prompt"],
            data["prefix"],
            int(data["depth"]),
            float(data["cutoff"]),
            int(data["max_nodes"]),
            merge,
            decode(union, 0, None),
            bool(data["truncated"]),
            list(data["notices"]),
            [int(t.get("nodes_expanded", 0)) for t in data["trees"]],
            float(data["trees"][0].get("seconds", 0.0)),
            capabilities=dict(data.get("capabilities") or {}),
        )


def _single_as_union(node: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": node["text"],
        "probs": [node["prob"]],
        "joints": [node["joint"]],
        "entropy_bits": [node["entropy_bits"]],
        "eos": node["eos"],
        "children": [_single_as_union(c) for c in node["children"]],
    }


# --- options -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpansionOptions:
    depth: int = 4
    cutoff: float = 0.01
    max_nodes: int = 2000
    merge: bool = True
    stop_at_eos: bool = True

    def check(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ModescopeError(f"--depth must be an integer of at least 1 (got {self.depth})")
        if not (isinstance(self.cutoff, float | int) and 0.0 < self.cutoff < 1.0):
            raise ModescopeError(f"--cutoff must be a probability strictly between 0 and 1 (got {self.cutoff})")
        if self.max_nodes < 1:
            raise ModescopeError(f"--max-nodes must be at least 1 (got {self.max_nodes})")


def prefix_ids(backend: Backend, prefix: str) -> list[int]:
    """Tokens of a branch prefix, refusing text the tokenizer cannot reproduce exactly."""
    if not prefix:
        return []
    try:
        ids = backend.encode(prefix, add_special_tokens=False)
    except (ValueError, KeyError) as exc:
        raise ModescopeError(f"the tokenizer of '{backend.name}' cannot encode the prefix {prefix!r} ({exc})") from None
    special = [i for i in ids if i in backend.vocab.special_ids]
    spelled = b"".join(backend.vocab.token_bytes[i] for i in ids)
    if special or spelled != prefix.encode("utf-8"):
        shown = display_token(spelled)
        raise ModescopeError(
            f"the tokenizer of '{backend.name}' cannot reproduce the prefix {prefix!r} (it reads back as "
            f"{shown!r}{', with special tokens' if special else ''}); change the prefix"
        )
    return ids


# --- expansion ---------------------------------------------------------------------------------------------


@dataclass
class _Below:
    """What one model says below a forwarded node."""

    by_key: torch.Tensor  # [keys] joint mass of every key (merged sibling tokens)
    logjoints: torch.Tensor  # [spellings, vocab] joint log-probability of each spelling's next token
    entropy_bits: float  # of the merged children's distribution
    listed: list[int]  # key ids reaching the cutoff


Progress = Callable[[int], None]


class _Expander:
    """Best-first expansion of the union tree of several models."""

    def __init__(
        self,
        backends: Sequence[Backend],
        options: ExpansionOptions,
        batch_size: int,
        partial: Sequence[bool] = (),
    ) -> None:
        self.backends = list(backends)
        # per model: whether its distributions show only the top k (entropy then unknown)
        self.partial = list(partial) or [False] * len(self.backends)
        self.options = options
        self.batch_size = batch_size
        self.keys = [step_keys(b, options.merge) for b in backends]
        self.frontier: list[tuple[float, int, MultiverseNode]] = []
        self.counter = 0
        self.listed = 0
        self.forwarded = [0] * len(backends)
        self.truncated = False  # the tree reached max_nodes: nothing more is listed

    def run(self, roots: Sequence[Sequence[int]], progress: Progress | None) -> MultiverseNode:
        root = MultiverseNode("", "", 0, False, [ModelValues(1.0, 1.0) for _ in self.backends])
        below: dict[int, _Below] = {}
        for m, (backend, ids) in enumerate(zip(self.backends, roots, strict=True)):
            rows, logprobs = backend.start(ids)
            spelling = Spelling((), 0.0, row=(rows, 0))
            values = root.values[m]
            assert values is not None
            values.spellings = [spelling]
            below[m] = self._below(m, [0], [spelling], logprobs)[0]
        self._list_children(root, below)
        while self.frontier and not self.truncated:
            batch = [heapq.heappop(self.frontier)[2] for _ in range(min(self.batch_size, len(self.frontier)))]
            self._expand(batch)
            if progress:
                progress(len(batch))
        return root

    def _push(self, node: MultiverseNode) -> None:
        priority = max((v.joint for v in node.values if v is not None), default=0.0)
        heapq.heappush(self.frontier, (-priority, self.counter, node))
        self.counter += 1

    def _expand(self, batch: list[MultiverseNode]) -> None:
        """Forward every spelling of the batch's nodes, in every model, then list each node's children."""
        below: dict[int, dict[int, _Below]] = {id(n): {} for n in batch}
        for m, backend in enumerate(self.backends):
            requests = [
                (node, s)
                for node in batch
                if (values := node.values[m]) is not None
                for s in values.spellings
                if s.parent_row is not None
            ]
            for depth in sorted({len(s.path) for _, s in requests}):
                group = [(n, s) for n, s in requests if len(s.path) == depth]
                logprobs = self._forward(backend, [s for _, s in group])
                self.forwarded[m] += len(group)
                nodes = list({id(n): n for n, _ in group}.values())
                owner = {id(n): k for k, n in enumerate(nodes)}
                results = self._below(m, [owner[id(n)] for n, _ in group], [s for _, s in group], logprobs)
                for node, result in zip(nodes, results, strict=True):
                    below[id(node)][m] = result
        for node in batch:
            if not self.truncated:
                self._list_children(node, below[id(node)])
            for values in node.values:  # the children hold their parent rows now; drop this node's
                for spelling in values.spellings if values is not None else []:
                    spelling.row = None

    @staticmethod
    def _forward(backend: Backend, spellings: list[Spelling]) -> torch.Tensor:
        """One forward pass for spellings of equal length, gathering their parents' cache rows (which may
        sit in several earlier batches). Returns log-probabilities in the order of `spellings`."""
        parts: dict[int, tuple[Rows, list[int]]] = {}
        members: dict[int, list[int]] = {}
        for k, spelling in enumerate(spellings):
            assert spelling.parent_row is not None
            rows, index = spelling.parent_row
            parts.setdefault(id(rows), (rows, []))[1].append(index)
            members.setdefault(id(rows), []).append(k)
        order = [k for ks in members.values() for k in ks]  # gather lists rows part by part
        gathered = backend.gather(list(parts.values()))
        tokens = [spellings[k].path[-1] for k in order]
        new_rows, logprobs = backend.advance(gathered, list(range(len(order))), tokens)
        result = torch.empty_like(logprobs)
        for position, k in enumerate(order):
            spellings[k].row = (new_rows, position)
            spellings[k].parent_row = None
            result[k] = logprobs[position]
        return result

    def _below(self, model: int, owners: list[int], spellings: list[Spelling], logprobs: torch.Tensor) -> list[_Below]:
        """What one model says below each node of a forwarded group, all nodes at once: spelling k belongs
        to node owners[k], and a node's children are the mixture of its spellings' continuations."""
        keys = self.keys[model]
        logjoints = logprobs + torch.tensor([s.logprob for s in spellings], dtype=torch.float64).unsqueeze(1)
        count = max(owners) + 1
        owner_index = torch.tensor(owners, dtype=torch.long)
        token_mass = torch.zeros(count, logprobs.shape[1], dtype=torch.float64).index_add_(
            0, owner_index, logjoints.exp()
        )
        by_key = torch.zeros(count, len(keys.names), dtype=torch.float64).index_add_(1, keys.of_token, token_mass)
        del token_mass
        totals = by_key.sum(1, keepdim=True)
        entropy = torch.special.entr(by_key / totals.clamp_min(1e-300)).sum(1) / math.log(2)
        if self.partial[model]:
            entropy = torch.full_like(entropy, math.nan)
        listed: list[list[int]] = [[] for _ in range(count)]
        for row, key in torch.nonzero(by_key >= self.options.cutoff).tolist():
            listed[row].append(key)
        return [_Below(by_key[k], logjoints[owner_index == k], float(entropy[k]), listed[k]) for k in range(count)]

    def _list_children(self, node: MultiverseNode, below: dict[int, _Below]) -> None:
        """Children of a forwarded node: every key reaching the cutoff in some model, largest first."""
        node.expanded = True
        listed: set[str] = set()
        for m, result in below.items():
            values = node.values[m]
            assert values is not None
            values.entropy_bits = result.entropy_bits
            listed.update(self.keys[m].names[k] for k in result.listed)
        children = [self._child(node, key, below) for key in listed]
        children.sort(key=lambda c: -max((v.joint for v in c.values if v is not None), default=0.0))
        room = self.options.max_nodes - self.listed
        if len(children) > room:  # the budget ends here: keep the largest children, expand nothing more
            children = children[:room]
            self.truncated = True
        self.listed += len(children)
        node.children = children
        for child in children:
            if not self.truncated and child.depth < self.options.depth and not (child.eos and self.options.stop_at_eos):
                self._push(child)
            else:  # never forwarded: let go of the parent rows
                for values in child.values:
                    for spelling in values.spellings if values is not None else []:
                        spelling.parent_row = None

    def _child(self, node: MultiverseNode, key: str, below: dict[int, _Below]) -> MultiverseNode:
        values: list[ModelValues | None] = []
        best: tuple[float, str] = (-1.0, key)
        for m, parent_values in enumerate(node.values):
            key_id = self.keys[m].by_name.get(key)
            if parent_values is None or key_id is None:
                values.append(None)  # not comparable: this vocabulary has no token with the step's text
                continue
            if m not in below:  # the parent has no probability in this model, so neither has the child
                values.append(ModelValues(0.0, 0.0))
                continue
            joint = float(below[m].by_key[key_id])
            tokens = torch.from_numpy(self.keys[m].tokens(key_id))
            spellings = []
            likeliest: Spelling | None = None
            for parent_spelling, token_joints in zip(parent_values.spellings, below[m].logjoints, strict=True):
                for token, logprob in zip(tokens.tolist(), token_joints[tokens].tolist(), strict=True):
                    if math.exp(logprob) >= SPELLING_SHARE * joint and joint > 0:
                        spellings.append(Spelling((*parent_spelling.path, token), logprob, parent_spelling.row))
                    elif joint > 0 and (likeliest is None or logprob > likeliest.logprob):
                        likeliest = Spelling((*parent_spelling.path, token), logprob, parent_spelling.row)
            if not spellings and likeliest is not None:
                # mass spread over more than 1 / SPELLING_SHARE spellings: continue the likeliest, or expanding
                # the node would forward nothing and leave it marked expanded without children or entropy
                spellings = [likeliest]
            spellings.sort(key=lambda s: -s.logprob)
            text = self.keys[m].texts[spellings[0].path[-1]] if spellings else None
            if text is not None and joint > best[0]:
                best = (joint, text)
            prob = joint / parent_values.joint if parent_values.joint > 0 else 0.0
            values.append(ModelValues(joint, prob, None, spellings, text))
        return MultiverseNode(key, best[1], node.depth + 1, self._is_eos(key, values), values, parent=node)

    def _is_eos(self, key: str, values: list[ModelValues | None]) -> bool:
        """Whether a step ends the text (without merging, each EOS token keeps its own key)."""
        if key == EOS_KEY:
            return True
        return any(
            v is not None and bool(v.spellings) and v.spellings[0].path[-1] in self.backends[m].vocab.eos_ids
            for m, v in enumerate(values)
        )


# --- caching and the entry point ---------------------------------------------------------------------------

_MEMORY: OrderedDict[str, tuple[tuple[weakref.ref[Backend], ...], Multiverse]] = OrderedDict()


def _cache_key(identities: Sequence[str], roots: Sequence[Sequence[int]], options: ExpansionOptions) -> str:
    payload = json.dumps([CACHE_VERSION, list(identities), [list(r) for r in roots], options.__dict__])
    return hashlib.sha256(payload.encode()).hexdigest()


def multiverse(
    models: Backend | str | Sequence[Backend | str],
    prompt: str | ChatPrompt,
    *,
    prefix: str = "",
    depth: int = 4,
    cutoff: float = 0.01,
    max_nodes: int = 2000,
    merge: bool = True,
    stop_at_eos: bool = True,
    batch_size: int = 64,
    prefix_paths: Sequence[Sequence[int]] | None = None,
    cache_dir: Path | None = None,
    cache: bool = True,
    progress: Progress | None = None,
) -> Multiverse:
    """Expand the block multiverse of one or more models below a prompt: every continuation, step by step
    (a step is a token, or tokens merged into whitespace-delimited text), with its exact probability.

    Nodes are expanded best first (most probable first, all models batched) until `depth` or `max_nodes`;
    a node is listed and expanded only when its joint probability reaches `cutoff` in some model. With two
    models the union tree carries both models' probabilities, so the view shows where post-training moved
    mass (log2 ratio, bits).

    Args:
        models: One model or a list: loaded models (`ms.load`) or names to load.
        prompt: The text to continue, or a `ChatPrompt` for a chat model.
        prefix: A branch: text appended to the prompt that the tree starts from.
        depth: The deepest step.
        cutoff: Joint probability (relative to the root) a node needs to be listed and expanded.
        max_nodes: The most nodes in the tree; the expansion stops there (and says so in `notices`).
        merge: Merge steps that differ only in whitespace, and tokens into words.
        stop_at_eos: Do not expand below an end-of-sequence token.
        batch_size: Nodes per forward pass.
        prefix_paths: Each model's branch as token ids, instead of `prefix` text.
        cache_dir: Also cache expansions on disk here (models with a weights fingerprint only).
        cache: False always expands afresh and stores nothing (expansions are cached in memory by models,
            prompt, prefix and options).
        progress: `progress(count)` is called with the nodes forwarded by each batch.

    Returns:
        A `Multiverse`: the tree, with per node and model the step probability, joint probability and the
        entropy (bits) of the next step. In a notebook it shows the interactive multiverse (click a block to
        zoom, tabs per model); `plot()` draws the static block figure; `to_pandas()` lists the nodes.

    Example:
        >>> import modescope as ms
        >>> tree = ms.multiverse(["gemma-3-270m", "smollm2-135m-instruct"], "Are bugs real?", depth=4)
        >>> tree.to_pandas().sort_values("joint", ascending=False).head()
    """
    from modescope.models import backends

    loaded = backends(models)  # names are loaded; duplicates refused
    options = ExpansionOptions(depth, cutoff, max_nodes, merge, stop_at_eos)
    options.check()
    if prefix_paths is None:
        prefix_paths = [prefix_ids(b, prefix) for b in loaded]
    roots = [[*b.prompt_ids(prompt), *p] for b, p in zip(loaded, prefix_paths, strict=True)]
    prompt_text = prompt if isinstance(prompt, str) else prompt.user

    memory_key = _cache_key([f"{b.name}@{id(b)}" for b in loaded], roots, options)
    hit = _MEMORY.get(memory_key) if cache else None
    if hit is not None and all(ref() is b for ref, b in zip(hit[0], loaded, strict=True)):
        _MEMORY.move_to_end(memory_key)
        return hit[1]
    fingerprints = [b.fingerprint() for b in loaded] if cache and cache_dir is not None else []
    disk_file = None
    if cache_dir is not None and fingerprints and all(fingerprints):
        disk_file = cache_dir / f"{_cache_key([f or '' for f in fingerprints], roots, options)}.json"
        if disk_file.is_file():
            try:
                found = Multiverse.from_dict(json.loads(disk_file.read_text()))
            except (ValueError, KeyError, TypeError):
                found = None  # a damaged cache file is recomputed and overwritten
            if found is not None:
                found.cached = True
                _remember(memory_key, loaded, found)
                return found

    for b in loaded:
        b.capabilities.require("a block multiverse", b.name, "top-k")
    started = time.perf_counter()
    with ExitStack() as stack:  # a top-k server shows only its k best children: the rest stays unexpanded
        partial = [stack.enter_context(partial_distributions(b)) for b in loaded]
        expander = _Expander(loaded, options, batch_size, partial)
        root = expander.run(roots, progress)
    result = Multiverse(
        [b.name for b in loaded],
        prompt_text,
        prefix,
        depth,
        cutoff,
        max_nodes,
        merge,
        root,
        nodes_expanded=expander.forwarded,
        seconds=time.perf_counter() - started,
        prefix_paths=[list(p) for p in prefix_paths],
        capabilities={b.name: b.capabilities.metadata() for b in loaded},
    )
    if expander.truncated:
        result.truncated = True
        left = len(expander.frontier)
        result.notices.append(
            f"stopped at --max-nodes {max_nodes} with {max_nodes} nodes: expanding further would "
            f"exceed it; {left} more nodes above the cutoff were not expanded (their mass is in the grey "
            "'unexpanded' blocks). Raise --max-nodes or the cutoff."
        )
    for b, shown_only in zip(loaded, partial, strict=True):
        if shown_only:
            result.notices.append(
                f"{b.name} shows only its top {b.capabilities.top_k} tokens per step: children below them count "
                "as unexpanded mass (grey), and its entropies are not shown"
            )
    if cache:
        _remember(memory_key, loaded, result)
    if disk_file is not None:
        disk_file.parent.mkdir(parents=True, exist_ok=True)
        staging = disk_file.with_suffix(".tmp")
        staging.write_text(result.to_json())
        staging.replace(disk_file)
    return result


def _remember(key: str, models: Sequence[Backend], result: Multiverse) -> None:
    _MEMORY[key] = (tuple(weakref.ref(b) for b in models), result)
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > MEMORY_CACHE_SIZE:
        _MEMORY.popitem(last=False)


def branch(
    backends: Backend | Sequence[Backend],
    base: Multiverse,
    node: MultiverseNode,
    prompt: str | ChatPrompt,
    **options: Any,
) -> Multiverse:
    """Re-expand from a node of an earlier multiverse: the node becomes the root, so the cutoff and depth
    apply relative to it and show detail the first expansion cut off. Each model continues the node's most
    likely spelling; a multiverse read back from JSON (no spellings) branches on the node's text instead."""
    models = [backends] if isinstance(backends, Backend) else list(backends)
    if node.eos:
        raise ModescopeError("this node is the end of the text: there is nothing to branch into; pick another node")
    spellings = [v.spellings if v is not None else [] for v in node.values[: len(models)]]
    paths = None
    if len(base.prefix_paths) >= len(models) and all(spellings):
        paths = [[*base.prefix_paths[m], *spellings[m][0].path] for m in range(len(models))]
    settings: dict[str, Any] = {"depth": base.depth, "cutoff": base.cutoff, "max_nodes": base.max_nodes}
    settings |= {"merge": base.merge, **options}
    return multiverse(models, prompt, prefix=base.prefix + node.path_text(), prefix_paths=paths, **settings)
