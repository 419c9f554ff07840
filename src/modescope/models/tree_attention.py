"""Tree attention: the nodes of a token tree forwarded against one shared key/value store, no cache copied.

The level-by-level engine gives every node a KV-cache row of its own, so the prompt's keys and values are
copied once per node and level (with Gemma 3 and every spelling of 0..100, a quarter of the time went to such
copies), and a forward pass holds one tree level at most. Here the prompt is encoded once and each node's keys
and values are written once, into a per-layer store. A node attends to the prompt (one matrix product shared by
every node of a call) and to its ancestors and itself (at most the tree's depth, gathered from the store). A
call writes its nodes' keys before any of them attends, so a node may have its parent in the same call: a
whole answer tree goes in a few large forward passes, whatever the sizes of its levels.

It runs inside transformers' own decoder: `tree_attention` is registered with transformers' AttentionInterface
and chosen only for the duration of a tree call (`TreeState.attending`), the store stands in for the cache, and
the decoder's mask building is skipped by handing it masks it takes as already made. The attention is the same
softmax over the same keys as transformers' (sliding windows included), summed in another order: log-
probabilities agree to float rounding (tests/unit/test_tree_attention.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

NAME = "modescope_tree"
# decoders whose attention layers go through transformers' AttentionInterface and a cache's `update`, with no
# attention softcapping (checked again on the config): the same families as the fused LM head
TREE_MODELS = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text"}


@dataclass
class _LayerStore:
    """One layer's keys and values: the prompt's (as its cache kept them) and the nodes' (one slot each)."""

    prompt_keys: torch.Tensor  # [kv_heads, kept, head_dim]
    prompt_values: torch.Tensor
    offset: int  # position of the first prompt key kept (a sliding-window layer keeps only the last ones)
    keys: torch.Tensor  # [kv_heads, capacity, head_dim]
    values: torch.Tensor


@dataclass
class _Call:
    """What the nodes of one forward pass attend to (passed to `tree_attention` through the decoder's kwargs)."""

    state: TreeState
    ancestors: torch.Tensor  # [rows, depth] store slots of each node's ancestors then itself, 0-padded
    hidden: torch.Tensor  # [rows, depth] True where `ancestors` is padding
    positions: torch.Tensor  # [rows] each node's position (the prompt's tokens are 0..prompt_length-1)
    # [rows] how many of the prompt's first keys each row sees, when the call forwards the prompt itself (its
    # tokens see those up to their own); None: every row sees the whole prompt
    prompt_seen: torch.Tensor | None = None


ROOM = 256  # node slots a store starts with; it doubles when full


