"""Rewards the lab optimizes against, higher is better: text rewards of (prompt, completion), the typicality
of the completion under a reference model, or a weighted sum of them.

Terms:
- `sentiment`: VADER's compound score of the completion, in [-1, 1]. VADER (Hutto & Gilbert 2014, the
  `vaderSentiment` package) is a rule-based lexicon model that needs no download. It is easy to hack (a string
  of "great great great" scores 0.92), which is the point: the lab shows what optimizing a policy against an
  imperfect reward does to its output distribution.
- `format`: a template-like target, in [0, 1]: the completion is one line of `target_words` words (default
  20) that ends a sentence. Half the score is the word count's closeness to the target, a quarter for ending
  with `.`, `!` or `?`, a quarter for holding no line break.
- `typical`: the mean per-token log-probability (nats, at most 0) of the completion's tokens under a frozen
  reference model, by default the start model (in the lab the same network with the adapter disabled, whose
  log-probabilities the KL penalty needs anyway, so the term costs nothing). It is the preference for
  familiar, high-likelihood text that is blamed for mode collapse (typicality bias in preference data, Zhang
  et al. 2025, "Verbalized Sampling"). It is computed from token ids by the lab, not from the text, so it is
  no (prompt, completion) callable.
- `module:function`: any importable Python callable `function(prompt: str, completion: str) -> float`.

A reward spec is one term or a sum of weighted terms: `typical`, `typical+0.5*sentiment`,
`2*format+typical`, `-0.5*sentiment+mymodule:score`. A weight is a decimal number before `*` (default 1; it
may be negative; write it without an exponent, since `+` separates the terms); each term appears once.
`parse_reward` turns a spec into a `RewardSpec`; the reward of a completion is the weighted sum of its terms.

A text reward that raises or returns a value that is not a finite number makes the lab skip that step (and
say so), so a user's reward can be buggy on some inputs without ending a long run.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modescope.errors import ModescopeError

TextReward = Callable[[str, str], float]
Reward = TextReward  # the name the lab has always used for a (prompt, completion) reward
TYPICAL = "typical"
REWARD_NAMES = ("sentiment", "format", TYPICAL)
SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s*$")
TERM_NAME = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?")
SYNTAX = "write TERM or WEIGHT*TERM joined by '+', e.g. typical+0.5*sentiment"


class RewardError(Exception):
    """A reward failed on one batch: it raised, or returned something that is not a finite number."""


def sentiment_reward() -> Reward:
    """VADER's compound sentiment of the completion (the prompt is ignored), in [-1, 1]."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as exc:
        raise ModescopeError("the sentiment reward needs vaderSentiment; `pip install vaderSentiment`") from exc
    analyzer = SentimentIntensityAnalyzer()

    def sentiment(prompt: str, completion: str) -> float:
        return float(analyzer.polarity_scores(completion)["compound"])

    return sentiment


def format_reward(target_words: int = 20) -> Reward:
    """One line of `target_words` words that ends a sentence, scored in [0, 1] (see the module docstring)."""

    def format_score(prompt: str, completion: str) -> float:
        words = len(completion.split())
        closeness = max(0.0, 1.0 - abs(words - target_words) / target_words)
        ends = 1.0 if SENTENCE_END.search(completion) else 0.0
        one_line = 0.0 if "\n" in completion.strip() else 1.0
        return 0.5 * closeness + 0.25 * ends + 0.25 * one_line

    return format_score


