"""Batched continuation: greedy or sampled through the sampler chain, recording every generated token.

All n continuations share the prompt's KV cache; a row that ends (EOS or a stop string) is dropped from the
batch at once, so finished rows cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from modescope.engine.samplers import RawPass, SamplerSettings, raw_pass, sample, sample_raw
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


def entropy_of(raw: RawPass, logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of each row of `logprobs` from its `raw_pass`; rows with -inf log-probabilities (whose
    p log p is NaN there) as `entropy_bits` takes them."""
    entropy = -raw.p_log_p / LOG2
    unknown = (~torch.isfinite(entropy)).nonzero().flatten()
    if len(unknown):
        entropy[unknown] = entropy_bits(logprobs[unknown]).double()
    return entropy


def entropy_bits(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of log-probabilities, in bits (0 log 0 = 0).

    sum p log p reuses the log-probabilities (no logarithm over a 262k vocabulary again: 1.8x faster than
    `torch.special.entr`) and is summed in cascade (a float32 BLAS dot product was 5x faster still, but 2e-3
    bits off). A row with a -inf log-probability (a token a server did not show) gets 0 x -inf = NaN there, so
    such rows take -p log p from the probabilities alone (`entr`, which has no -inf to mask)."""
    probs = logprobs.exp()
    sums = (probs * logprobs).sum(-1)
    unknown = ~torch.isfinite(sums)
    if unknown.any():
        sums[unknown] = -torch.special.entr(probs[unknown]).sum(-1)
    return -sums / LOG2


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
    options = (max_tokens, temperature, sampler, top_k_alternatives, seed, stop)
    return generate_groups(backend, [prompt], n, *options)[0]


def generate_groups(
    backend: Backend,
    prompts: Sequence[Sequence[int]],
    n: int,
    max_tokens: int = 32,
    temperature: float = 0.0,
    sampler: SamplerSettings | None = None,
    top_k_alternatives: int = 10,
    seed: int | None = None,
    stop: Sequence[str] = (),
    max_rows: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[list[Continuation]]:
    """n continuations of each prompt (of any lengths), the prompts decoded together: one forward pass per
    step serves every prompt. Group k equals `generate(backend, prompts[k], n, ..., seed=seed)` run alone,
    because each prompt's rows draw from their own generator seeded with `seed` (so two equal prompts get
    equal samples; with seed None every prompt draws from torch's global generator, and no such equality holds).

    At most `max_rows` rows are decoded at once (every row holds a [vocab] distribution per step):
    the prompts go in consecutive chunks of max(1, max_rows // n) prompts. `progress` is called after each
    chunk with the number of prompts done.
    """
    if n < 1:
        raise ModescopeError(f"n must be at least 1 (got {n})")
    if max_rows < 1:
        raise ModescopeError(f"max rows must be at least 1 (got {max_rows})")
    settings = _settings(max_tokens, stop, sampler, temperature)
    options = (max_tokens, settings, top_k_alternatives, seed, stop)
    if backend.samples_on_server:  # the server batches by itself
        groups = _on_server(backend, prompts, n, *options)
        if progress:
            progress(len(groups))
        return groups
    groups = []
    size = max(1, max_rows // n)
    for first in range(0, len(prompts), size):
        chunk = prompts[first : first + size]
        # one prompt goes unpadded, exactly as `generate` always did
        rows, logprobs = backend.start(chunk[0]) if len(chunk) == 1 else backend.start_many(chunk)
        starts = [row for row in range(len(chunk)) for _ in range(n)]
        flat = _decode(backend, rows, logprobs, starts, [_Block(n, *options)] * len(chunk))
        groups.extend(flat[k : k + n] for k in range(0, len(flat), n))
        if progress:
            progress(len(groups))
    return groups


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
    however many prompts (perturbed prefixes of an attractor experiment, say).

    Unlike `generate_groups`, every row draws from one generator seeded with `seed`, so a prompt's sample
    depends on the prompts beside it."""
    settings = _settings(max_tokens, stop, sampler, temperature)
    options = (max_tokens, settings, top_k_alternatives, seed, stop)
    if backend.samples_on_server:
        return [c for group in _on_server(backend, prompts, 1, *options) for c in group]
    rows, logprobs = backend.start_many(prompts)
    return _decode(backend, rows, logprobs, list(range(len(prompts))), [_Block(len(prompts), *options)])


# --- batched requests: several prompts, each with its own options, in one decode --------------------------


@dataclass(frozen=True)
class DecodeRequest:
    """One request of a batched decode (`decode_requests`): n continuations of `prompt` with options of its own
    (those of `generate`). Its result equals `generate(backend, prompt, n, ...)` run alone with its seed."""

    prompt: Sequence[int]
    n: int = 1
    max_tokens: int = 32
    temperature: float = 0.0
    sampler: SamplerSettings | None = None
    top_k_alternatives: int = 10
    seed: int | None = None
    stop: Sequence[str] = ()

    def settings(self) -> SamplerSettings:
        """The sampler chain, once the options are checked (ModescopeError names the one to change), so that a
        caller can refuse one request before it joins a batch, where its error would fail the others too."""
        if self.n < 1:
            raise ModescopeError(f"n must be at least 1 (got {self.n})")
        return _settings(self.max_tokens, self.stop, self.sampler, self.temperature)


@dataclass(frozen=True)
class StepToken:
    """A token that one continuation of a request took at one step of a batched decode (see `OnStep`)."""

    continuation: int  # its index among the request's n continuations
    record: TokenRecord
    finish_reason: str | None  # how the continuation ended at this token ("eos", "stop", "length"); None: it goes on


# Called after every step with a request's index and the tokens its live continuations just took; answering
# False cancels the request: its rows leave the batch at once and its unfinished continuations end "cancelled".
OnStep = Callable[[int, Sequence[StepToken]], bool]


@dataclass(frozen=True)
class _Block:
    """The options of a block of consecutive continuations of one decode: a request, or a prompt's group."""

    size: int
    max_tokens: int
    settings: SamplerSettings
    top_k_alternatives: int
    seed: int | None
    stop: Sequence[str]


def decode_requests(
    backend: Backend, requests: Sequence[DecodeRequest], on_step: OnStep | None = None, max_rows: int = 256
) -> list[list[Continuation]]:
    """The continuations of each request (prompts of any lengths, each with its own n, seed, sampler, max tokens,
    stop strings and alternatives), the requests decoded together: one forward pass per step serves them all.
    Request k's group equals `generate(backend, requests[k].prompt, ...)` run alone with its options, because
    each request draws from its own generator on its own rows (exactly on a backend whose distributions do not
    depend on the batch; on a transformers model the batch's shape and left padding move the rounding of the
    matmuls: ~1e-5 in log-probability in float32, ~1e-12 in float64).

    `on_step` sees each request's new tokens after every step, and may cancel a request. At most `max_rows`
    rows are decoded at once (each holds a [vocab] distribution): the requests go in consecutive
    chunks, a request larger than the cap alone. A backend that samples on its server answers each request
    there (no steps to report)."""
    if max_rows < 1:
        raise ModescopeError(f"max rows must be at least 1 (got {max_rows})")
    if backend.samples_on_server:
        return [_on_server_request(backend, request) for request in requests]
    groups: list[list[Continuation]] = []
    for first, end in _row_chunks([r.n for r in requests], max_rows):

        def shifted(request: int, tokens: Sequence[StepToken], first: int = first) -> bool:
            return on_step is None or on_step(first + request, tokens)

        groups.extend(
            start_decode(backend, requests[first:end], shifted if on_step is not None else None).run().groups()
        )
    return groups


def start_decode(backend: Backend, requests: Sequence[DecodeRequest], on_step: OnStep | None = None) -> BatchDecode:
    """The batched decode of these requests, their prompts encoded (each distinct prompt once, so n requests of
    one prompt fan out of one row, unpadded as `generate` encodes it), ready to `step`. An in-process backend
    only (not one that samples on its server)."""
    if not requests:
        raise ModescopeError("give at least one request to decode")
    blocks = [_Block(r.n, r.max_tokens, r.settings(), r.top_k_alternatives, r.seed, r.stop) for r in requests]
    index: dict[tuple[int, ...], int] = {}
    for request in requests:
        index.setdefault(tuple(request.prompt), len(index))
    prompts = list(index)
    # the rows of a block start from its prompt's row; blocks go in the order of their prompts, so that the
    # starting rows never decrease, and `groups` puts them back in the order of the requests
    order = sorted(range(len(requests)), key=lambda k: index[tuple(requests[k].prompt)])
    starts = [index[tuple(requests[k].prompt)] for k in order for _ in range(requests[k].n)]
    rows, logprobs = backend.start(prompts[0]) if len(prompts) == 1 else backend.start_many(prompts)

    def reordered(block: int, tokens: Sequence[StepToken]) -> bool:
        return on_step is None or on_step(order[block], tokens)

    decoding = BatchDecode(backend, rows, logprobs, starts, [blocks[k] for k in order], reordered if on_step else None)
    decoding.order = order
    return decoding


class BatchDecode:
    """A batched decode advanced one step at a time, so that its caller can stream the tokens as they come,
    cancel a block between steps, or take turns with decodes of other models.

    Continuation c starts from row `starts[c]` of `rows` (nondecreasing). The continuations fall in consecutive
    blocks (`blocks`: each its size and options); each block samples from its own generator seeded with its
    seed, on its own live rows only, so its draws are those of a decode of that block alone. A row leaves the
    batch when its continuation ends (EOS, a stop string, its block's max tokens, a cancel), so ended rows cost
    nothing."""

    def __init__(
        self,
        backend: Backend,
        rows: Rows,
        logprobs: torch.Tensor,
        starts: Sequence[int],
        blocks: Sequence[_Block],
        on_step: OnStep | None = None,
    ) -> None:
        self.backend, self.rows, self.logprobs, self.blocks, self.on_step = backend, rows, logprobs, blocks, on_step
        self.order = list(range(len(blocks)))  # the request of each block (`start_decode` sorts them by prompt)
        self.generators = [torch.Generator().manual_seed(b.seed) if b.seed is not None else None for b in blocks]
        self.block_of = [k for k, block in enumerate(blocks) for _ in range(block.size)]
        self.first = [0] * len(blocks)  # the first continuation of each block
        for k in range(1, len(blocks)):
            self.first[k] = self.first[k - 1] + blocks[k - 1].size
        assert len(starts) == len(self.block_of), "one starting row per continuation"
        self.protected = protected_tokens(backend)
        self.text_of = _TokenTexts(backend)
        self.records: list[list[TokenRecord]] = [[] for _ in starts]
        self.texts = [""] * len(starts)
        self.finish = ["length"] * len(starts)
        self.active = list(range(len(starts)))  # the continuation of each live row, ascending
        self.parents = list(starts)  # the row of `logprobs` (and `rows`) each live continuation continues
        self.cancelled: set[int] = set()

    @property
    def live_rows(self) -> int:
        """Rows still decoding."""
        return len(self.active)

    def cancel(self, request: int) -> None:
        """Stop a request (a block; its index among the requests given to `start_decode`): its rows leave the
        batch before the next step, its unfinished continuations end "cancelled"."""
        self.cancelled.add(self.order.index(request))

    def step(self) -> bool:
        """Choose the next token of every live row, record it, report it, and forward the rows that go on;
        False once no row is left (then nothing was forwarded)."""
        self._drop_cancelled()
        if not self.active:
            return False
        chosen: list[TokenRecord] = []
        for block, first, end in _runs([self.block_of[c] for c in self.active]):
            part = _take(self.logprobs, self.parents[first:end])
            settings, alternatives = self.blocks[block].settings, self.blocks[block].top_k_alternatives
            chosen += _choose(part, settings, self.generators[block], self.protected, alternatives, self.text_of)
        keep = [p for p, record in enumerate(chosen) if self._goes_on(self.active[p], record)]
        if self.on_step is not None:
            keep = self._report(chosen, keep)
        if keep:
            tokens = [chosen[p].id for p in keep]
            self.rows, self.logprobs = self.backend.advance(self.rows, [self.parents[p] for p in keep], tokens)
        self.active = [self.active[p] for p in keep]
        self.parents = list(range(len(keep)))
        return bool(self.active)

    def run(self) -> BatchDecode:
        """Step until every continuation ended."""
        while self.step():
            pass
        return self

    def _goes_on(self, index: int, record: TokenRecord) -> bool:
        """Record continuation `index`'s new token; whether it goes on (else its finish reason is set)."""
        self.records[index].append(record)
        self.texts[index] += "" if record.special else record.text
        options = self.blocks[self.block_of[index]]
        if record.id in self.backend.vocab.eos_ids:
            self.finish[index] = "eos"
        elif any(s in self.texts[index] for s in options.stop):
            self.finish[index] = "stop"
        elif len(self.records[index]) >= options.max_tokens:
            self.finish[index] = "length"
        else:
            return True
        return False

    def _report(self, chosen: Sequence[TokenRecord], keep: Sequence[int]) -> list[int]:
        """Show each block its new tokens; the rows of `keep` that go on, less those of blocks cancelled now."""
        assert self.on_step is not None
        going = set(keep)
        for block, first, end in _runs([self.block_of[c] for c in self.active]):
            ended = [None if p in going else self.finish[self.active[p]] for p in range(first, end)]
            indices = [self.active[p] - self.first[block] for p in range(first, end)]
            tokens = [StepToken(*new) for new in zip(indices, chosen[first:end], ended, strict=True)]
            if not self.on_step(block, tokens):
                self.cancelled.add(block)
        if not self.cancelled:
            return list(keep)
        for p in keep:
            if self.block_of[self.active[p]] in self.cancelled:
                self.finish[self.active[p]] = "cancelled"
        return [p for p in keep if self.block_of[self.active[p]] not in self.cancelled]

    def _drop_cancelled(self) -> None:
        live = [p for p, c in enumerate(self.active) if self.block_of[c] not in self.cancelled]
        if len(live) == len(self.active):
            return
        for c in self.active:
            if self.block_of[c] in self.cancelled:
                self.finish[c] = "cancelled"
        self.active = [self.active[p] for p in live]
        self.parents = [self.parents[p] for p in live]

    def continuations(self) -> list[Continuation]:
        """Every continuation so far, in order (final once `step` answered False)."""
        return [Continuation(tokens, reason) for tokens, reason in zip(self.records, self.finish, strict=True)]

    def groups(self) -> list[list[Continuation]]:
        """The continuations of each request, in the order of the requests given to `start_decode`."""
        flat = self.continuations()
        by_block = [flat[self.first[k] : self.first[k] + block.size] for k, block in enumerate(self.blocks)]
        groups: list[list[Continuation]] = [[] for _ in self.blocks]
        for block, request in enumerate(self.order):
            groups[request] = by_block[block]
        return groups


def _row_chunks(sizes: Sequence[int], max_rows: int) -> Iterator[tuple[int, int]]:
    """(first, end) of consecutive runs of `sizes` holding at most `max_rows` in all (a larger one alone)."""
    first, rows = 0, 0
    for k, size in enumerate(sizes):
        if k > first and rows + size > max_rows:
            yield first, k
            first, rows = k, 0
        rows += size
    if first < len(sizes):
        yield first, len(sizes)


def _on_server_request(backend: Backend, request: DecodeRequest) -> list[Continuation]:
    options = (request.max_tokens, request.settings(), request.top_k_alternatives, request.seed, request.stop)
    return _on_server(backend, [request.prompt], request.n, *options)[0]


def _decode(
    backend: Backend,
    rows: Rows,
    logprobs: torch.Tensor,
    starts: Sequence[int],
    blocks: Sequence[_Block],
    on_step: OnStep | None = None,
) -> list[Continuation]:
    """The decoding loop: `BatchDecode` stepped until every continuation ended; its continuations in order."""
    return BatchDecode(backend, rows, logprobs, starts, blocks, on_step).run().continuations()


def _runs(labels: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """(label, start, end) of each run of equal consecutive labels."""
    start = 0
    for end in range(1, len(labels) + 1):
        if end == len(labels) or labels[end] != labels[start]:
            yield labels[start], start, end
            start = end


def _take(logprobs: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """The rows `rows` (nondecreasing) of `logprobs` without a copy where possible: a run of consecutive rows
    is a slice, one row repeated (n continuations fanning out of one prompt) an expanded view."""
    first, last = rows[0], rows[-1]
    if last - first + 1 == len(rows):
        return logprobs[first : last + 1]
    if first == last:
        return logprobs[first : first + 1].expand(len(rows), -1)
    return logprobs[list(rows)]


class _TokenTexts(dict[int, str]):
    """Token texts, each looked up once per decode (every step shows ~10 alternatives per row)."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend

    def __missing__(self, token: int) -> str:
        self[token] = text = self.backend.token_text(token)
        return text


BLOCK = 256  # vocabulary entries per block of `largest`


def largest(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of `x` [rows, vocab], largest first, and their ids: `x.topk(k)`, in
    two small passes instead of one over the vocabulary. torch's top-k keeps a running selection per row
    (6.3 ms for 32 rows of Gemma's 262k vocabulary here); the row's block maxima are one fast reduction, and
    the k largest entries lie in the k blocks with the largest maxima (every entry above the k-th largest
    maximum has its block among them, and those k maxima are k entries at least that large), so a top-k of
    the maxima and one of those blocks give the same values (0.9 ms). Ties are in no set order, as with
    `topk`. A vocabulary that is no whole number of blocks keeps its last entries as candidates too."""
    rows, size = x.shape
    blocks = size // BLOCK
    if blocks < 4 * k:  # a small vocabulary: one pass is as fast
        top = x.topk(k, dim=-1)
        return top.values, top.indices
    body = x[:, : blocks * BLOCK].reshape(rows, blocks, BLOCK)
    chosen = body.amax(dim=-1).topk(k, dim=-1).indices  # [rows, k] blocks
    candidates = body.gather(1, chosen.unsqueeze(-1).expand(rows, k, BLOCK)).reshape(rows, k * BLOCK)
    ids = (chosen.unsqueeze(-1) * BLOCK + torch.arange(BLOCK, device=x.device)).reshape(rows, k * BLOCK)
    if blocks * BLOCK < size:
        candidates = torch.cat([candidates, x[:, blocks * BLOCK :]], dim=1)
        ids = torch.cat([ids, torch.arange(blocks * BLOCK, size, device=x.device).expand(rows, -1)], dim=1)
    top = candidates.topk(k, dim=-1)
    return top.values, ids.gather(1, top.indices)


def _choose(
    logprobs: torch.Tensor,
    settings: SamplerSettings,
    generator: torch.Generator | None,
    protected: frozenset[int],
    top_k_alternatives: int,
    text_of: _TokenTexts,
) -> list[TokenRecord]:
    """The next token of each row of `logprobs` [rows, vocab] (raw model log-probabilities), and its record.

    Every pass over the vocabulary counts on a 262k vocabulary: one chunked pass over the raw probabilities
    (`raw_pass`) serves the entropy and, when no sampler changes the distribution, the draw itself."""
    raw = raw_pass(logprobs)
    if settings.active:
        chosen, sampled = sample(settings, logprobs, generator, protected)
    else:
        chosen, sampled = sample_raw(logprobs, raw, generator), logprobs
    index = chosen.unsqueeze(-1)
    sampled_logprob = sampled.gather(-1, index).squeeze(-1).tolist()
    raw_logprob = logprobs.gather(-1, index).squeeze(-1).tolist()
    entropy = entropy_of(raw, logprobs).tolist()
    tops: list[list[Alternative]] = [[] for _ in chosen]
    if top_k_alternatives:
        values_of, ids_of = largest(logprobs, min(top_k_alternatives, logprobs.shape[-1]))
        for row, (ids, values) in enumerate(zip(ids_of.tolist(), values_of.tolist(), strict=True)):
            tops[row] = [Alternative(i, text_of[i], v) for i, v in zip(ids, values, strict=True)]
    special = text_of.backend.vocab.special_ids
    return [
        TokenRecord(token, text_of[token], s, r, e, alternatives, token in special)
        for token, s, r, e, alternatives in zip(
            chosen.tolist(), sampled_logprob, raw_logprob, entropy, tops, strict=True
        )
    ]


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
) -> list[list[Continuation]]:
    """n continuations of each prompt sampled by the server itself, one group per prompt in order; records
    hold what it showed (the top alternatives)."""
    params = server_params(settings)
    answers = backend.sample_on_server(prompts, n, max_tokens, params, top_k_alternatives, seed, stop)
    assert len(answers) == len(prompts), "a backend answers every prompt, in order"
    shown = backend.server_alternatives(top_k_alternatives)
    return [[_server_continuation(backend, c, settings, top_k_alternatives, shown) for c in group] for group in answers]


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
