"""The sampler chain: from a model's raw next-token log-probabilities to the distribution sampled from.

Each sampler is a pure function on a tensor of shape [rows, vocab] holding log-probabilities or logits
(natural log, any per-row offset): it returns a tensor of the same shape in which removed tokens are -inf.
Every filter reads probabilities as the softmax of what is still finite, so it sees the distribution
renormalized after the previous step; the chain renormalizes once more at the end (log_softmax).

Default order (`DEFAULT_ORDER`), taken from llama.cpp's default sampler sequence
(`common_params_sampling::samplers` in common/common.h), without the penalty and DRY samplers, which need the
token history and are not implemented here:

    top_n_sigma -> top_k -> typical_p -> top_p -> min_p -> xtc -> temperature

Why this order:
- Truncation decides the candidate set on the model's own (temperature 1) distribution, and temperature last
  only reshapes the probabilities among the survivors. That is what makes min-p usable at high temperature
  (Nguyen et al. 2024): a hot temperature cannot pull the junk tail back in, because the tail is already gone.
  Moving temperature first instead makes every probability-based filter see the flattened (or sharpened)
  distribution and keep more (or fewer) tokens.
- Top-nσ comes first because its statistic (the spread of the logits over the whole vocabulary) is only
  meaningful before other filters cut the vocabulary; it is also unaffected by temperature.
- XTC comes after the truncation filters, so the "top choices" it excludes are chosen among plausible tokens,
  and before temperature, so its threshold is a probability under the model, not under the tempered one.
- Using the same sequence as llama.cpp means the same settings mean the same thing here and there.

Greedy decoding is temperature 0: the temperature step becomes a point mass on the argmax of what the filters
before it left (ties: the lowest token id). The filters that keep the most probable token (top-k, top-p, min-p,
top-nσ) then make no difference; typical-p and XTC can move the argmax.

Boundaries: a cumulative mass or probability within 1e-9 of its threshold counts as reaching it, so that
hand-computable boundaries ("0.5 + 0.2 reaches 0.7") behave as written despite float rounding. Ties in sort
order are broken by token id (stable sort), so results are deterministic.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler, model_validator

from modescope.errors import ModescopeError

DEFAULT_ORDER: tuple[str, ...] = ("top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc", "temperature")
SAMPLER_NAMES: frozenset[str] = frozenset(DEFAULT_ORDER)

# Slack for comparisons of probability mass (probability units) and of log-probabilities (nats): float64
# rounding in softmax/cumsum is ~1e-16, far below it; a meaningful difference in a distribution is far above it.
TOLERANCE = 1e-9

# How each setting is spelled on the command line, so that messages say what to type.
_FLAGS: dict[str, str] = {
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "typical_p": "--typical-p",
    "top_n_sigma": "--top-n-sigma",
    "xtc_threshold": "--xtc-threshold",
    "xtc_probability": "--xtc-probability",
    "order": "--sampler-order",
}
# The setting that turns each sampler on (XTC's is its probability; its threshold alone does nothing).
_SWITCH: dict[str, str] = {name: name for name in DEFAULT_ORDER} | {"xtc": "xtc_probability"}


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _probs(x: torch.Tensor) -> torch.Tensor:
    """Probabilities (float64, rows sum to 1) of the finite entries of log-probabilities or logits x."""
    return torch.softmax(x.to(torch.float64), dim=-1)


def _exclusive_cumsum(values: torch.Tensor) -> torch.Tensor:
    """Along the last axis, the sum of the entries before each position (0 at the first)."""
    total = values.cumsum(dim=-1)
    return torch.cat([torch.zeros_like(total[..., :1]), total[..., :-1]], dim=-1)


def _remove_sorted(x: torch.Tensor, order: torch.Tensor, remove_in_order: torch.Tensor) -> torch.Tensor:
    """Set to -inf the entries of x flagged in `remove_in_order`, which is indexed like x.gather(-1, order)."""
    remove = torch.zeros_like(remove_in_order).scatter(-1, order, remove_in_order)
    return x.masked_fill(remove, -math.inf)


def _keep_smallest_prefix(x: torch.Tensor, order: torch.Tensor, mass: float) -> torch.Tensor:
    """Keep the shortest prefix of tokens, taken in `order`, whose total probability reaches `mass`.

    A token stays when the mass before it has not yet reached `mass`; the first token always stays.
    """
    before = _exclusive_cumsum(_probs(x).gather(-1, order))
    remove = before >= mass - TOLERANCE
    remove[..., 0] = False  # even for a mass below TOLERANCE, where 0 before the first token "reaches" it
    return _remove_sorted(x, order, remove)


# ---------------------------------------------------------------------------------------------------------------
# Samplers


def top_k(x: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k (Fan et al. 2018, "Hierarchical Neural Story Generation"): keep the k most probable tokens.

    Exactly k tokens stay (ties at the k-th place go to the lowest token ids); k = 0, or k at least the
    vocabulary size, keeps everything.
    """
    if k <= 0 or k >= x.shape[-1]:
        return x
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices
    rank = torch.arange(x.shape[-1], device=x.device).expand_as(order)
    return _remove_sorted(x, order, rank >= k)


