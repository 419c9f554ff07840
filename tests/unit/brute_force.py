"""Reference masses computed without the engine: whole token sequences scored one prefix at a time.

Written independently of modescope.probes.distribution so that agreement means something.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence

import torch

from modescope.models.base import Backend

WORD = re.compile(r"\w")


def is_boundary_text(data: bytes) -> bool:
    """The text starts with a non-word character (decodable first character)."""
    text = data.decode("utf-8", errors="ignore")
    return bool(text) and WORD.match(text[0]) is None


class Scorer:
    """Full next-token distributions of prefixes, each computed from scratch (no KV cache), memoized."""

    def __init__(self, backend: Backend, prompt: Sequence[int]) -> None:
        self.backend = backend
        self.prompt = tuple(prompt)
        self.memo: dict[tuple[int, ...], torch.Tensor] = {}

    def dist(self, path: tuple[int, ...]) -> torch.Tensor:
        if path not in self.memo:
            self.memo[path] = self.backend.next_logprobs([self.prompt + path])[0]
        return self.memo[path]

    def logprob(self, path: tuple[int, ...]) -> float:
        return math.fsum(float(self.dist(path[:k])[path[k]]) for k in range(len(path)))


def spellings(backend: Backend, text: bytes) -> Iterator[tuple[int, ...]]:
    """Every non-special token sequence whose bytes are exactly `text`."""
    if not text:
        yield ()
        return
    for token, data in enumerate(backend.vocab.token_bytes):
        if data and token not in backend.vocab.special_ids and text.startswith(data):
            for rest in spellings(backend, text[len(data) :]):
                yield (token, *rest)


def boundary_tokens(backend: Backend) -> list[int]:
    vocab = backend.vocab
    return [t for t, d in enumerate(vocab.token_bytes) if t in vocab.special_ids or not d or is_boundary_text(d)]


def target_mass(
    scorer: Scorer, text: bytes, paths: Callable[[bytes], Sequence[tuple[int, ...]]], straddle: bool
) -> float:
    """P(spell `text`, then a boundary): exact spellings followed by a boundary token, plus (when `straddle`)
    shorter spellings followed by one token that finishes the text and starts a boundary."""
    backend = scorer.backend
    ends = boundary_tokens(backend)
    total = 0.0
    for path in paths(text):
        after = scorer.dist(path)
        total += math.exp(scorer.logprob(path) + float(torch.logsumexp(after[ends], 0)))
    if straddle:
        for cut in range(len(text)):
            rest = text[cut:]
            for path in paths(text[:cut]):
                for token, data in enumerate(backend.vocab.token_bytes):
                    if (
                        token not in backend.vocab.special_ids
                        and data.startswith(rest)
                        and is_boundary_text(data[len(rest) :])
                    ):
                        total += math.exp(scorer.logprob((*path, token)))
    return total
