"""KV caches that grow in place (models/kv_growth.py): decode steps give the log-probabilities of full passes of
each row's prefix, write into one buffer instead of copying the cache, never into another branch's positions,
and slide as transformers' sliding-window layers do once the window is full."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from modescope.models.hf import CacheRows
from modescope.models.kv_growth import GrowingLayer, GrowingSlidingWindowLayer, grow_in_place
from tests.unit.tiny_models import tiny_backend

PROMPT = "Q: 12 or 7?\nA:"


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])  # gemma3's sliding window (4) fills on the way
def test_decode_steps_give_the_log_probabilities_of_full_passes(architecture: str) -> None:
    backend = tiny_backend(architecture)
    prompt = backend.prompt_ids(PROMPT)
    rows, _ = backend.start(prompt)
    rows, _ = backend.extend(rows, [0, 0, 0], [5, 17, 260])
    prefixes = [[*prompt, 5], [*prompt, 17], [*prompt, 260]]
    for step in range(8):
        keep = [0, 2] if step == 3 else list(range(len(prefixes)))  # a row ends: the others are selected
        prefixes = [prefixes[row] for row in keep]
        tokens = [(7 * step + 3 * row) % 200 + 1 for row in range(len(prefixes))]
        rows, logprobs = backend.advance(rows, keep, tokens)
        prefixes = [[*prefix, token] for prefix, token in zip(prefixes, tokens, strict=True)]
        reference = backend.next_logprobs(prefixes)
        assert torch.allclose(logprobs, reference, atol=1e-12, rtol=0)
    assert isinstance(rows, CacheRows)
    assert all(isinstance(layer, (GrowingLayer, GrowingSlidingWindowLayer)) for layer in rows.cache.layers)


def test_steps_write_into_one_buffer() -> None:
    backend = tiny_backend("llama")
    rows, _ = backend.start(backend.prompt_ids(PROMPT))
    rows, _ = backend.advance(rows, [0], [5])
    assert isinstance(rows, CacheRows)
    first = rows.cache.layers[0].keys.data_ptr()
    for token in (6, 7, 8, 9):
        rows, _ = backend.advance(rows, [0], [token])
    assert isinstance(rows, CacheRows)
    assert rows.cache.layers[0].keys.data_ptr() == first  # no copy of the cache after the first step


def positions(layer: DynamicLayer) -> list[float]:
    return layer.keys[0, 0, :, 0].tolist()


def states(*values: float) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.tensor(values, dtype=torch.float64).reshape(1, 1, len(values), 1)
    return keys, -keys


def test_branches_from_one_cache_keep_their_own_positions() -> None:
    layer = GrowingLayer()
    layer.update(*states(1, 2))
    layer.update(*states(3))  # now in a room with space after position 2
    branch = copy.copy(layer)  # shares the room, as a shallow copy of a cache does
    layer.update(*states(4))
    branch.update(*states(40))  # may not write where `layer` just wrote
    assert positions(layer) == [1, 2, 3, 4]
    assert positions(branch) == [1, 2, 3, 40]
    assert torch.equal(layer.values, -layer.keys) and torch.equal(branch.values, -branch.keys)
    layer.update(*states(5))
    assert positions(layer) == [1, 2, 3, 4, 5] and positions(branch) == [1, 2, 3, 40]


def test_a_full_room_moves_to_a_larger_one() -> None:
    layer = GrowingLayer()
    layer.update(*states(0))
    for value in range(1, 200):
        layer.update(*states(value))
    assert positions(layer) == list(range(200))


def test_sliding_layers_slide_as_transformers_does() -> None:
    growing, plain = GrowingSlidingWindowLayer(sliding_window=4), DynamicSlidingWindowLayer(sliding_window=4)
    for update in ([1, 2], [3], [4], [5], [6, 7], [8]):
        mine, theirs = growing.update(*states(*update)), plain.update(*states(*update))
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))
        assert torch.equal(growing.keys, plain.keys) and growing.get_seq_length() == plain.get_seq_length()
        assert growing.get_mask_sizes(1) == plain.get_mask_sizes(1)


def test_grow_in_place_changes_only_plain_dynamic_layers() -> None:
    class Other(DynamicLayer):
        pass

    cache = type("Cache", (), {})()
    cache.layers = [DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=8), Other()]
    grow_in_place(cache)
    assert [type(layer) for layer in cache.layers] == [GrowingLayer, GrowingSlidingWindowLayer, Other]


def test_rows_that_branch_keep_no_room() -> None:
    """A tree's nodes are extended once from a selection of their parents' rows: growing them in place would
    copy every selection into a room that no later step writes into."""
    backend = tiny_backend("llama")
    rows, _ = backend.start(backend.prompt_ids(PROMPT))
    rows, _ = backend.advance(rows, [0], [5])  # a decode step: the layers grow in place
    assert isinstance(rows, CacheRows) and "room" in vars(rows.cache.layers[0])
    branched, _ = backend.extend(rows, [0, 0], [6, 7])
    assert isinstance(branched, CacheRows)
    assert all(type(layer) is DynamicLayer and "room" not in vars(layer) for layer in branched.cache.layers)
    assert "room" in vars(rows.cache.layers[0])  # the rows branched from are left as they were


def test_a_rebuilt_cache_lets_go_of_the_room_it_was_copied_with() -> None:
    backend = tiny_backend("llama")
    rows, _ = backend.start(backend.prompt_ids(PROMPT))
    rows, _ = backend.advance(rows, [0], [5])
    joined = backend.gather([(rows, [0, 0])])
    assert isinstance(joined, CacheRows)
    assert all("room" not in vars(layer) for layer in joined.cache.layers)


def test_growth_turned_off_concatenates_and_lets_go_of_the_room() -> None:
    layer = GrowingLayer()
    layer.update(*states(1))
    layer.update(*states(2))
    assert "room" in vars(layer)
    cache = type("Cache", (), {})()
    cache.layers = [layer]
    grow_in_place(cache, grow=False)
    assert type(layer) is DynamicLayer and "room" not in vars(layer)
    layer.update(*states(3))
    assert positions(layer) == [1, 2, 3]