def top_p(x: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration").

    Keep the smallest set of most probable tokens whose cumulative probability is at least p (a probability in
    (0, 1]); at least one token always stays, and p = 1 keeps everything. Equal probabilities are taken in
    token-id order, so ties at the boundary are cut deterministically.
    """
    if p >= 1.0:
        return x
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices
    return _keep_smallest_prefix(x, order, p)


def min_p(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Min-p (Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM Outputs").

    Keep the tokens whose probability is at least `ratio` times the largest probability (ratio in [0, 1]); the
    most probable token always stays, and ratio = 0 keeps everything. Compared in log space, where the
    normalizing constant cancels: log p >= log p_max + log ratio.
    """
    if ratio <= 0.0:
        return x
    floor = x.amax(dim=-1, keepdim=True) + math.log(ratio) - TOLERANCE
    return x.masked_fill(x < floor, -math.inf)


def typical_p(x: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling (Meister, Pimentel, Wiher & Cotterell 2023, TACL).

    With H the entropy of the distribution (nats), sort tokens by |-log p - H| ascending (most typical first:
    information content closest to the expected one) and keep the shortest prefix whose cumulative probability
    is at least `mass` (in (0, 1]); at least one token stays, and mass = 1 keeps everything. Same scoring as the
    reference implementation (cimeister/typical-sampling, transformers' TypicalLogitsWarper); ties in the score
    are taken in token-id order.
    """
    if mass >= 1.0:
        return x
    logp = torch.log_softmax(x.to(torch.float64), dim=-1)
    finite = torch.isfinite(logp)
    # 0 * log 0 is taken as 0: removed tokens add nothing to the entropy.
    entropy = -torch.where(finite, logp.exp() * logp, 0.0).sum(dim=-1, keepdim=True)
    surprise_gap = torch.where(finite, (-logp - entropy).abs(), math.inf)  # removed tokens sort last
    order = torch.sort(surprise_gap, dim=-1, stable=True).indices
    return _keep_smallest_prefix(x, order, mass)


def top_n_sigma(x: torch.Tensor, n: float) -> torch.Tensor:
    """Top-nσ (Tang et al. 2024, "Top-nσ: Not All Logits Are You Need", arXiv:2411.07641).

    Keep the tokens whose logit is at least max(logits) - n·σ, where σ is the standard deviation of the logits
    over the vocabulary (n in standard deviations, > 0). As in llama.cpp's implementation, tokens already removed
    (-inf) are left out of the mean and σ, and σ is the population standard deviation (divide by the count).
    Log-probabilities differ from logits by a per-row constant, which changes neither σ nor the gap to the
    maximum, so either may be passed; temperature scales both alike, so the kept set does not depend on it.
    """
    finite = torch.isfinite(x)
    count = finite.sum(dim=-1, keepdim=True).clamp(min=1)
    values = torch.where(finite, x, 0.0)
    mean = values.sum(dim=-1, keepdim=True) / count
    variance = torch.where(finite, (values - mean) ** 2, 0.0).sum(dim=-1, keepdim=True) / count
    floor = x.amax(dim=-1, keepdim=True) - n * variance.sqrt() - TOLERANCE
    return x.masked_fill(x < floor, -math.inf)


def temperature(x: torch.Tensor, t: float) -> torch.Tensor:
    """Temperature (Ackley, Hinton & Sejnowski 1985; the softmax temperature): divide the logits by t.

    t > 1 flattens the distribution, t < 1 sharpens it. t = 0 is greedy: the result is already normalized,
    log-probability 0 on the argmax of x (ties: the lowest token id) and -inf elsewhere. The row's maximum is
    subtracted first (softmax does not see it), so a tiny t sends the rest towards -inf instead of overflowing
    the top logits to +inf, whose softmax is NaN.
    """
    if t == 0.0:
        greedy = torch.full_like(x, -math.inf)
        return greedy.scatter(-1, x.argmax(dim=-1, keepdim=True), 0.0)
    return (x - x.amax(dim=-1, keepdim=True)) / t


def xtc(
    x: torch.Tensor,
    threshold: float,
    probability: float,
    generator: torch.Generator | None = None,
    protected: Collection[int] = frozenset(),
) -> torch.Tensor:
    """XTC, "Exclude Top Choices" (p-e-w; text-generation-webui PR #6335, llama.cpp `llama_sampler_init_xtc`).

    Independently for each row, with probability `probability`: take the tokens whose probability is at least
    `threshold`; if there are two or more, remove all of them except the least probable one (ties: the one
    latest in stable descending order, i.e. the highest token id, as in the reference). Following
    text-generation-webui, a row is left alone when one of the tokens it would remove is in `protected` (token
    ids of EOS and newline), so XTC never stops the text from ending. With threshold > 0.5 at most one token can
    qualify, so nothing is ever removed.

    Draws exactly one uniform number per row from `generator` (whether or not the row qualifies), so a seeded
    generator reproduces the same choices.
    """
    if probability <= 0.0:
        return x
    device = generator.device if generator is not None else x.device
    coin = torch.rand(x.shape[:-1], generator=generator, dtype=torch.float64, device=device).to(x.device)
    # rand is in [0, 1): probability 1 always acts.
    acts = coin < probability
    probs = _probs(x)
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices
    above = (probs.gather(-1, order) >= threshold - TOLERANCE) & torch.isfinite(x.gather(-1, order))
    # A token is removed when the next one in descending order is also above the threshold: that is every
    # qualifying token except the last (least probable) one, and nothing when fewer than two qualify.
    remove_in_order = torch.zeros_like(above)
    remove_in_order[..., :-1] = above[..., 1:]
    remove = torch.zeros_like(remove_in_order).scatter(-1, order, remove_in_order)
    if protected:
        ids = torch.tensor(sorted(protected), dtype=torch.long, device=x.device)
        acts &= ~remove.index_select(-1, ids).any(dim=-1)
    return x.masked_fill(remove & acts.unsqueeze(-1), -math.inf)


# ---------------------------------------------------------------------------------------------------------------
# Settings


def _check_fraction(problems: list[str], name: str, value: float, low_open: bool, off: str) -> None:
    """Record a problem unless value is in [0, 1] (or (0, 1] when low_open); NaN is always a problem."""
    low_ok = value > 0.0 if low_open else value >= 0.0
    if not (low_ok and value <= 1.0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        problems.append(f"{_FLAGS[name]} must be in {interval}{off} (got {value})")


def _describe(error: Any) -> str:
    """One pydantic validation error as a sentence that says what to change."""
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        known = sorted(SamplerSettings.model_fields)
        close = difflib.get_close_matches(where, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown sampler setting '{where}'{hint}; known settings: {', '.join(known)}"
    field = str(error["loc"][0]) if error["loc"] else where
    flag = _FLAGS.get(field, where)
    return f"{flag}: {error['msg']} (got {error['input']!r})"


class SamplerSettings(BaseModel):
    """Which samplers run, with what settings, in what order. Every default is "off" (no effect).

    Invalid settings raise ModescopeError, from the constructor, `make`, or `model_validate`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=1.0, description="Divide logits by this; 0 is greedy, 1 is off.")
    top_k: int = Field(default=0, description="Keep the k most probable tokens; 0 is off.")
    top_p: float = Field(default=1.0, description="Nucleus: keep the most probable tokens up to this mass; 1 is off.")
    min_p: float = Field(default=0.0, description="Keep tokens with p >= min_p * p_max; 0 is off.")
    typical_p: float = Field(default=1.0, description="Locally typical sampling mass; 1 is off.")
    top_n_sigma: float | None = Field(default=None, description="Keep logits within n standard deviations of the max.")
    xtc_threshold: float = Field(default=0.1, description="XTC: tokens at least this probable are 'top choices'.")
    xtc_probability: float = Field(default=0.0, description="XTC: chance per row of excluding top choices; 0 is off.")
    order: tuple[str, ...] = Field(default=DEFAULT_ORDER, description="Order in which the active samplers run.")

    @classmethod
    def make(cls, **settings: Any) -> SamplerSettings:
        """Build settings from keyword arguments; any problem raises ModescopeError."""
        return cls(**settings)

    @model_validator(mode="wrap")
    @classmethod
    def _one_error_type(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # pydantic reports type problems (a string for a number, an unknown field) as ValidationError; users get
        # ModescopeError for every mistake. ModescopeError raised by _check below is not a ValueError, so pydantic
        # lets it through unwrapped.
        try:
            return handler(data)
        except ValidationError as exc:
            raise ModescopeError("; ".join(_describe(error) for error in exc.errors())) from None

    @model_validator(mode="after")
    def _check(self) -> SamplerSettings:
        problems = self._range_problems() + self._order_problems()
        if problems:
            raise ModescopeError("; ".join(problems))
        return self

    def _range_problems(self) -> list[str]:
        problems: list[str] = []
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
            problems.append(f"--temperature must be 0 (greedy) or a positive finite number (got {self.temperature})")
        if self.top_k < 0:
            problems.append(f"--top-k must be 0 (off) or a positive number of tokens (got {self.top_k})")
        _check_fraction(problems, "top_p", self.top_p, low_open=True, off=", where 1 turns it off")
        _check_fraction(problems, "min_p", self.min_p, low_open=False, off=", where 0 turns it off")
        _check_fraction(problems, "typical_p", self.typical_p, low_open=True, off=", where 1 turns it off")
        n = self.top_n_sigma
        if n is not None and not (math.isfinite(n) and n > 0.0):
            problems.append(
                f"--top-n-sigma must be a positive finite number of standard deviations, or unset to turn it off"
                f" (got {n})"
            )
        _check_fraction(
            problems, "xtc_probability", self.xtc_probability, low_open=False, off=", where 0 turns XTC off"
        )
        _check_fraction(problems, "xtc_threshold", self.xtc_threshold, low_open=False, off=" (a probability)")
        return problems

    def _order_problems(self) -> list[str]:
        problems: list[str] = []
        known = ", ".join(DEFAULT_ORDER)
        for name in dict.fromkeys(self.order):
            if name not in SAMPLER_NAMES:
                close = difflib.get_close_matches(name, DEFAULT_ORDER, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(f"unknown sampler '{name}' in --sampler-order{hint}; known samplers: {known}")
            elif self.order.count(name) > 1:
                problems.append(
                    f"sampler '{name}' appears {self.order.count(name)} times in --sampler-order; list it once"
                )
        for name in DEFAULT_ORDER:
            if self._is_on(name) and name not in self.order:
                switch = _SWITCH[name]
                problems.append(
                    f"{_FLAGS[switch]} is {getattr(self, switch)} but '{name}' is not in --sampler-order"
                    f" ({', '.join(self.order) or 'empty'}); add '{name}' to the order or turn it off"
                )
        return problems

    def _is_on(self, name: str) -> bool:
        """Whether sampler `name`'s setting differs from its no-effect value."""
        if name == "temperature":
            return self.temperature != 1.0
        if name == "top_k":
            return self.top_k > 0
        if name == "top_p":
            return self.top_p < 1.0
        if name == "min_p":
            return self.min_p > 0.0
        if name == "typical_p":
            return self.typical_p < 1.0
        if name == "top_n_sigma":
            return self.top_n_sigma is not None
        return self.xtc_probability > 0.0  # xtc

    @property
    def active(self) -> tuple[str, ...]:
        """The samplers that run, in the order they run."""
        return tuple(name for name in self.order if self._is_on(name))

    @property
    def greedy(self) -> bool:
        """Whether the chain ends in a point mass (temperature 0)."""
        return self.temperature == 0.0

    def warnings(self) -> list[str]:
        """Advisory messages: settings that are valid but have no effect as written."""
        notes: list[str] = []
        if self.xtc_probability > 0.0 and self.xtc_threshold > 0.5:
            notes.append(
                "XTC with threshold above 0.5 never removes anything (at most one token can exceed it):"
                " lower --xtc-threshold"
            )
        if self.greedy:
            idle = [_FLAGS[name] for name in ("top_k", "top_p", "min_p", "top_n_sigma") if self._is_on(name)]
            if idle:
                notes.append(
                    f"with --temperature 0 (greedy) the most probable token is chosen, and {', '.join(idle)} always"
                    " keep it, so they have no effect: drop them or raise --temperature"
                )
        return notes


# ---------------------------------------------------------------------------------------------------------------
# The chain

_Step = Callable[[SamplerSettings, torch.Tensor, torch.Generator | None, Collection[int]], torch.Tensor]
_STEPS: dict[str, _Step] = {
    "top_n_sigma": lambda s, x, g, prot: top_n_sigma(x, s.top_n_sigma if s.top_n_sigma is not None else math.inf),
    "top_k": lambda s, x, g, prot: top_k(x, s.top_k),
    "typical_p": lambda s, x, g, prot: typical_p(x, s.typical_p),
    "top_p": lambda s, x, g, prot: top_p(x, s.top_p),
    "min_p": lambda s, x, g, prot: min_p(x, s.min_p),
    "xtc": lambda s, x, g, prot: xtc(x, s.xtc_threshold, s.xtc_probability, g, prot),
    "temperature": lambda s, x, g, prot: temperature(x, s.temperature),
}


def apply_chain(
    settings: SamplerSettings,
    logprobs: torch.Tensor,
    generator: torch.Generator | None = None,
    protected: Collection[int] = frozenset(),
) -> torch.Tensor:
    """The distribution actually sampled from, as normalized log-probabilities (nats) [rows, vocab].

    `logprobs` [rows, vocab] are the model's raw next-token log-probabilities (or logits). The active samplers run
    in `settings.order`; removed tokens are -inf. `generator` drives XTC's coin flips; `protected` are the token
    ids XTC must never remove (EOS, newline).
    """
    x = logprobs
    for name in settings.active:
        x = _STEPS[name](settings, x, generator, protected)
    return torch.log_softmax(x, dim=-1)


def sample(
    settings: SamplerSettings,
    logprobs: torch.Tensor,
    generator: torch.Generator | None = None,
    protected: Collection[int] = frozenset(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the next token of each row: (token ids [rows], sampled-from log-probabilities [rows, vocab]).

    Sampling inverts the cumulative distribution at one uniform draw per row from `generator`, so the same
    seed gives the same tokens; over a 262k-token vocabulary this is ~20x faster than torch.multinomial on CPU.
    Greedy settings (temperature 0) take the argmax without drawing from the generator. With no sampler
    active, a decode draws from the raw distribution with `sample_raw` instead, in the pass that also gives
    the entropy.
    """
    chained = apply_chain(settings, logprobs, generator, protected)
    if settings.greedy:
        return chained.argmax(dim=-1), chained
    return inverse_cdf_sample(chained.exp(), generator), chained


CDF_BLOCK = 1024  # tokens per block of the two-level inverse CDF
RAW_CHUNK = 16 * CDF_BLOCK  # tokens per chunk of `raw_pass`: its probabilities are read while still in cache


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `probs` [rows, vocab]: the first index whose cumulative probability exceeds u*total,
    u uniform in [0, 1). Tokens with probability 0 are never chosen.

    The cumulative sum is taken in two levels: over blocks of CDF_BLOCK tokens (one summing pass over the
    vocabulary, each block summed in cascade in the probabilities' own precision, relative error ~1e-7 in
    float32, and the blocks accumulated in float64), then in float64 inside the one block the draw falls in.
    That is the inversion of one float64 cumulative sum over the whole row (a draw within ~1e-7 of a block's
    edge aside) without a float64 copy of it: summing float32 blocks straight into float64 was 100x slower.
    """
    device = generator.device if generator is not None else probs.device
    source, probs = probs.device, probs.to(device)
    cumulative = _block_sums(probs).double().cumsum(-1)
    return _invert(cumulative, lambda index: probs.gather(1, index), probs.shape[1], generator).to(source)


def _block_sums(probs: torch.Tensor) -> torch.Tensor:
    """[rows, blocks]: the sum of each CDF_BLOCK tokens of `probs` [rows, tokens] (the last block padded with 0)."""
    rows, size = probs.shape
    blocks = -(-size // CDF_BLOCK)
    spare = blocks * CDF_BLOCK - size  # both default vocabularies are whole blocks: no padded copy then
    padded = torch.nn.functional.pad(probs, (0, spare)) if spare else probs.contiguous()
    return padded.view(rows, blocks, CDF_BLOCK).sum(-1)


def _invert(
    cumulative: torch.Tensor,
    probs_at: Callable[[torch.Tensor], torch.Tensor],
    vocab: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The draw of `inverse_cdf_sample` from the cumulative block sums [rows, blocks] (float64) and `probs_at`,
    which gives the probabilities at token ids [rows, k]."""
    rows, blocks = cumulative.shape
    u = torch.rand(rows, 1, generator=generator, device=cumulative.device, dtype=torch.float64)
    target = u * cumulative[:, -1:]
    block = torch.searchsorted(cumulative, target, right=True).clamp(max=blocks - 1)  # [rows, 1]
    before = torch.where(block > 0, cumulative.gather(-1, (block - 1).clamp(min=0)), 0.0)
    ids = block * CDF_BLOCK + torch.arange(CDF_BLOCK, device=block.device)  # [rows, CDF_BLOCK]
    inside = probs_at(ids.clamp(max=vocab - 1)).masked_fill(ids >= vocab, 0.0).double().cumsum(-1)
    offset = torch.searchsorted(inside, target - before, right=True).clamp(max=CDF_BLOCK - 1)
    chosen = (block * CDF_BLOCK + offset).squeeze(-1).clamp(max=vocab - 1)
    # rounding can put a draw past the last positive entry: take the last token with probability > 0 instead
    unlikely = (probs_at(chosen.unsqueeze(-1)).squeeze(-1) <= 0).nonzero().flatten()
    if len(unlikely):
        positive = probs_at(torch.arange(vocab, device=chosen.device).expand(rows, vocab))[unlikely] > 0
        chosen[unlikely] = vocab - 1 - positive.flip(-1).int().argmax(dim=-1)
    return chosen


@dataclass(frozen=True)
class RawPass:
    """What a decode step reads from a row's whole raw distribution, in one pass (`raw_pass`)."""

    cumulative: torch.Tensor  # [rows, blocks] float64: cumulative probability of each CDF_BLOCK-token block
    p_log_p: torch.Tensor  # [rows] float64: sum of p log p, nats (NaN where a row has -inf log-probabilities)


def raw_pass(logprobs: torch.Tensor) -> RawPass:
    """The block sums `inverse_cdf_sample` inverts and the entropy's sum of p log p, for normalized
    log-probabilities [rows, vocab], RAW_CHUNK tokens at a time: each chunk's probabilities go to one reused
    buffer and are read for both while still in cache, where exponentiating the whole [rows, vocab] first
    made a fresh copy of it (its page faults included) and read it twice more from memory. The block sums are
    the very ones a whole-row pass takes (each block summed alone), so the draws are the same; p log p is
    summed in float32 cascades per chunk, accumulated in float64."""
    rows, vocab = logprobs.shape
    width = min(RAW_CHUNK, vocab)
    buffer = logprobs.new_empty(rows * width)
    sums, p_log_p = [], torch.zeros(rows, dtype=torch.float64, device=logprobs.device)
    for start in range(0, vocab, width):
        chunk = logprobs[:, start : start + width]
        probs = torch.exp(chunk, out=buffer[: chunk.numel()].view(chunk.shape))
        sums.append(_block_sums(probs))
        p_log_p += (probs * chunk).sum(-1).double()
    return RawPass(torch.cat(sums, dim=1).double().cumsum(-1), p_log_p)


def sample_raw(logprobs: torch.Tensor, raw: RawPass, generator: torch.Generator | None = None) -> torch.Tensor:
    """`inverse_cdf_sample(logprobs.exp(), generator)` from a `raw_pass` of `logprobs`: the same tokens, with
    only the block each draw falls in exponentiated again."""
    device = generator.device if generator is not None else logprobs.device
    source, logprobs = logprobs.device, logprobs.to(device)
    cumulative = raw.cumulative.to(device)
    return _invert(cumulative, lambda index: logprobs.gather(1, index).exp(), logprobs.shape[1], generator).to(source)