@dataclass
class TreeState:
    """The prompt's keys and values and every node forwarded so far below it (see `HFBackend.tree_start`).

    Keys and values live in slots, one per forwarded token: the prompt's (those a cache kept, or, for a store
    whose first call forwards the prompt itself, slots 0 to prompt_length - 1) and one per node after them."""

    layers: dict[int, _LayerStore]
    prompt_length: int
    chains: list[tuple[int, ...]] = field(default_factory=list)  # each node's ancestors' slots, then its own
    configs: list[Any] = field(default_factory=list)  # the configs whose attention implementation a call switches
    token_sets: torch.Tensor | None = None  # [sets, vocab] summed over at every node (`TreeStep.set_sums`)
    columns: torch.Tensor | None = None  # the vocabulary ids each step keeps (`TreeStep.columns`); None: all
    used: int = 0  # slots taken
    _prompt_in_call: bool = False  # the call being forwarded writes the prompt's slots
    device: torch.device | None = None  # the model's
    _start: int = 0  # the first slot of the call being forwarded

    @classmethod
    def from_cache(
        cls,
        cache: Any,
        prompt_length: int,
        configs: list[Any],
        token_sets: torch.Tensor | None = None,
        columns: torch.Tensor | None = None,
    ) -> TreeState:
        """A store holding what `cache` (a transformers cache of one row, the prompt) holds."""
        layers = {}
        for index, layer in enumerate(cache.layers):
            keys, values = layer.keys[0], layer.values[0]
            kv_heads, kept, dim = keys.shape
            room = keys.new_empty((kv_heads, ROOM, dim))
            layers[index] = _LayerStore(keys, values, prompt_length - kept, room, torch.empty_like(room))
        device = cache.layers[0].keys.device
        return cls(layers, prompt_length, configs=configs, token_sets=token_sets, columns=columns, device=device)

    @property
    def nodes(self) -> int:
        return len(self.chains)

    def depth(self, node: int) -> int:
        """Tokens after the prompt on the path to `node` (a root child has depth 1)."""
        return len(self.chains[node])

    def add(self, parents: Sequence[int], with_prompt: bool = False) -> _Call:
        """Take a slot for each new node (child of `parents[k]`: a node, or -1 for the prompt; a parent may be a
        node added earlier in the same list), and say what each row of the call attends to. `with_prompt`: the
        call forwards the prompt's tokens first, in slots 0 to prompt_length - 1 (the first call of a store with no
        prompt yet): they become the prompt part, each of its tokens seeing those up to its own."""
        self._start = self.used
        self._prompt_in_call = with_prompt
        rows: list[tuple[int, ...]] = []  # the node slots each row of the call attends to, its own last
        seen: list[int] = []
        if with_prompt:
            assert self.used == 0, "only a store's first call forwards the prompt"
            rows = [()] * self.prompt_length
            seen = [*range(1, self.prompt_length + 1)]
            self.used += self.prompt_length
        first = self.nodes
        for k, parent in enumerate(parents):
            if not -1 <= parent < first + k:
                raise ValueError(f"node {first + k} has parent {parent}: parents come before their children")
            chain = (*(self.chains[parent] if parent >= 0 else ()), self.used)
            self.chains.append(chain)
            rows.append(chain)
            self.used += 1
        self._reserve(self.used)
        deepest = max(len(r) for r in rows)
        ancestors = torch.zeros(len(rows), deepest, dtype=torch.long)
        hidden = torch.ones(len(rows), deepest, dtype=torch.bool)
        for row, slots in enumerate(rows):
            ancestors[row, : len(slots)] = torch.tensor(slots, dtype=torch.long)
            hidden[row, : len(slots)] = False
        positions = [*range(len(seen)), *(self.prompt_length + len(c) - 1 for c in self.chains[first:])]
        device = self.device
        prompt_seen = torch.tensor(seen + [self.prompt_length] * len(parents), device=device) if seen else None
        return _Call(self, ancestors.to(device), hidden.to(device), torch.tensor(positions, device=device), prompt_seen)

    def _reserve(self, slots: int) -> None:
        for layer in self.layers.values():
            capacity = layer.keys.shape[1]
            if slots > capacity:
                size = max(slots, 2 * capacity)
                for name in ("keys", "values"):
                    old = getattr(layer, name)
                    grown = old.new_empty((old.shape[0], size, old.shape[2]))
                    grown[:, :capacity] = old
                    setattr(layer, name, grown)

    def _layer(self, index: int, keys: torch.Tensor) -> _LayerStore:
        """Layer `index`'s store, made at the first call of a store with no prompt yet (from that call's keys
        [1, kv_heads, rows, head_dim])."""
        layer = self.layers.get(index)
        if layer is None:
            none = keys.new_empty((keys.shape[1], 0, keys.shape[3]))
            room = keys.new_empty((keys.shape[1], max(ROOM, self.used), keys.shape[3]))
            layer = self.layers[index] = _LayerStore(none, none, 0, room, torch.empty_like(room))
        return layer

    # --- the cache interface the decoder's attention layers call --------------------------------------------
    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the call's keys and values ([1, kv_heads, rows, head_dim]) into their slots."""
        layer = self._layer(layer_idx, keys)
        stop = self._start + keys.shape[2]
        layer.keys[:, self._start : stop] = keys[0]
        layer.values[:, self._start : stop] = values[0]
        if self._prompt_in_call:  # the prompt's slots are the prompt part from now on, this call included
            layer.prompt_keys = layer.keys[:, : self.prompt_length]
            layer.prompt_values = layer.values[:, : self.prompt_length]
        return keys, values

    @contextmanager
    def attending(self) -> Iterator[None]:
        """While a tree call runs, its decoder's attention layers use `tree_attention`."""
        register()
        previous = [config._attn_implementation_internal for config in self.configs]
        for config in self.configs:
            config._attn_implementation_internal = NAME
        try:
            yield
        finally:
            for config, implementation in zip(self.configs, previous, strict=True):
                config._attn_implementation_internal = implementation


