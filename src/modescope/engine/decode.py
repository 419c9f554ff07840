"""Batched continuation: greedy or sampled, with a record of every generated token.

All n continuations share the prompt's KV cache; a row that ends (EOS or a stop string) is dropped from the
batch at once, so finished rows cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from modescope.errors import ModescopeError
from modescope.models.base import Backend

LOG2 = math.log(2.0)


@dataclass
class Alternative:
    id: int
    text: str
    logprob: float  # natural log, under the raw model


@dataclass
class TokenRecord:
    """One generated token and what else was likely at its position."""

    id: int
    text: str
    logprob: float  # natural log of its probability under the raw model
    entropy_bits: float  # entropy of the raw next-token distribution at this position
    top: list[Alternative] = field(default_factory=list)


@dataclass
class Continuation:
    tokens: list[TokenRecord]
    finish_reason: str  # "eos", "stop" or "length"

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    @property
    def logprob(self) -> float:
        return math.fsum(t.logprob for t in self.tokens)


def _entropy_bits(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of log-probabilities, in bits."""
    return -(logprobs.exp() * logprobs.nan_to_num(neginf=0.0)).sum(-1) / LOG2


def _choose(logprobs: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Next token of each row: argmax at temperature 0, else a sample from softmax(logprobs / temperature)."""
    if temperature == 0.0:
        return logprobs.argmax(-1)
    probs = torch.softmax(logprobs / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(
    backend: Backend,
    prompt: Sequence[int],
    n: int = 1,
    max_tokens: int = 32,
    temperature: float = 0.0,
    top_k_alternatives: int = 5,
    seed: int | None = None,
    stop: Sequence[str] = (),
) -> list[Continuation]:
    """Continue `prompt` n times; the same seed gives the same samples on the same backend."""
    if n < 1:
        raise ModescopeError(f"n must be at least 1 (got {n})")
    if max_tokens < 1:
        raise ModescopeError(f"max tokens must be at least 1 (got {max_tokens})")
    if temperature < 0 or not math.isfinite(temperature):
        raise ModescopeError(f"temperature must be 0 (greedy) or positive (got {temperature})")
    if any(s == "" for s in stop):
        raise ModescopeError("a stop string is empty; give non-empty stop strings")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    rows, logprobs = backend.start(prompt)
    logprobs = logprobs.expand(n, -1)
    records: list[list[TokenRecord]] = [[] for _ in range(n)]
    finish = ["length"] * n
    active = list(range(n))  # continuation index of each current row (all rows share the prompt at step 0)
    for step in range(max_tokens):
        chosen = _choose(logprobs, temperature, generator)
        entropy = _entropy_bits(logprobs)
        top = logprobs.topk(min(top_k_alternatives, logprobs.shape[-1]), dim=-1) if top_k_alternatives else None
        still: list[tuple[int, int, int]] = []  # (continuation, row, token)
        for row, index in enumerate(active):
            token = int(chosen[row])
            alternatives = (
                [
                    Alternative(int(i), backend.token_text(int(i)), float(v))
                    for v, i in zip(top.values[row], top.indices[row], strict=True)
                ]
                if top is not None
                else []
            )
            records[index].append(
                TokenRecord(
                    token, backend.token_text(token), float(logprobs[row, token]), float(entropy[row]), alternatives
                )
            )
            if token in backend.vocab.eos_ids:
                finish[index] = "eos"
            elif stop and any(s in "".join(t.text for t in records[index]) for s in stop):
                finish[index] = "stop"
            else:
                still.append((index, 0 if step == 0 else row, token))
        if not still or step == max_tokens - 1:
            break
        active = [s[0] for s in still]
        rows, logprobs = backend.extend(rows, [s[1] for s in still], [s[2] for s in still])
    return [Continuation(tokens, reason) for tokens, reason in zip(records, finish, strict=True)]
