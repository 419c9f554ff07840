"""Remedies for mode collapse as options of the playground's sampling (`/api/generate`, `/api/regenerate`).

A request's `remedy` rewrites the prompt by a strategy (`modescope.remedies.strategies`) before it is
encoded (the user message of a chat prompt), samples the model guided by another served model
(`modescope.remedies.guided`) when it names one, and reads each completion of the `verbalized` strategy
(`modescope.remedies.verbalized`). Checking the request's values happens here, before any model is touched;
whether a guide can be mixed with a model (tokenizer, capabilities) is known only once both are loaded, so
`guided` refuses it then, in the worker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modescope.errors import ModescopeError
from modescope.models.base import Backend, ChatPrompt
from modescope.remedies.guided import MIXES, Mix
from modescope.remedies.options import Remedies
from modescope.remedies.strategies import STRATEGIES, stop_strings
from modescope.remedies.verbalized import MAX_K, MIN_K, parse_verbalized
from modescope.web.schemas import RemedyIn


@dataclass(frozen=True)
class Remedy:
    """A checked `remedy`: the prompt strategy (with its k) and the optional guide with its weight and mix."""

    strategy: str = "direct"
    k: int = 5
    guide: str | None = None
    alpha: float = 0.5
    mix: Mix = "geometric"

    @property
    def verbalized(self) -> bool:
        return self.strategy == "verbalized"

    def applied(self, guide: Backend | None = None) -> Remedies:
        """The remedy as `sample` applies it, with the guide model once it is loaded."""
        return Remedies(self.strategy, self.k, guide, self.alpha, self.mix)

    def rewrite(self, prompt: str | ChatPrompt) -> str | ChatPrompt:
        """The prompt the model sees: the text, or a chat prompt's user message, rewritten by the strategy."""
        return self.applied().prompt(prompt)

    def stops(self, stop: Sequence[str]) -> list[str]:
        """The request's stop strings and the strategy's own (few-shot: the start of a next example)."""
        return list(self.applied().stop(stop))

    def backend(self, model: Backend, guide: Backend | None) -> Backend:
        """The model, or its mixture with the guide (ModescopeError when the two cannot be mixed)."""
        return self.applied(guide).backend(model)

    def describe(self) -> dict[str, Any]:
        """What was applied, for the response."""
        return {
            "strategy": self.strategy,
            "k": self.k if self.verbalized else None,
            "guide": self.guide,
            "guide_alpha": self.alpha if self.guide is not None else None,
            "guide_mix": self.mix if self.guide is not None else None,
            "stop": list(stop_strings(self.strategy)),
        }

    def annotate(self, completion: dict[str, Any], before: str = "") -> dict[str, Any]:
        """A completion's JSON with its verbalized responses read (of `before` + its text, `before` being the
        kept and edited text of a branch); unchanged for the other strategies."""
        if not self.verbalized:
            return completion
        parse = parse_verbalized(before + completion["text"], self.k, truncated=completion["finish_reason"] == "length")
        responses = [{"text": r.text, "stated": r.stated, "duplicate": r.duplicate} for r in parse.responses]
        verbalized = {"responses": responses, "unparsed": len(parse.unparsed), "complete": parse.complete}
        return completion | {"verbalized": verbalized | {"problem": parse.problem}}


def check_remedy(spec: RemedyIn) -> Remedy:
    """The remedy asked for, or a ModescopeError saying which field to change (the guide's name is checked
    against the served models by the app)."""
    if spec.strategy not in STRATEGIES:
        raise ModescopeError(f"unknown remedy.strategy {spec.strategy!r}; use one of {', '.join(STRATEGIES)}")
    if not MIN_K <= spec.k <= MAX_K:
        raise ModescopeError(f"remedy.k (responses verbalized asks for) must be from {MIN_K} to {MAX_K} (got {spec.k})")
    if not math.isfinite(spec.guide_alpha) or not 0.0 <= spec.guide_alpha <= 1.0:
        raise ModescopeError(
            f"remedy.guide_alpha must be from 0 (the model alone) to 1 (the guide alone) (got {spec.guide_alpha})"
        )
    mix = next((m for m in MIXES if m == spec.guide_mix), None)
    if mix is None:
        raise ModescopeError(f"unknown remedy.guide_mix {spec.guide_mix!r}; use {' or '.join(MIXES)}")
    return Remedy(spec.strategy, spec.k, spec.guide, spec.guide_alpha, mix)


def sent_prompt(backend: Backend, prompt: str | ChatPrompt) -> str:
    """The prompt's text as the model gets it: a chat prompt through the model's template."""
    return backend.render_chat(prompt) if isinstance(prompt, ChatPrompt) else prompt


def remedy_options() -> dict[str, Any]:
    """The remedies the page can offer (served by GET /api/models)."""
    return {"strategies": list(STRATEGIES), "mixes": list(MIXES), "k": {"min": MIN_K, "max": MAX_K, "default": 5}}
