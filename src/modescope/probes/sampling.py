"""Regenerate n times and look: n completions per model with per-token records and diversity metrics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from modescope.engine.decode import Continuation, generate, generate_groups
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
    """n completions of `prompt` from each model with the same sampler and seed, and their metrics.

    A list of prompts gives a `PromptSetResult` instead: every prompt's samples (all prompts decoded in one
    batch per model) and the aggregates over the prompts."""
    if isinstance(prompt, list | tuple):
        from modescope.probes.prompt_set import over_prompts

        chosen = sampler or SamplerSettings.make(temperature=1.0)
        chain = chosen.model_dump(exclude={"order"}) | {"sampler_order": list(chosen.order)}
        keys = {"n": n, "max_tokens": max_tokens, "seed": seed, "stop": list(stop), **chain}
        return over_prompts("sample", models, prompt, **keys)  # type: ignore[return-value]
    settings = _checked(n, max_samples, sampler)
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
    capabilities = {b.name: b.capabilities.metadata() for b in backends}
    return SamplingResult(_prompt_text(prompt), n, max_tokens, seed, settings, results, capabilities)


def sample_prompts(
    backend: Backend,
    prompts: Sequence[str | ChatPrompt],
    n: int = 16,
    max_tokens: int = 64,
    sampler: SamplerSettings | None = None,
    seed: int | None = 0,
    stop: Sequence[str] = (),
    top_k_alternatives: int = 10,
    max_samples: int = MAX_SAMPLES,
    embedder: Any = None,
    progress: Callable[[int, int], None] | None = None,
    equivalence: Equivalence = "rouge1",
    equivalence_threshold: float | None = None,
    max_rows: int = 256,
) -> list[SamplingResult]:
    """n completions of each prompt from one model, the prompts decoded together (`generate_groups`, at most
    `max_rows` rows at once): one result per prompt, equal to `sample_models(backend, prompt, ...)` with the
    same arguments except for `seconds`, which is the prompt's share of its chunk's time (the chunk's wall time
    divided evenly among its prompts). `progress(done, total)` is called after each chunk, counting prompts."""
    settings = _checked(n, max_samples, sampler)
    seconds: list[float] = []
    started = time.perf_counter()

    def chunk_done(done: int) -> None:
        nonlocal started
        now, count = time.perf_counter(), done - len(seconds)
        seconds.extend([(now - started) / count] * count)
        started = now
        if progress:
            progress(done, len(prompts))

    groups = generate_groups(
        backend,
        [backend.prompt_ids(p) for p in prompts],
        n,
        max_tokens,
        sampler=settings,
        top_k_alternatives=top_k_alternatives,
        seed=seed,
        stop=stop,
        max_rows=max_rows,
        progress=chunk_done,
    )
    results = []
    for prompt, completions, share in zip(prompts, groups, seconds, strict=True):
        metrics = completion_metrics(completions, embedder, equivalence, equivalence_threshold)
        samples = [ModelSamples(backend.name, completions, metrics, share)]
        capabilities = {backend.name: backend.capabilities.metadata()}
        results.append(SamplingResult(_prompt_text(prompt), n, max_tokens, seed, settings, samples, capabilities))
    return results


def _checked(n: int, max_samples: int, sampler: SamplerSettings | None) -> SamplerSettings:
    """Refuse a sample count out of range; the sampler chain, plain temperature 1 without one."""
    if n < 1 or n > max_samples:
        raise ModescopeError(f"n must be between 1 and {max_samples} (got {n}); raise --max-n for more samples")
    return sampler or SamplerSettings.make(temperature=1.0)


def _prompt_text(prompt: str | ChatPrompt) -> str:
    return prompt if isinstance(prompt, str) else prompt.user
