"""KV caches that grow in place: a decode step writes its new positions into room kept after the cache.

transformers' `DynamicLayer.update` concatenates the new keys and values onto the old ones, so every decode step
copies the whole cache of every layer: with 32 rows of SmolLM2 over 48 tokens that was about a tenth of a
sampling run (`aten::cat`, torch.profiler). Here a layer keeps its keys and values as the leading positions of a
larger buffer (a `_Room`) and a step writes only its own positions; attention reads the filled part as a view.

Rows that branch from one cache must not write into each other's room: a room records how many positions have
been written, and only a layer whose keys end exactly there may write after them. Any other layer (a second
branch from the same cache, a layer whose rows were selected or rebuilt) moves into a room of its own first,
which costs the one copy the concatenation made at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

MIN_ROOM = 64  # positions of room a new buffer keeps beyond what it holds (a quarter more when that is larger)


def capacity(needed: int) -> int:
    """Positions a new buffer for `needed` positions has room for (resources.py counts them)."""
    return needed + max(MIN_ROOM, needed // 4)


@dataclass
class _Room:
    """The buffers a layer's keys and values are the leading positions of."""

    keys: torch.Tensor  # [batch, kv_heads, capacity, head_dim]
    values: torch.Tensor
    filled: int  # positions written so far

    @classmethod
    def around(cls, keys: torch.Tensor, values: torch.Tensor, needed: int) -> _Room:
        """A room holding copies of `keys` and `values`, with space for `needed` positions and more."""
        size = capacity(needed)
        room = cls(_buffer(keys, size), _buffer(values, size), keys.shape[-2])
        room.keys[:, :, : room.filled].copy_(keys)
        room.values[:, :, : room.filled].copy_(values)
        return room

    def holds(self, keys: torch.Tensor, values: torch.Tensor) -> bool:
        """Whether `keys` and `values` are this room's filled positions, so writing after them is safe."""
        return self.filled == keys.shape[-2] and _leads(keys, self.keys) and _leads(values, self.values)


def _buffer(like: torch.Tensor, capacity: int) -> torch.Tensor:
    batch, heads, _, width = like.shape
    return torch.empty(batch, heads, capacity, width, dtype=like.dtype, device=like.device)


def _leads(view: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Whether `view` is `buffer[:, :, :n]` for some n."""
    return (
        view.data_ptr() == buffer.data_ptr()
        and view.shape[:2] == buffer.shape[:2]
        and view.shape[-1] == buffer.shape[-1]
        and view.stride() == buffer.stride()
    )


def _write(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append `keys` and `values` to `layer`'s in place (in a new room if it has none it may write in); the
    layer's keys and values afterwards."""
    start = layer.keys.shape[-2]
    end = start + keys.shape[-2]
    room: _Room | None = getattr(layer, "room", None)
    if room is None or not room.holds(layer.keys, layer.values) or end > room.keys.shape[-2]:
        room = _Room.around(layer.keys, layer.values, end)
    room.keys[:, :, start:end].copy_(keys)
    room.values[:, :, start:end].copy_(values)
    room.filled = end
    layer.room = room
    layer.keys, layer.values = room.keys[:, :, :end], room.values[:, :, :end]
    return layer.keys, layer.values


def _filled(layer: DynamicLayer) -> bool:
    """Whether the layer holds positions already (its first update only fills it, as transformers' does)."""
    return layer.is_initialized and layer.keys is not None and layer.keys.numel() > 0


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose updates write in place instead of concatenating."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not _filled(self):
            return super().update(key_states, value_states, *args, **kwargs)
        return _write(self, key_states, value_states)


class GrowingSlidingWindowLayer(DynamicSlidingWindowLayer):
    """A `DynamicSlidingWindowLayer` that writes in place while its window is not full (then it slides as
    transformers' does)."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[-2]
        if (
            not _filled(self)
            or self.record_past
            or self.cumulative_length + new >= self.sliding_window  # the window would drop its first positions
        ):
            return super().update(key_states, value_states, *args, **kwargs)
        self.cumulative_length += new
        return _write(self, key_states, value_states)


_GROWING: dict[type, type] = {DynamicLayer: GrowingLayer, DynamicSlidingWindowLayer: GrowingSlidingWindowLayer}
_PLAIN: dict[type, type] = {growing: plain for plain, growing in _GROWING.items()}


def grow_in_place(cache: Any, grow: bool = True) -> Any:
    """Make `cache`'s dynamic layers grow in place from now on, or with `grow=False` concatenate again as
    transformers' do (other kinds of layers are left as they are); returns `cache`. The layers keep their
    state: only the class, and so `update`, changes.

    Rows that branch (a tree's nodes, each extended once from a selection of its parent's rows) should not
    grow in place: each selection is a new tensor, so every step would copy it into a new room and keep room
    that no step writes into. Rows that go on (a decode) should."""
    for layer in getattr(cache, "layers", ()):
        kind = (_GROWING if grow else _PLAIN).get(type(layer))
        if kind is not None:
            layer.__class__ = kind
        release_room(layer, unless_held=grow)
    return cache


def release_room(layer: Any, unless_held: bool = False) -> None:
    """Let go of `layer`'s room (so its buffer can be freed), or with `unless_held` only when the layer's keys
    are not in it (they were replaced: rows selected, a layer rebuilt)."""
    room: _Room | None = vars(layer).get("room")
    if room is not None and not (unless_held and room.holds(layer.keys, layer.values)):
        del layer.room