def _import_callable(spec: str) -> Reward:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ModescopeError(f"reward '{spec}' is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModescopeError(f"cannot import the reward module '{module_name}': {exc}") from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ModescopeError(f"'{attribute}' in module '{module_name}' is not a callable reward")
    return function


@dataclass(frozen=True)
class RewardTerm:
    """One weighted term of a reward: a text reward, or the typicality (`function` None)."""

    name: str  # sentiment, format, typical, or module:function
    weight: float
    function: TextReward | None = None

    @property
    def typical(self) -> bool:
        return self.function is None


@dataclass(frozen=True)
class RewardSpec:
    """A reward: the weighted sum of its terms. `spec` is the text it was parsed from."""

    spec: str
    terms: tuple[RewardTerm, ...]

    @property
    def text_terms(self) -> tuple[RewardTerm, ...]:
        return tuple(t for t in self.terms if not t.typical)

    @property
    def typical_weight(self) -> float:
        """The weight of the typicality term (0 when the spec has none)."""
        return sum(t.weight for t in self.terms if t.typical)

    @property
    def has_typical(self) -> bool:
        return any(t.typical for t in self.terms)

    def text_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> dict[str, list[float]]:
        """Each text term's unweighted values, by term name; RewardError when one fails on any completion."""
        return {t.name: score(t.function, prompts, completions) for t in self.text_terms if t.function}

    def combine(self, text_scores: dict[str, list[float]], typicality: Sequence[float] | None) -> list[float]:
        """The reward of each completion: the weighted sum of its terms' values. `typicality` (mean log-prob
        per token under the reference, one per completion) is needed when the spec has a typical term."""
        if self.has_typical and typicality is None:
            raise ValueError(f"reward '{self.spec}' needs the completions' typicality")
        rows = len(typicality) if typicality is not None else len(next(iter(text_scores.values()), []))
        totals = [0.0] * rows
        for term in self.terms:
            values = typicality if term.typical else text_scores[term.name]
            assert values is not None
            totals = [total + term.weight * float(v) for total, v in zip(totals, values, strict=True)]
        return totals


def typicality(logprobs: Any, mask: Any) -> list[float]:
    """The typicality term of each completion: the mean of its tokens' log-probabilities under the reference
    (tensors [rows, tokens], the mask 1 on real tokens; a completion always has a token, its EOS at least)."""
    return ((logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()


def as_spec(reward: RewardSpec | Reward) -> RewardSpec:
    """A RewardSpec as it is, or a (prompt, completion) callable as a spec of that one term at weight 1."""
    if isinstance(reward, RewardSpec):
        return reward
    name = getattr(reward, "__name__", "reward")
    return RewardSpec(name, (RewardTerm(name, 1.0, reward),))


def _term(name: str) -> TextReward | None:
    """The text reward of a term name (None for typical); ModescopeError for an unknown or unimportable one."""
    if name == TYPICAL:
        return None
    if name == "sentiment":
        return sentiment_reward()
    if name == "format":
        return format_reward()
    if ":" in name:
        return _import_callable(name)
    names = ", ".join(REWARD_NAMES)
    raise ModescopeError(f"unknown reward '{name}'; use one of {names}, or module:function for your own")


def _weight(text: str, spec: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise ModescopeError(f"reward '{spec}': the weight '{text}' is not a number; {SYNTAX}") from None
    if not math.isfinite(weight):
        raise ModescopeError(f"reward '{spec}': the weight '{text}' must be a finite number")
    return weight


def parse_reward(spec: str) -> RewardSpec:
    """The reward a spec names (see the module docstring); ModescopeError naming what is wrong with a bad one."""
    if not spec.strip():
        raise ModescopeError(f"the reward is empty; {SYNTAX}")
    terms: list[RewardTerm] = []
    for part in spec.split("+"):
        part = part.strip()
        if not part:
            raise ModescopeError(f"reward '{spec}' has an empty term; {SYNTAX}")
        weight_text, star, name = part.rpartition("*")
        name = name.strip()
        weight = _weight(weight_text.strip(), spec) if star else 1.0
        if not name or (not TERM_NAME.fullmatch(name) and name.count(":") != 1):
            raise ModescopeError(f"reward '{spec}': '{part}' is not a term; {SYNTAX}")
        if any(t.name == name for t in terms):
            raise ModescopeError(f"reward '{spec}' names '{name}' twice; give each term once, with one weight")
        terms.append(RewardTerm(name, weight, _term(name)))
    return RewardSpec(spec, tuple(terms))


def make_reward(spec: str) -> Reward:
    """The (prompt, completion) reward named by `spec`: sentiment, format, or module:function. Specs with the
    typicality term or several terms are not text callables: `parse_reward` gives their RewardSpec."""
    parsed = parse_reward(spec)
    if len(parsed.terms) != 1 or parsed.terms[0].weight != 1.0 or parsed.terms[0].function is None:
        raise ModescopeError(f"reward '{spec}' is not a single text reward; use parse_reward for it")
    return parsed.terms[0].function


def score(reward: Reward, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """The reward of each (prompt, completion); RewardError when the reward fails on any of them."""
    values = []
    for prompt, completion in zip(prompts, completions, strict=True):
        try:
            value = float(reward(prompt, completion))
        except Exception as exc:  # a user's reward may raise anything; the step is skipped, not the run
            raise RewardError(f"the reward raised {type(exc).__name__}: {exc}") from exc
        if not math.isfinite(value):
            raise RewardError(f"the reward returned {value} for the completion {completion[:60]!r}")
        values.append(value)
    return values
