"""One sampling run's remedies besides its sampler chain: a prompt strategy and base-guided decoding.

`sample` (command, suite probe and Python API) takes these as options; a frontier measures them as points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modescope.models.base import Backend, ChatPrompt
from modescope.remedies.strategies import check_strategy, render_strategy, stop_strings


@dataclass(frozen=True)
class Remedies:
    """A prompt strategy (direct, vary, few-shot, verbalized with k responses) and an optional guide model
    mixed into every next-token distribution with weight `alpha` (see `modescope.remedies.guided`)."""

    strategy: str = "direct"
    k: int = 5
    guide: Backend | None = None
    alpha: float = 0.5
    mix: str = "geometric"

    def __post_init__(self) -> None:
        check_strategy(self.strategy)
        if self.strategy == "verbalized":
            from modescope.remedies.verbalized import check_k

            check_k(self.k)
        if self.guide is not None:
            from modescope.remedies.guided import check_alpha, check_mix

            check_alpha(self.alpha)
            check_mix(self.mix)

    @property
    def active(self) -> bool:
        return self.strategy != "direct" or self.guide is not None

    def backend(self, model: Backend, keep_name: bool = False) -> Backend:
        """The model to sample from: its mixture with the guide, or the model itself. `keep_name`: the mixture
        is named as the model (where results are filed by model name; `describe` says what was mixed)."""
        if self.guide is None:
            return model
        from modescope.remedies.guided import guided

        mixture = guided(model, self.guide, self.alpha, self.mix)
        if keep_name:
            mixture.name = model.name
        return mixture

    def prompt(self, prompt: str | ChatPrompt) -> str | ChatPrompt:
        """The prompt the strategy sends (a chat prompt's user message rewritten)."""
        if isinstance(prompt, ChatPrompt):
            return ChatPrompt(render_strategy(self.strategy, prompt.user, self.k), prompt.system, prompt.prefill)
        return render_strategy(self.strategy, prompt, self.k)

    def stop(self, stop: Sequence[str] = ()) -> tuple[str, ...]:
        """The stop strings with the strategy's own (a base model going on past a few-shot response)."""
        return tuple(dict.fromkeys([*stop, *stop_strings(self.strategy)]))

    def describe(self) -> dict[str, Any]:
        """What was applied, as JSON."""
        found: dict[str, Any] = {"strategy": self.strategy}
        if self.strategy == "verbalized":
            found["k"] = self.k
        if self.guide is not None:
            found |= {"guide": self.guide.name, "guide_alpha": self.alpha, "guide_mix": self.mix}
        return found


def verbalized_summary(texts: Sequence[str], k: int, truncated: Sequence[bool]) -> dict[str, Any]:
    """The parsed responses of Verbalized Sampling completions, and how many could not be parsed."""
    from modescope.remedies.verbalized import parse_verbalized

    parses = [parse_verbalized(t, k, truncated=cut) for t, cut in zip(texts, truncated, strict=True)]
    parsed = sum(len(p.responses) for p in parses)
    return {
        "k": k,
        "parse_rate": parsed / (k * len(parses)) if parses else float("nan"),
        "unparsed": sum(len(p.unparsed) for p in parses),
        "responses": [[{"text": r.text, "stated": r.stated} for r in p.responses] for p in parses],
    }
