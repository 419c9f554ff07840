"""Regenerate n times and look: n completions per model with per-token records and diversity metrics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from modescope.engine.decode import Continuation, generate
from modescope.engine.samplers import SamplerSettings
from modescope.errors import ModescopeError
from modescope.models.base import Backend, ChatPrompt

if TYPE_CHECKING:
    from modescope.metrics.diversity import Equivalence

MAX_SAMPLES = 1024  # per prompt and model, unless the caller raises it


@dataclass
class ModelSamples:
    """One model's completions of the prompt and their diversity metrics."""

    model: str
    completions: list[Continuation]
    metrics: dict[str, float]
    seconds: float

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.completions]


@dataclass
class SamplingResult:
    prompt: str
    n: int
    max_tokens: int
    seed: int | None
    sampler: SamplerSettings
    models: list[ModelSamples]
    # model name -> Capabilities.metadata() of the backend that produced its samples (tier, server)
    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: settings, and per model every completion with its tokens, and the metrics."""
        return {
            "prompt": self.prompt,
            "n": self.n,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "sampler": self.sampler.model_dump(mode="json"),
            "capabilities": self.capabilities,
            "models": [
                {
                    "model": m.model,
                    "seconds": m.seconds,
                    "metrics": m.metrics,
                    "completions": [
                        {
                            "text": c.text,
                            "finish_reason": c.finish_reason,
                            "tokens": [_token_dict(asdict(t)) for t in c.tokens],
                        }
                        for c in m.completions
                    ],
                }
                for m in self.models
            ],
        }


def _token_dict(record: dict[str, Any]) -> dict[str, Any]:
    record["top"] = [{"text": a["text"], "logprob": a["logprob"], "id": a["id"]} for a in record["top"]]
    return record


def completion_metrics(
    completions: Sequence[Continuation],
    embedder: Any = None,
    equivalence: Equivalence = "rouge1",
    equivalence_threshold: float | None = None,
) -> dict[str, float]:
    """Every diversity metric of the completions: text metrics, and token metrics from the raw model.

    `equivalence` ("rouge1" or "embedding") and its threshold decide when two completions fall in one
    NoveltyBench class (defaults in modescope.metrics.diversity)."""
    from modescope.metrics import diversity

    entropies = [t.entropy_bits for c in completions for t in c.tokens]
    raw_probs = [math.exp(t.raw_logprob) for c in completions for t in c.tokens]
    metrics = diversity.text_metrics([c.text for c in completions], embedder, equivalence, equivalence_threshold)
    metrics["mean_entropy_bits"] = diversity.mean_entropy_bits(entropies)
    metrics["branching_factor"] = diversity.branching_factor(entropies)
    bounded = [t.entropy_bounds for c in completions for t in c.tokens if t.entropy_bounds is not None]
    if bounded:  # a server showed only the top alternatives: the entropy is known between two bounds
        lows = [t.entropy_bounds[0] if t.entropy_bounds else t.entropy_bits for c in completions for t in c.tokens]
        highs = [t.entropy_bounds[1] if t.entropy_bounds else t.entropy_bits for c in completions for t in c.tokens]
        metrics["mean_entropy_bits_low"] = diversity.mean_entropy_bits(lows)
        metrics["mean_entropy_bits_high"] = diversity.mean_entropy_bits(highs)
    # a sample-only server gives no probabilities: the share is unknown, not zero
    known = all(math.isfinite(x) for x in raw_probs)
    metrics["share_confident"] = diversity.share_confident(raw_probs) if known else math.nan
    metrics["mean_tokens"] = sum(len(c.tokens) for c in completions) / len(completions)
    return metrics


def sample_models(
    models: Backend | Sequence[Backend],
    prompt: str | ChatPrompt,
    n: int = 16,
    max_tokens: int = 64,
    sampler: SamplerSettings | None = None,
    seed: int | None = 0,
    stop: Sequence[str] = (),
    top_k_alternatives: int = 10,
    max_samples: int = MAX_SAMPLES,
    embedder: Any = None,
    progress: Callable[[str], None] | None = None,
    equivalence: Equivalence = "rouge1",
    equivalence_threshold: float | None = None,
) -> SamplingResult:
    """n completions of `prompt` from each model with the same sampler and seed, and their metrics."""
    if n < 1 or n > max_samples:
        raise ModescopeError(f"n must be between 1 and {max_samples} (got {n}); raise --max-n for more samples")
    settings = sampler or SamplerSettings.make(temperature=1.0)
    backends = [models] if isinstance(models, Backend) else list(models)
    if len({b.name for b in backends}) != len(backends):
        raise ModescopeError("a model is listed twice; name each model once")
    results = []
    for backend in backends:
        if progress:
            progress(backend.name)
        started = time.perf_counter()
        completions = generate(
            backend,
            backend.prompt_ids(prompt),
            n=n,
            max_tokens=max_tokens,
            sampler=settings,
            top_k_alternatives=top_k_alternatives,
            seed=seed,
            stop=stop,
        )
        seconds = time.perf_counter() - started
        metrics = completion_metrics(completions, embedder, equivalence, equivalence_threshold)
        results.append(ModelSamples(backend.name, completions, metrics, seconds))
    text = prompt if isinstance(prompt, str) else prompt.user
    capabilities = {b.name: b.capabilities.metadata() for b in backends}
    return SamplingResult(text, n, max_tokens, seed, settings, results, capabilities)
