"""Forking tokens: where along a greedy answer is its outcome decided?

After Bigelow et al. 2024, "Forking Paths in Neural Text Generation" (arXiv:2412.07961). Along the greedy
mainline, at every position t we swap in each likely alternative token w, sample continuations to the end,
and map every finished text to an outcome (a regex capture or the last sentence). The outcome distribution
at t marginalizes over the alternatives,

    o_t = sum_w p(w | mainline[:t]) * o_{t,w},

with p renormalized over the kept alternatives and each of w's samples weighted equally. A forking token is
where o_t changes abruptly; the change score at t is the total variation distance between o_{t-1} and o_t
(the paper uses Bayesian change-point detection; TV is the simple, exact stand-in). Since o_t already
averages over the token at t, a jump at t means the mainline token at t - 1 made the decision.

The whole experiment, every (position, alternative, sample), is one batched `generate_many` decode.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from modescope.engine.decode import Continuation, generate, generate_many
from modescope.errors import ModescopeError
from modescope.models.base import Backend

NO_MATCH = "(no match)"
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


@dataclass
class ForkAlternative:
    """One token tried at a mainline position, with its outcome distribution over its samples."""

    id: int
    text: str
    probability: float  # under the raw model, not renormalized
    outcomes: dict[str, float] = field(default_factory=dict)  # outcome -> probability


@dataclass
class ForkPosition:
    """One mainline position: its token, the alternatives tried, o_t, and the change score TV(o_{t-1}, o_t)."""

    position: int  # index into the mainline continuation (0 = the first generated token)
    token: str  # the mainline token's text
    alternatives: list[ForkAlternative]
    outcomes: dict[str, float]  # o_t: outcome -> probability, sums to 1
    change_score: float  # total variation distance to the previous position's o_t, in [0, 1]; 0 at t = 0


@dataclass
class ForkResult:
    """The mainline and one ForkPosition per mainline token."""

    mainline: str
    positions: list[ForkPosition]
    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> Capabilities.metadata()

    def forks(self, top: int = 5) -> list[ForkPosition]:
        """The `top` positions with the largest change scores, largest first (ties: earlier first)."""
        ranked = sorted(self.positions, key=lambda p: (-p.change_score, p.position))
        return ranked[:top]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def outcome_of(text: str, pattern: re.Pattern[str] | None = None) -> str:
    """The outcome of a finished text: with `pattern`, its first match's group 1 (the whole match if the
    pattern has no group), else "(no match)"; without, the last non-empty sentence, stripped."""
    if pattern is not None:
        match = pattern.search(text)
        if match is None:
            return NO_MATCH
        return (match.group(1) or "") if pattern.groups else match.group(0)
    pieces = [p.strip() for p in _SENTENCE_END.split(text)]
    return next((p for p in reversed(pieces) if p), "")


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """Total variation distance between two distributions over outcomes, in [0, 1]."""
    return 0.5 * math.fsum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in p.keys() | q.keys())


def _compile(outcome_regex: str | None) -> re.Pattern[str] | None:
    if outcome_regex is None:
        return None
    try:
        return re.compile(outcome_regex)
    except re.error as exc:
        raise ModescopeError(f"the outcome regex {outcome_regex!r} is invalid: {exc}") from None


def _distribution(outcomes: Sequence[str]) -> dict[str, float]:
    counts = Counter(outcomes)
    return {k: v / len(outcomes) for k, v in counts.items()}


def forking_tokens(
    backend: Backend,
    prompt_ids: Sequence[int],
    max_tokens: int = 32,
    samples: int = 8,
    threshold: float = 0.05,
    max_alternatives: int = 4,
    temperature: float = 1.0,
    seed: int = 0,
    outcome_regex: str | None = None,
    stop: Sequence[str] = (),
) -> ForkResult:
    """Find the forking tokens of the greedy continuation of `prompt_ids` (Bigelow et al. 2024).

    At each mainline position the alternatives are the mainline token plus the most likely other tokens
    with raw probability >= `threshold` (probability, not log), `max_alternatives` in all. Each is
    continued `samples` times at `temperature` for the tokens the mainline had left (at least 1).
    An outcome is read from the generated text up to the position (mainline text before t, the
    alternative, its continuation), so outcomes at different positions are comparable; see `outcome_of`.
    End-of-sequence alternatives are not continued: their outcome is that of the text so far.
    """
    if samples < 1:
        raise ModescopeError(f"samples must be at least 1 (got {samples})")
    if not (0.0 < threshold <= 1.0):
        raise ModescopeError(f"threshold must be a probability in (0, 1] (got {threshold})")
    if max_alternatives < 1:
        raise ModescopeError(f"max alternatives must be at least 1 (got {max_alternatives})")
    backend.capabilities.require("a forking-tokens experiment (it continues each alternative)", backend.name, "top-k")
    pattern = _compile(outcome_regex)

    mainline = generate(
        backend, prompt_ids, n=1, max_tokens=max_tokens, top_k_alternatives=max(10, max_alternatives), stop=stop
    )[0]
    records = mainline.tokens
    eos = backend.vocab.eos_ids

    # per position: the mainline token first, then the likeliest others at or above the threshold
    plan: list[list[ForkAlternative]] = []
    for record in records:
        kept = [ForkAlternative(record.id, record.text, math.exp(record.raw_logprob))]
        for other in sorted(record.top, key=lambda a: -a.logprob):
            if len(kept) >= max_alternatives:
                break
            if other.id != record.id and math.exp(other.logprob) >= threshold:
                kept.append(ForkAlternative(other.id, other.text, math.exp(other.logprob)))
        plan.append(kept)

    prefixes: list[list[int]] = []
    for t, kept in enumerate(plan):
        base = [*prompt_ids, *(r.id for r in records[:t])]
        prefixes += [[*base, alt.id] for alt in kept if alt.id not in eos for _ in range(samples)]
    continuations: list[Continuation] = []
    if prefixes:
        continuations = generate_many(
            backend, prefixes, max_tokens=max(1, max_tokens - 1), temperature=temperature, seed=seed, stop=stop
        )

    positions: list[ForkPosition] = []
    previous: dict[str, float] | None = None
    cursor = iter(continuations)
    for t, kept in enumerate(plan):
        before = "".join(r.text for r in records[:t] if not r.special)
        remaining = max(1, max_tokens - t - 1)
        total = math.fsum(alt.probability for alt in kept)
        outcomes: dict[str, float] = {}
        for alt in kept:
            if alt.id in eos:
                texts = [before]
            else:
                head = before + ("" if alt.id in backend.vocab.special_ids else alt.text)
                # generate_many runs every row to the longest remaining length; cut each to its own
                texts = [head + _text(next(cursor), remaining) for _ in range(samples)]
            alt.outcomes = _distribution([outcome_of(text, pattern) for text in texts])
            for outcome, p in alt.outcomes.items():
                outcomes[outcome] = outcomes.get(outcome, 0.0) + alt.probability / total * p
        score = 0.0 if previous is None else total_variation(previous, outcomes)
        positions.append(ForkPosition(t, records[t].text, kept, outcomes, score))
        previous = outcomes
    return ForkResult(mainline.text, positions, {backend.name: backend.capabilities.metadata()})


def _text(continuation: Continuation, length: int) -> str:
    return "".join(r.text for r in continuation.tokens[:length] if not r.special)
