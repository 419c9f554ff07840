"""Prefix-tree expansion: the next-token distribution of every node of a token tree.

The prompt is encoded once and each tree node costs exactly one token position: the minimum any method needs.
Two ways:
- `expand`: level by level, each level forwarded in batches of one token per node, every node reusing its
  parent's KV cache. Wide levels are split into groups expanded depth first, so memory stays bounded for trees
  of any size. Which children a node has is decided by a callback that sees the node's distribution, so the
  same engine serves a fixed tree and a model-driven one (block multiverse).
- `expand_planned`: a tree known before it is expanded (an answer set's spellings), through the backend's tree
  calls (`models/tree_attention.py`): batches of nodes of any levels, no cache copied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from modescope.models.base import Backend, Rows, TreeStep


@dataclass(frozen=True)
class Node:
    """A token prefix: the prompt followed by the tokens on the path from the root."""

    path: tuple[int, ...]  # tokens after the prompt; () is the root
    logprob: float  # log P(path | prompt), nats, float64
    data: Any = None  # what the caller attached when it asked for this node
    prompt: int = 0  # which prompt the path continues (of `expand_many`, or `expand_planned`'s prompt_index)


@dataclass(frozen=True)
class Child:
    """A child the caller wants expanded: its token, and data to attach to it."""

    token: int
    data: Any = None


Visit = Callable[[Node, torch.Tensor], Sequence[Child]]
"""Called once per node with its next-token log-probabilities [vocab]; returns the children to expand."""

BatchVisit = Callable[[Sequence[Node], torch.Tensor], Sequence[Sequence[Child]]]
"""Called once per forwarded batch with its nodes and their next-token log-probabilities [nodes, vocab]; returns
each node's children. Work over the vocabulary (a sum over thousands of tokens, say) is then done for the whole
batch in one tensor operation instead of once per node."""


PlannedVisit = Callable[[Sequence[Node], TreeStep], object]
"""Called once per batch of a planned expansion with its nodes and their step (`TreeStep`)."""


def per_node(visit: Visit) -> BatchVisit:
    """A batch visit that calls `visit` on each node of the batch in turn."""
    return lambda nodes, logprobs: [visit(node, logprobs[row]) for row, node in enumerate(nodes)]


@dataclass
class ExpansionStats:
    """What an expansion cost."""

    nodes: int = 0  # tree nodes forwarded, root excluded
    levels: int = 0  # depth of the deepest node
    prompt_tokens: int = 0
    tokens_forwarded: int = 0  # token positions the backend computed (prompt included)
    forward_calls: int = 0
    seconds: float = 0.0
    whole_distributions: int = 0  # whole next-token distributions fetched from a server (when not every node)

    @property
    def minimum_tokens(self) -> int:
        """The fewest token positions any method needs: the prompt once, and one per tree node."""
        return self.prompt_tokens + self.nodes


@dataclass(frozen=True)
class Planned:
    """A node of a tree known before it is expanded: its parent's index in the plan (-1: the root), its token,
    and the data to attach to it."""

    parent: int
    token: int
    data: Any = None


@dataclass
class _Pending:
    parent_row: int
    node: Node


@dataclass
class PrefixTree:
    """Level-by-level expansion of a token tree below one prompt."""

    backend: Backend
    batch_size: int = 128  # nodes per forward pass
    max_rows: int = 512  # nodes of one level whose caches are kept to expand their children together
    progress: Callable[[int], None] | None = None  # called with the number of nodes just finished
    # Applied to every node's log-probabilities before use, e.g. a per-token temperature.
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    stats: ExpansionStats = field(default_factory=ExpansionStats)

    def expand(
        self, prompt: Sequence[int], visit: Visit | None, root_data: Any = None, visit_batch: BatchVisit | None = None
    ) -> ExpansionStats:
        """Visit the root, then every child the visits ask for, breadth first (give `visit` or `visit_batch`)."""
        return self.expand_many([prompt], visit, [root_data], visit_batch)

    def expand_many(
        self,
        prompts: Sequence[Sequence[int]],
        visit: Visit | None,
        root_data: Sequence[Any] | None = None,
        visit_batch: BatchVisit | None = None,
    ) -> ExpansionStats:
        """Like `expand` for the tree below each prompt (`Node.prompt` tells them apart, `root_data[k]` is
        attached to prompt k's root), the trees expanded together: each level's batches hold nodes of every
        prompt, so a forward pass serves them all. Prompts go `batch_size` at a time, left-padded to one
        length (the padding is forwarded too, and counted in `tokens_forwarded`)."""
        if (visit is None) == (visit_batch is None):
            raise ValueError("give exactly one of visit and visit_batch")
        batch_visit = visit_batch if visit is None else per_node(visit)
        assert batch_visit is not None
        started = time.perf_counter()
        before_tokens, before_calls = self.backend.stats.tokens, self.backend.stats.calls
        data = list(root_data) if root_data is not None else [None] * len(prompts)
        for first in range(0, len(prompts), self.batch_size):
            chunk = prompts[first : first + self.batch_size]
            # one prompt goes unpadded, as it always did
            start = self.backend.start(chunk[0]) if len(chunk) == 1 else self.backend.start_many(chunk)
            rows, logprobs = self._transformed(start)
            self.stats.prompt_tokens += sum(len(p) for p in chunk)
            roots = [Node((), 0.0, data[first + k], first + k) for k in range(len(chunk))]
            pending = self._children(roots, 0, logprobs, batch_visit)
            self._expand_below(rows, pending, batch_visit)
        self.stats.tokens_forwarded += self.backend.stats.tokens - before_tokens
        self.stats.forward_calls += self.backend.stats.calls - before_calls
        self.stats.seconds += time.perf_counter() - started
        return self.stats

    def expand_planned(
        self,
        prompt: Sequence[int],
        plan: Sequence[Planned],
        visit: PlannedVisit,
        root_data: Any = None,
        token_sets: torch.Tensor | None = None,
        prompt_index: int = 0,
        columns: torch.Tensor | None = None,
    ) -> ExpansionStats | None:
        """Visit the root, then every node of `plan` (parents before children), forwarding `batch_size` nodes
        per pass with the backend's tree calls: each node costs one token position and no cache is copied, and
        a pass holds nodes of any levels, so it stays full whatever the tree's shape. Each visit gets a batch's
        nodes and their step: log-probabilities and, for `token_sets` [sets, vocab], each set's probability
        (summed by the backend as it normalizes, when no `transform` changes the distributions first). The nodes
        carry `prompt_index` (`Node.prompt`), for a caller that expands the same plan below several prompts.
        With `columns` (vocabulary ids, every token of the plan among them) the steps keep only those
        log-probabilities, unless a `transform` needs whole rows. None, with nothing done, from a backend
        without tree calls: then use `expand`."""
        started = time.perf_counter()
        before_tokens, before_calls = self.backend.stats.tokens, self.backend.stats.calls
        first = range(min(self.batch_size, len(plan)))
        parents, tokens = [plan[k].parent for k in first], [plan[k].token for k in first]
        plain = self.transform is None
        begun = self.backend.tree_start(
            prompt, parents, tokens, token_sets if plain else None, columns if plain else None
        )
        if begun is None:
            return None
        tree, first_step = begun
        self.stats.prompt_tokens += len(prompt)
        paths: list[tuple[int, ...]] = []
        children: list[list[int]] = [[] for _ in range(len(plan) + 1)]  # children[k + 1]: those of node k
        for k, node in enumerate(plan):
            paths.append((*(paths[node.parent] if node.parent >= 0 else ()), node.token))
            children[node.parent + 1].append(k)
        logprob = [0.0] * len(plan)

        def made(indices: Sequence[int], step: TreeStep) -> list[Node]:
            """The nodes of a forwarded batch (plan indices; -1 is the root), made in order: each row gives its
            children their path log-probabilities, and a parent comes before its children, in this batch or an
            earlier one."""
            nodes = []
            for row, k in enumerate(indices):
                node = (
                    Node(paths[k], logprob[k], plan[k].data, prompt_index)
                    if k >= 0
                    else Node((), 0.0, root_data, prompt_index)
                )
                below = children[k + 1]
                for child, value in zip(below, step.at(row, [plan[c].token for c in below]), strict=True):
                    logprob[child] = node.logprob + value
                nodes.append(node)
            return nodes

        def transformed(step: TreeStep) -> TreeStep:
            if not self.transform:
                return step
            logprobs = self.transform(step.logprobs)
            return TreeStep.of(logprobs, token_sets)

        def counted(batch: range) -> None:
            self.stats.nodes += len(batch)
            self.stats.levels = max([self.stats.levels, *(len(paths[k]) for k in batch)])
            if self.progress and batch:
                self.progress(len(batch))

        step = transformed(first_step)  # the root's row, then the first batch's
        visit(made([-1, *first], step), step)
        counted(first)
        for start in range(len(first), len(plan), self.batch_size):
            batch = range(start, min(start + self.batch_size, len(plan)))
            step = self.backend.tree_extend(tree, [plan[k].parent for k in batch], [plan[k].token for k in batch])
            step = transformed(step)
            visit(made(batch, step), step)
            counted(batch)
        self.stats.tokens_forwarded += self.backend.stats.tokens - before_tokens
        self.stats.forward_calls += self.backend.stats.calls - before_calls
        self.stats.seconds += time.perf_counter() - started
        return self.stats

    def _transformed(self, step: tuple[Rows, torch.Tensor]) -> tuple[Rows, torch.Tensor]:
        rows, logprobs = step
        return rows, (self.transform(logprobs) if self.transform else logprobs)

    def _children(
        self, nodes: Sequence[Node], first_row: int, logprobs: torch.Tensor, visit: BatchVisit
    ) -> list[_Pending]:
        """The children the visit asks for below `nodes` (rows `first_row`... of the forwarded batch)."""
        pending = []
        for offset, (node, children) in enumerate(zip(nodes, visit(nodes, logprobs), strict=True)):
            if not children:
                continue
            steps = logprobs[offset, [c.token for c in children]].tolist()  # one gather per node
            pending += [
                _Pending(first_row + offset, Node((*node.path, c.token), node.logprob + step, c.data, node.prompt))
                for c, step in zip(children, steps, strict=True)
            ]
        return pending

    def _expand_below(self, rows: Rows, pending: list[_Pending], visit: BatchVisit) -> None:
        """Forward `pending` (children of `rows`) and everything below them.

        Up to `max_rows` nodes of a level are forwarded together and their children expanded as one next
        level, which keeps batches full; a wider level is split into groups handled one after the other, so
        the KV caches held at once stay bounded (about max_rows rows per tree level) however big the tree.
        """
        depth = len(pending[0].node.path) if pending else 0
        self.stats.levels = max(self.stats.levels, depth)
        for group_start in range(0, len(pending), self.max_rows):
            group = pending[group_start : group_start + self.max_rows]
            parts: list[Rows] = []
            next_pending: list[_Pending] = []
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                part, logprobs = self._transformed(
                    self.backend.extend(rows, [p.parent_row for p in batch], [p.node.path[-1] for p in batch])
                )
                parts.append(part)
                next_pending += self._children([item.node for item in batch], start, logprobs, visit)
                self.stats.nodes += len(batch)
                if self.progress:
                    self.progress(len(batch))
            if next_pending:
                self._expand_below(self.backend.concat(parts), next_pending, visit)
