"""Exact log-probabilities of given continuations: teacher forcing through the same rows the decoder uses.

Every continuation is fed token by token after its prompt, all of them in one batch (each model's KV cache
is reused, as when sampling), and the log-probability of each next token under the backend's full
distribution is read off. It works on every in-process backend (a GuidedBackend's mixture included), so a
text is scored by exactly the distribution it would be sampled from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from modescope.models.base import Backend

MAX_ROWS = 64  # continuations scored at once (each row holds a [vocab] distribution per step)


def continuation_logprobs(
    backend: Backend, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], max_rows: int = MAX_ROWS
) -> list[list[float]]:
    """log p(token) of every token of each continuation given its prompt and the tokens before it (nats)."""
    scores: list[list[float]] = [[] for _ in prompts]
    for first in range(0, len(prompts), max_rows):
        chunk = range(first, min(first + max_rows, len(prompts)))
        rows, logprobs = backend.start_many([prompts[k] for k in chunk])
        live = [k for k in chunk if continuations[k]]
        row_of = {k: k - first for k in chunk}
        step = 0
        while live:
            for k in live:
                scores[k].append(float(logprobs[row_of[k], continuations[k][step]]))
            going = [k for k in live if len(continuations[k]) > step + 1]
            if not going:
                break
            rows, logprobs = backend.advance(rows, [row_of[k] for k in going], [continuations[k][step] for k in going])
            row_of = {k: j for j, k in enumerate(going)}
            live = going
            step += 1
    return scores


def mean_logprob(scores: Sequence[float]) -> float:
    """Mean per-token log-probability (nats) of one scored continuation; NaN when it has no token."""
    return math.fsum(scores) / len(scores) if scores else math.nan
