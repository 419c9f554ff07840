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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from modescope.engine.decode import Continuation, generate, generate_many
from modescope.errors import ModescopeError
from modescope.models.base import Backend, ChatPrompt, require_one_prompt
from modescope.results import NotebookResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

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


def _check_settings(samples: int, threshold: float, max_alternatives: int, max_tokens: int) -> None:
    """What can be checked before any model is loaded or runs."""
    if samples < 1:
        raise ModescopeError(f"samples must be at least 1 (got {samples})")
    if not (0.0 < threshold <= 1.0):
        raise ModescopeError(f"threshold must be a probability in (0, 1] (got {threshold})")
    if max_alternatives < 1:
        raise ModescopeError(f"max alternatives must be at least 1 (got {max_alternatives})")
    if max_tokens < 1:
        raise ModescopeError(f"max tokens must be at least 1 (got {max_tokens})")


def _check_model(backend: Backend) -> None:
    backend.capabilities.require("a forking-tokens experiment (it continues each alternative)", backend.name, "top-k")


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
    _check_settings(samples, threshold, max_alternatives, max_tokens)
    _check_model(backend)
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


FORK_COLUMNS = [
    "model",
    "position",
    "token",
    "change_score",
    "alternative",
    "alternative_id",
    "is_mainline",
    "probability",
    "weight",
    "top_outcome",
    "top_outcome_probability",
    "outcomes",
]


def _top_outcome(outcomes: dict[str, float]) -> tuple[str | None, float]:
    """The likeliest outcome and its probability (ties: the alphabetically first); (None, NaN) when empty."""
    if not outcomes:
        return None, float("nan")
    return min(outcomes.items(), key=lambda kv: (-kv[1], kv[0]))


@dataclass
class ForksResult(NotebookResult):
    """Every model's forking-tokens analysis of one prompt, as `forks` returns it.

    Index it by model name for that model's `ForkResult` (its mainline, and per position the alternatives
    tried, the outcome distribution and the change score); iterating gives the model names.
    """

    prompt: str  # the prompt's text (a chat prompt's user message)
    results: dict[str, ForkResult]  # model name -> its analysis

    frame_height: ClassVar[int] = 640

    def __getitem__(self, model: str) -> ForkResult:
        if model not in self.results:
            raise KeyError(f"no model {model!r} here; the models are {', '.join(self.results)}")
        return self.results[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def to_dict(self) -> dict[str, Any]:
        """The CLI's --json: the prompt, and per model name its mainline and every position's outcomes."""
        return {"prompt": self.prompt, "models": {name: r.to_dict() for name, r in self.results.items()}}

    def to_pandas(self) -> pd.DataFrame:
        """One row per (model, mainline position, alternative token tried there), columns as in `FORK_COLUMNS`:
        the mainline `position` and `token`, the position's `change_score` (total variation between the outcome
        distributions at this position and the previous one, in [0, 1]), the `alternative` token (text and id;
        `is_mainline` for the mainline's own), its raw `probability` and its `weight` in the position's outcome
        distribution (the probability renormalized over the alternatives tried), and the outcomes of its sampled
        continuations: the likeliest (`top_outcome`, `top_outcome_probability`) and all (`outcomes`: outcome ->
        probability)."""
        import pandas as pd

        rows = []
        for model, result in self.results.items():
            for position in result.positions:
                total = math.fsum(alt.probability for alt in position.alternatives)
                for k, alt in enumerate(position.alternatives):
                    top, top_probability = _top_outcome(alt.outcomes)
                    rows.append(
                        {
                            "model": model,
                            "position": position.position,
                            "token": position.token,
                            "change_score": position.change_score,
                            "alternative": alt.text,
                            "alternative_id": alt.id,
                            "is_mainline": k == 0,  # forking_tokens tries the mainline token first
                            "probability": alt.probability,
                            "weight": alt.probability / total if total > 0 else float("nan"),
                            "top_outcome": top,
                            "top_outcome_probability": top_probability,
                            "outcomes": dict(alt.outcomes),
                        }
                    )
        return pd.DataFrame(rows, columns=FORK_COLUMNS)

    def to_html(self) -> str:
        """The page `modescope forks --html` writes: each mainline token shaded by its change score, and the
        outcomes per position."""
        from modescope.viz.forks_html import forks_page

        return forks_page(self.results, self.prompt)

    def plot(self) -> Figure:
        """The change score (total variation) at every mainline position, one line per model, the largest marked."""
        from modescope.viz.figures import detached
        from modescope.viz.forks_plot import forks_figure

        return detached(forks_figure(self.results))


def forks(
    models: Backend | str | Sequence[Backend | str],
    prompt: str | ChatPrompt,
    *,
    samples: int = 8,
    threshold: float = 0.05,
    max_alternatives: int = 4,
    max_tokens: int = 32,
    outcome_regex: str | None = None,
    seed: int = 0,
) -> ForksResult:
    """Forking tokens: where along each model's greedy completion its final outcome gets decided.

    At every position of the greedy mainline, the mainline token and its likeliest alternatives are each
    continued by sampling; every finished text maps to an outcome (a regex capture, or the last sentence). The
    outcome distribution at a position weighs the alternatives by their probability; its change score is the
    total variation distance (in [0, 1]) from the previous position's. A jump marks a forking token (after
    Bigelow et al. 2024).

    Args:
        models: One model or a list: loaded models (`ms.load`) or names to load (a preset such as
            "gemma-3-270m", a folder, a .gguf file, a cached HF id, NAME@URL).
        prompt: The text to complete, or a `ChatPrompt` for a chat model.
        samples: Continuations sampled (at temperature 1) per alternative token.
        threshold: Alternatives with at least this probability are followed (a probability in (0, 1]).
        max_alternatives: Tokens tried per position, the mainline token included.
        max_tokens: Length of the mainline, in tokens.
        outcome_regex: The outcome is this regex's group 1 (or whole match) in the finished text; by default the
            last sentence.
        seed: Random seed of the sampled continuations.

    Returns:
        A `ForksResult`: per model the mainline and, per position, the alternatives tried (their probabilities
        and outcome distributions), the outcome distribution and the change score (total variation).

    Example:
        >>> import modescope as ms
        >>> result = ms.forks("smollm2-135m-instruct", "Q: Is 91 prime? Answer yes or no.\nA:",
        ...                   outcome_regex=r"(yes|no)")
        >>> result.to_pandas().sort_values("change_score", ascending=False).head()
    """
    from modescope.models import backends as resolve

    require_one_prompt(prompt, "forks", "forks")
    _check_settings(samples, threshold, max_alternatives, max_tokens)  # before any model loads
    _compile(outcome_regex)
    loaded = resolve(models)
    for backend in loaded:  # refuse a model that cannot run this before the first one spends time
        _check_model(backend)
    results = {
        backend.name: forking_tokens(
            backend,
            backend.prompt_ids(prompt),
            max_tokens=max_tokens,
            samples=samples,
            threshold=threshold,
            max_alternatives=max_alternatives,
            seed=seed,
            outcome_regex=outcome_regex,
        )
        for backend in loaded
    }
    return ForksResult(prompt if isinstance(prompt, str) else prompt.user, results)
