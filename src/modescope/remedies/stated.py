"""Stated versus real: the probabilities a model writes under Verbalized Sampling against the ones it has.

For one model and prompt:

1. n_vs generations of the Verbalized Sampling prompt (`render_strategy("verbalized", prompt, k)`), each read
   by `parse_verbalized`; the distinct responses over all of them (compared by `response_key`: case, spaces,
   quotes and trailing punctuation do not count) are the rows.
2. Stated: each generation's stated probabilities renormalized to sum to 1 (`normalized`), duplicates within
   it added up, and averaged over the generations that gave at least one response (0 where a generation did
   not list the response). This `stated_share` is the distribution Verbalized Sampling samples from when it
   picks a generation, then a response by its stated weight; it sums to 1 over the rows. `stated` is the mean
   probability as written, over the generations that listed the response.
3. Exact: log P(response | direct prompt) under the same model, summed over the tokens of one tokenization:
   the canonical encoding (`backend.encode(lead + text, add_special_tokens=False)`) of the response text after
   `lead`, the whitespace a direct answer starts with: a space when the direct prompt ends in a non-space
   character (a base model continues "Name a colour." with " Blue"), nothing when it ends in whitespace (a chat
   template's assistant header ends with a newline, and the reply starts "Blue"). It is exact for that token
   sequence: the probability of the response's text prefix, not of the answer ending there, and not summed over
   other tokenizations. `exact_share` renormalizes it over the rows, comparable to `stated_share`.
4. Frequency: the share of n_direct direct samples (same model, direct prompt, temperature 1, same token cap)
   whose whole text equals the response by `response_key`. A longer answer ("Blue is calm.") is not "Blue".

Spearman correlations of stated_share with exact_share and with frequency say whether the model ranks its
responses as it really ranks them; NaN (with the reason) when fewer than 3 rows or fewer than 3 distinct values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from modescope.engine.decode import generate
from modescope.engine.tree import Child, Node, PrefixTree
from modescope.errors import ModescopeError
from modescope.models.base import Backend, ChatPrompt
from modescope.remedies.strategies import render_strategy
from modescope.remedies.verbalized import (
    VerbalizedParse,
    check_k,
    normalized,
    parse_rate,
    parse_verbalized,
    response_key,
)

MIN_DISTINCT = 3  # values a Spearman correlation needs on each side to mean something


@dataclass
class StatedRow:
    """One distinct response of the Verbalized Sampling generations."""

    text: str  # as first written
    listed: int  # generations that listed it
    stated: float  # mean probability as written, over those generations
    stated_share: float  # mean normalized stated share over the generations that gave responses
    exact_logprob: float  # log P(lead + text | direct prompt), nats, canonical tokenization; NaN: not scored
    exact_share: float  # exact probability renormalized over the rows
    direct_count: int  # direct samples equal to it
    direct_frequency: float  # direct_count / n_direct
    tokens: int  # tokens of its canonical encoding (0 when not scored)


@dataclass
class StatedVsReal:
    """Stated probabilities against exact ones and direct-sampling frequencies, for one model and prompt."""

    model: str
    prompt: str
    k: int
    n_vs: int
    n_direct: int
    max_tokens: int
    seed: int | None
    lead: str  # whitespace put before each response when it is scored (see the module docstring)
    rows: list[StatedRow]
    outputs: list[str]  # the Verbalized Sampling generations, as written
    parses: list[VerbalizedParse]
    spearman_exact: float
    spearman_exact_reason: str | None
    spearman_frequency: float
    spearman_frequency_reason: str | None
    direct_matched: float  # share of direct samples equal to some row
    notes: list[str] = field(default_factory=list)  # responses that could not be scored, and why
    direct_outputs: list[str] = field(default_factory=list)  # the direct samples, as written

    @property
    def parse_rate(self) -> float:
        """Share of generations that gave k distinct, readable responses."""
        return parse_rate(self.parses)

    @property
    def responses_parsed(self) -> int:
        return sum(len(p.responses) for p in self.parses)

    @property
    def unparsed(self) -> int:
        """Pieces of the generations that looked like responses but could not be read."""
        return sum(len(p.unparsed) for p in self.parses)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: settings, summary, one entry per row, every generation with its parse, and the
        direct samples."""
        return {
            "model": self.model,
            "prompt": self.prompt,
            "k": self.k,
            "n_vs": self.n_vs,
            "n_direct": self.n_direct,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "lead": self.lead,
            "parse_rate": self.parse_rate,
            "responses_parsed": self.responses_parsed,
            "unparsed": self.unparsed,
            "spearman_exact": self.spearman_exact,
            "spearman_exact_reason": self.spearman_exact_reason,
            "spearman_frequency": self.spearman_frequency,
            "spearman_frequency_reason": self.spearman_frequency_reason,
            "direct_matched": self.direct_matched,
            "notes": self.notes,
            "rows": [asdict(r) for r in self.rows],
            "generations": [
                {
                    "text": text,
                    "complete": p.complete,
                    "problem": p.problem,
                    "responses": [asdict(r) for r in p.responses],
                    "unparsed": [{"text": u, "reason": why} for u, why in zip(p.unparsed, p.reasons, strict=True)],
                }
                for text, p in zip(self.outputs, self.parses, strict=True)
            ],
            "direct_outputs": self.direct_outputs,
        }