def tree_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    modescope_tree: _Call | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of a call's nodes ([1, heads, rows, head_dim] queries) over the prompt and their ancestors;
    [1, rows, heads, head_dim] as transformers' attention functions answer. `key` and `value` are already in the
    store (`TreeState.update`)."""
    assert modescope_tree is not None, "tree attention runs only inside a tree call"
    call = modescope_tree
    layer = call.state.layers[int(module.layer_idx)]  # type: ignore[arg-type]
    heads, rows, dim = query.shape[1:]
    kv_heads = layer.keys.shape[0]
    groups = heads // kv_heads  # query head h reads key/value head h // groups, as transformers' repeat_kv does
    scale = scaling if scaling is not None else dim**-0.5
    q = query[0].reshape(kv_heads, groups, rows, dim)
    kept = layer.prompt_keys.shape[1]
    on_prompt = torch.matmul(q.reshape(kv_heads, groups * rows, dim), layer.prompt_keys.transpose(1, 2))
    on_prompt = on_prompt.view(kv_heads, groups, rows, kept) * scale
    node_keys = layer.keys[:, call.ancestors]  # [kv_heads, rows, depth, head_dim]
    node_values = layer.values[:, call.ancestors]
    on_nodes = torch.einsum("kgmh,kmdh->kgmd", q, node_keys) * scale
    hidden = call.hidden
    if sliding_window is not None:  # keys sliding_window or more positions back are out of sight
        oldest = (call.positions - sliding_window).unsqueeze(1)  # [rows, 1]: this position and those before go
        prompt_positions = torch.arange(layer.offset, layer.offset + kept, device=oldest.device)
        on_prompt = on_prompt.masked_fill(prompt_positions.unsqueeze(0) <= oldest, -torch.inf)
        node_positions = call.state.prompt_length + torch.arange(hidden.shape[1], device=oldest.device)
        hidden = hidden | (node_positions.unsqueeze(0) <= oldest)
    if call.prompt_seen is not None:  # the prompt's own tokens see those up to their own
        unseen = torch.arange(kept, device=call.prompt_seen.device).unsqueeze(0) >= call.prompt_seen.unsqueeze(1)
        on_prompt = on_prompt.masked_fill(unseen, -torch.inf)
    on_nodes = on_nodes.masked_fill(hidden, -torch.inf)
    weights = torch.softmax(torch.cat([on_prompt, on_nodes], dim=-1), dim=-1)
    from_prompt = torch.matmul(weights[..., :kept].reshape(kv_heads, groups * rows, kept), layer.prompt_values)
    out = from_prompt.view(kv_heads, groups, rows, dim) + torch.einsum(
        "kgmd,kmdh->kgmh", weights[..., kept:], node_values
    )
    return out.reshape(heads, rows, dim).transpose(0, 1).unsqueeze(0).contiguous(), None


_registered = False


def register() -> None:
    """Make `tree_attention` known to transformers (once per process)."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, tree_attention)
        _registered = True


def tree_configs(model: Any) -> list[Any] | None:
    """The configs a tree call switches to tree attention, or None when the model cannot take tree calls."""
    config = model.config.get_text_config()
    if getattr(config, "model_type", None) not in TREE_MODELS:
        return None
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return None
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    if not all(hasattr(c, "_attn_implementation_internal") for c in configs.values()):
        return None
    return list(configs.values())


def made_mask() -> torch.Tensor:
    """A mask the decoder takes as already made (transformers uses a 4D mask as given), so it builds none;
    `tree_attention` ignores it."""
    return torch.zeros(1, 1, 1, 1, dtype=torch.bool)
