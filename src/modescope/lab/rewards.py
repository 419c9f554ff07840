"""Rewards the lab optimizes against: a function of (prompt, completion) returning a float, higher is better.

Built in:
- `sentiment` (the default): VADER's compound score of the completion, in [-1, 1]. VADER (Hutto & Gilbert
  2014, the `vaderSentiment` package) is a rule-based lexicon model that needs no download. It is easy to
  hack (a string of "great great great" scores 0.92), which is the point: the lab shows what optimizing a
  policy against an imperfect reward does to its output distribution.
- `format`: a template-like target, in [0, 1]: the completion is one line of `target_words` words (default
  20) that ends a sentence. Half the score is the word count's closeness to the target, a quarter for ending
  with `.`, `!` or `?`, a quarter for holding no line break.
- `module:function`: any importable Python callable `function(prompt: str, completion: str) -> float`.

A reward that raises or returns a value that is not a finite number makes the lab skip that step (and say
so), so a user's reward can be buggy on some inputs without ending a long run.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence

from modescope.errors import ModescopeError

Reward = Callable[[str, str], float]
REWARD_NAMES = ("sentiment", "format")
SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s*$")


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


def make_reward(spec: str) -> Reward:
    """The reward named by `spec`: sentiment, format, or module:function."""
    if spec == "sentiment":
        return sentiment_reward()
    if spec == "format":
        return format_reward()
    if ":" in spec:
        return _import_callable(spec)
    names = ", ".join(REWARD_NAMES)
    raise ModescopeError(f"unknown reward '{spec}'; use one of {names}, or module:function for your own")


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