def spearman_with_reason(x: Sequence[float], y: Sequence[float]) -> tuple[float, str | None]:
    """Spearman's rank correlation of paired values (pairs with a NaN dropped), or NaN and why it means nothing:
    fewer than 3 pairs, or fewer than 3 distinct values on a side (ties share ranks)."""
    from scipy import stats

    pairs = [(a, b) for a, b in zip(x, y, strict=True) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < MIN_DISTINCT:
        return math.nan, f"{len(pairs)} responses; a rank correlation needs at least {MIN_DISTINCT}"
    for side, values in (("x", [a for a, _ in pairs]), ("y", [b for _, b in pairs])):
        if len(set(values)) < MIN_DISTINCT:
            return math.nan, f"{len(set(values))} distinct {side} values; a rank correlation needs {MIN_DISTINCT}"
    return float(stats.spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic), None


def check_settings(k: int, n_vs: int, n_direct: int, max_tokens: int) -> None:
    """Refuse settings that cannot give a comparison, before any model time is spent."""
    check_k(k)
    if n_vs < 1:
        raise ModescopeError(f"the number of Verbalized Sampling generations must be at least 1 (got {n_vs})")
    if n_direct < 1:
        raise ModescopeError(f"the number of direct samples must be at least 1 (got {n_direct})")
    if max_tokens < 1:
        raise ModescopeError(f"max tokens must be at least 1 (got {max_tokens})")


def stated_vs_real(
    backend: Backend,
    prompt: str | ChatPrompt,
    k: int = 5,
    n_vs: int = 8,
    n_direct: int = 64,
    max_tokens: int = 200,
    seed: int | None = 0,
    progress: Callable[[str], None] | None = None,
) -> StatedVsReal:
    """Verbalized Sampling's stated probabilities of `prompt` against the model's exact ones and its direct
    sampling frequencies (see the module docstring). A plain prompt goes through the chat template when the
    backend is used `with_chat`; a ChatPrompt keeps its system message and prefill for both prompts."""
    check_settings(k, n_vs, n_direct, max_tokens)
    backend.capabilities.require("comparing stated with exact probabilities", backend.name, "full")
    text = prompt if isinstance(prompt, str) else prompt.user
    if not text.strip():
        raise ModescopeError("the prompt is empty; give a non-empty prompt")
    vs_prompt = _with_text(prompt, render_strategy("verbalized", text, k))
    say = progress or (lambda _: None)
    say(f"sampling {n_vs} Verbalized Sampling generations")
    options: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 1.0, "top_k_alternatives": 0, "seed": seed}
    vs = generate(backend, backend.prompt_ids(vs_prompt), n_vs, **options)
    parses = [parse_verbalized(c.text, k, truncated=c.finish_reason == "length") for c in vs]
    direct_ids = backend.prompt_ids(prompt)
    say(f"sampling {n_direct} direct answers")
    direct = generate(backend, direct_ids, n_direct, **options)
    rows = _stated_rows(parses)
    lead = _lead(backend, direct_ids)
    say(f"scoring {len(rows)} responses exactly")
    notes = _score(backend, direct_ids, rows, lead)
    _count_direct(rows, [c.text for c in direct])
    keys = {response_key(r.text) for r in rows}
    matched = sum(response_key(c.text) in keys for c in direct)
    rho_exact, why_exact = spearman_with_reason([r.stated_share for r in rows], [r.exact_share for r in rows])
    rho_freq, why_freq = spearman_with_reason([r.stated_share for r in rows], [r.direct_frequency for r in rows])
    return StatedVsReal(
        backend.name,
        text,
        k,
        n_vs,
        n_direct,
        max_tokens,
        seed,
        lead,
        rows,
        [c.text for c in vs],
        parses,
        rho_exact,
        why_exact,
        rho_freq,
        why_freq,
        matched / n_direct,
        notes,
        [c.text for c in direct],
    )


