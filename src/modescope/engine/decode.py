"""Batched continuation: greedy or sampled through the sampler chain, recording every generated token.

All n continuations share the prompt's KV cache; a row that ends (EOS or a stop string) is dropped from the
batch at once, so finished rows cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from modescope.engine.samplers import SamplerSettings, sample
from modescope.errors import ModescopeError
from modescope.models.base import Backend, Rows, ServerCompletion

LOG2 = math.log(2.0)


@dataclass
class Alternative:
    id: int
    text: str
    logprob: float  # natural log of its probability under the raw model


@dataclass
class TokenRecord:
    """One generated token and what else was likely at its position."""

    id: int
    text: str
    logprob: float  # natural log of its probability under the distribution actually sampled from
    raw_logprob: float  # natural log of its probability under the raw model
    entropy_bits: float  # entropy of the raw next-token distribution at this position (NaN: only bounds known)
    top: list[Alternative] = field(default_factory=list)  # the most likely tokens under the raw model
    special: bool = False  # EOS or a control token: shown by name, not part of the text
    # (lower, upper) entropy in bits when a server showed only the top alternatives, else None
    entropy_bounds: tuple[float, float] | None = None


@dataclass
class Continuation:
    tokens: list[TokenRecord]
    finish_reason: str  # "eos", "stop" or "length"

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens if not t.special)

    @property
    def raw_logprob(self) -> float:
        """log P(continuation | prompt) under the raw model, nats."""
        return math.fsum(t.raw_logprob for t in self.tokens)


def entropy_bits(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of log-probabilities, in bits (0 log 0 = 0)."""
    return -(logprobs.exp() * logprobs.nan_to_num(neginf=0.0)).sum(-1) / LOG2


def protected_tokens(backend: Backend) -> frozenset[int]:
    """Tokens a sampler must not take away when that would stop the text from ending: EOS and newline."""
    return backend.vocab.eos_ids | frozenset(backend.vocab.ids_with_bytes(b"\n"))


def _settings(
    max_tokens: int, stop: Sequence[str], sampler: SamplerSettings | None, temperature: float
) -> SamplerSettings:
    """Check the options every decode takes; the sampler chain, or plain temperature without one."""
    if max_tokens < 1:
        raise ModescopeError(f"max tokens must be at least 1 (got {max_tokens})")
    if any(s == "" for s in stop):
        raise ModescopeError("a stop string is empty; give non-empty stop strings")
    return sampler if sampler is not None else SamplerSettings.make(temperature=temperature)


def generate(
    backend: Backend,
    prompt: Sequence[int],
    n: int = 1,
    max_tokens: int = 32,
    temperature: float = 0.0,
    sampler: SamplerSettings | None = None,
    top_k_alternatives: int = 10,
    seed: int | None = None,
    stop: Sequence[str] = (),
) -> list[Continuation]:
    """Continue `prompt` n times; the same seed gives the same samples on the same backend.

    `sampler` is the full sampler chain; without it, `temperature` alone (0 = greedy). A continuation ends
    at EOS, after the token that completes a stop string (kept in the text), or after `max_tokens`.
    """
    if n < 1:
        raise ModescopeError(f"n must be at least 1 (got {n})")
    settings = _settings(max_tokens, stop, sampler, temperature)
    if backend.samples_on_server:
        return _on_server(backend, [prompt], n, max_tokens, settings, top_k_alternatives, seed, stop)
    rows, logprobs = backend.start(prompt)
    return _decode(backend, rows, logprobs.expand(n, -1), True, max_tokens, settings, top_k_alternatives, seed, stop)


def generate_many(
    backend: Backend,
    prompts: Sequence[Sequence[int]],
    max_tokens: int = 32,
    temperature: float = 0.0,
    sampler: SamplerSettings | None = None,
    top_k_alternatives: int = 10,
    seed: int | None = None,
    stop: Sequence[str] = (),
) -> list[Continuation]:
    """Continue each of several prompts (of any lengths) once, all in one batch: one decode call in total,
    however many prompts (perturbed prefixes of an attractor experiment, say)."""
    settings = _settings(max_tokens, stop, sampler, temperature)
    if backend.samples_on_server:
        return _on_server(backend, prompts, 1, max_tokens, settings, top_k_alternatives, seed, stop)
    rows, logprobs = backend.start_many(prompts)
    return _decode(backend, rows, logprobs, False, max_tokens, settings, top_k_alternatives, seed, stop)


def _decode(
    backend: Backend,
    rows: Rows,
    logprobs: torch.Tensor,
    fan_out: bool,
    max_tokens: int,
    settings: SamplerSettings,
    top_k_alternatives: int,
    seed: int | None,
    stop: Sequence[str],
) -> list[Continuation]:
    """The decoding loop. With `fan_out`, every continuation starts from the single row of `rows`; else
    continuation k starts from row k."""
    n = logprobs.shape[0]
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    protected = protected_tokens(backend)
    records: list[list[TokenRecord]] = [[] for _ in range(n)]
    texts = [""] * n
    finish = ["length"] * n
    active = list(range(n))  # the continuation of each current row
    for step in range(max_tokens):
        chosen, sampled = sample(settings, logprobs, generator, protected)
        entropy = entropy_bits(logprobs)
        top = logprobs.topk(min(top_k_alternatives, logprobs.shape[-1]), dim=-1) if top_k_alternatives else None
        keep: list[int] = []
        for row, index in enumerate(active):
            token = int(chosen[row])
            alternatives = []
            if top is not None:
                pairs = zip(top.indices[row].tolist(), top.values[row].tolist(), strict=True)
                alternatives = [Alternative(i, backend.token_text(i), v) for i, v in pairs]
            special = token in backend.vocab.special_ids
            record = TokenRecord(
                token,
                backend.token_text(token),
                float(sampled[row, token]),
                float(logprobs[row, token]),
                float(entropy[row]),
                alternatives,
                special,
            )
            records[index].append(record)
            texts[index] += "" if special else record.text
            if token in backend.vocab.eos_ids:
                finish[index] = "eos"
            elif any(s in texts[index] for s in stop):
                finish[index] = "stop"
            else:
                keep.append(row)
        if not keep or step == max_tokens - 1:
            break
        parents = [0] * len(keep) if step == 0 and fan_out else keep
        rows, logprobs = backend.advance(rows, parents, [int(chosen[row]) for row in keep])
        active = [active[row] for row in keep]
    return [Continuation(tokens, reason) for tokens, reason in zip(records, finish, strict=True)]