def _with_text(prompt: str | ChatPrompt, text: str) -> str | ChatPrompt:
    return text if isinstance(prompt, str) else ChatPrompt(text, prompt.system, prompt.prefill)


def _stated_rows(parses: Sequence[VerbalizedParse]) -> list[StatedRow]:
    """One row per distinct response, with its stated probability and share (see the module docstring)."""
    rows: dict[str, StatedRow] = {}
    written: dict[str, list[float]] = {}
    answered = [p for p in parses if p.responses]
    for parse in answered:
        shares: dict[str, float] = {}
        for response, share in zip(parse.responses, normalized(parse.responses), strict=True):
            key = response_key(response.text)
            if key not in rows:
                rows[key] = StatedRow(response.text, 0, math.nan, 0.0, math.nan, math.nan, 0, 0.0, 0)
                written[key] = []
            shares[key] = shares.get(key, 0.0) + share
            written[key].append(response.stated)
        for key, share in shares.items():
            rows[key].listed += 1
            rows[key].stated_share += share / len(answered)
    for key, row in rows.items():
        row.stated = math.fsum(written[key]) / len(written[key])
    return list(rows.values())


def _lead(backend: Backend, prompt_ids: Sequence[int]) -> str:
    """The whitespace a direct answer starts with: none after a prompt ending in whitespace, else a space."""
    last = backend.decode(prompt_ids[-1:]) if prompt_ids else ""
    return "" if not last or last[-1:].isspace() else " "


def _score(backend: Backend, prompt_ids: list[int], rows: list[StatedRow], lead: str) -> list[str]:
    """Fill each row's exact log-probability and share; returns notes on the rows that could not be scored."""
    notes: list[str] = []
    paths: dict[int, tuple[int, ...]] = {}
    for index, row in enumerate(rows):
        path, problem = _canonical(backend, lead + row.text)
        if problem:
            notes.append(f"{row.text!r} not scored: {problem}")
        else:
            paths[index] = path
            row.tokens = len(path)
    for index, logprob in zip(paths, _path_logprobs(backend, prompt_ids, list(paths.values())), strict=True):
        rows[index].exact_logprob = logprob
    scored = [r.exact_logprob for r in rows if math.isfinite(r.exact_logprob)]
    if scored:
        top = max(scored)
        total = math.fsum(math.exp(x - top) for x in scored)
        for row in rows:
            if not math.isnan(row.exact_logprob):
                row.exact_share = math.exp(row.exact_logprob - top) / total if math.isfinite(row.exact_logprob) else 0.0
    return notes


def _canonical(backend: Backend, text: str) -> tuple[tuple[int, ...], str | None]:
    """The canonical token ids of `text`, or why it has none that spells exactly it."""
    try:
        path = tuple(backend.encode(text, add_special_tokens=False))
    except ValueError as exc:  # a toy tokenizer that cannot spell every character
        return (), str(exc)
    if not path or b"".join(backend.vocab.token_bytes[t] for t in path) != text.encode("utf-8"):
        return (), "the tokenizer does not spell it back exactly"
    return path, None


def _path_logprobs(backend: Backend, prompt_ids: list[int], paths: list[tuple[int, ...]]) -> list[float]:
    """log P(path | prompt) of each token path: one tree of the paths below the prompt, expanded with the
    prefix-tree engine (each tree node forwarded once, the prompt encoded once); on a server, scored by it."""
    if not paths:
        return []
    if backend.capabilities.server is not None:
        answers = backend.query([[*prompt_ids, *path] for path in paths], 0, True)
        return [math.fsum(a.scores[len(prompt_ids) - 1 :]) if a.scores else math.nan for a in answers]
    children: dict[tuple[int, ...], list[int]] = {}
    for path in paths:
        for depth in range(len(path)):
            below = children.setdefault(path[:depth], [])
            if path[depth] not in below:
                below.append(path[depth])
    found: dict[tuple[int, ...], float] = {}

    def visit(node: Node, logprobs: Any) -> list[Child]:
        found[node.path] = node.logprob
        return [Child(token) for token in children.get(node.path, [])]

    PrefixTree(backend).expand(prompt_ids, visit)
    return [found[path] for path in paths]


def _count_direct(rows: list[StatedRow], texts: Sequence[str]) -> None:
    counts: dict[str, int] = {}
    for text in texts:
        counts[response_key(text)] = counts.get(response_key(text), 0) + 1
    for row in rows:
        row.direct_count = counts.get(response_key(row.text), 0)
        row.direct_frequency = row.direct_count / len(texts)