# --- sampling on a server ----------------------------------------------------------------------------------

SERVER_SAMPLERS = ("temperature", "top_k", "top_p", "min_p")


def server_params(settings: SamplerSettings) -> dict[str, float | int]:
    """The sampler chain as OpenAI/vLLM sampling parameters, refusing what a server cannot apply.

    Servers apply temperature before top-p and min-p (modescope's default order applies it last), so a chain
    that mixes them is refused unless its order puts temperature first."""
    other = [name for name in settings.active if name not in SERVER_SAMPLERS]
    if other:
        raise ModescopeError(
            f"a server samples by itself and supports {', '.join(SERVER_SAMPLERS)}; {', '.join(other)} need whole "
            "distributions at every step, which only an in-process model gives: drop them for this model"
        )
    active = settings.active
    mixed = [name for name in ("top_p", "min_p") if name in active]
    heated = "temperature" in active and not settings.greedy
    if heated and mixed and active.index("temperature") > min(active.index(name) for name in mixed):
        raise ModescopeError(
            f"a server applies temperature before {' and '.join(mixed)}; put temperature first in --sampler-order "
            "so the model samples what you asked for"
        )
    params: dict[str, float | int] = {"temperature": settings.temperature}
    if settings.top_k > 0:
        params["top_k"] = settings.top_k
    if settings.top_p < 1.0:
        params["top_p"] = settings.top_p
    if settings.min_p > 0.0:
        params["min_p"] = settings.min_p
    return params


def entropy_bounds_bits(shown: Sequence[float], vocab_size: int, extra: Sequence[float] = ()) -> tuple[float, float]:
    """Bounds on the entropy (bits) of a distribution of which only the `shown` log-probabilities (nats,
    the most likely tokens) and `extra` ones (a sampled token outside them) are known: the unseen mass r
    sits on the other tokens, each no likelier than the least likely shown one. Lower bound: r in pieces of
    that size; upper bound: r spread evenly."""
    ranked = [math.exp(x) for x in shown if math.isfinite(x)]
    probs = ranked + [math.exp(x) for x in extra if math.isfinite(x)]
    known = -math.fsum(p * math.log(p) for p in probs if p > 0)
    rest = max(0.0, 1.0 - math.fsum(probs))
    unseen = vocab_size - len(probs)
    if rest <= 1e-12 or unseen <= 0:
        return known / LOG2, known / LOG2
    smallest = min(ranked) if ranked else 1.0
    low = known + rest * -math.log(min(smallest, rest))
    high = known + rest * math.log(unseen / rest)
    return low / LOG2, max(low, high) / LOG2


def _on_server(
    backend: Backend,
    prompts: Sequence[Sequence[int]],
    n: int,
    max_tokens: int,
    settings: SamplerSettings,
    top_k_alternatives: int,
    seed: int | None,
    stop: Sequence[str],
) -> list[Continuation]:
    """Continuations sampled by the server itself; records hold what it showed (the top alternatives)."""
    params = server_params(settings)
    answers = backend.sample_on_server(prompts, n, max_tokens, params, top_k_alternatives, seed, stop)
    shown = backend.server_alternatives(top_k_alternatives)
    return [_server_continuation(backend, c, settings, top_k_alternatives, shown) for group in answers for c in group]


def _server_continuation(
    backend: Backend,
    completion: ServerCompletion,
    settings: SamplerSettings,
    top_k_alternatives: int,
    top_shown: int,
) -> Continuation:
    """Records of a server's continuation. A server shows the `top_shown` best tokens, plus the chosen one
    when it is not among them."""
    # Under the sampled-from distribution only greedy (probability 1) and untouched sampling are known exactly.
    untouched = not settings.active
    records = []
    for token in completion.tokens:
        bounds = None
        if token.top:
            ranked = token.top[: len(token.top) - 1] if len(token.top) > top_shown else token.top
            extra = [token.logprob] if token.id not in {i for i, _ in ranked} else []
            bounds = entropy_bounds_bits([v for _, v in ranked], backend.vocab.size, extra)
        exact = bounds is not None and bounds[0] == bounds[1]
        sampled = 0.0 if settings.greedy else token.logprob if untouched else math.nan
        records.append(
            TokenRecord(
                token.id,
                backend.token_text(token.id) if token.id >= 0 else "\ufffd",
                sampled,
                token.logprob,
                bounds[0] if exact and bounds else math.nan,
                [Alternative(i, backend.token_text(i), v) for i, v in token.top[:top_k_alternatives]],
                token.id in backend.vocab.special_ids,
                None if exact else bounds,
            )
        )
    return Continuation(records, completion.finish_reason)
