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
from modescope.results import NotebookResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from modescope.metrics.diversity import Equivalence

MAX_SAMPLES = 1024  # per prompt and model, unless the caller raises it
# the columns of SamplingResult.to_pandas() and .tokens_frame(), described there
COMPLETION_COLUMNS = [
    *("model", "sample", "text", "tokens", "finish_reason"),
    *("raw_logprob", "mean_raw_logprob", "mean_entropy_bits"),
]
TOKEN_COLUMNS = [
    *("model", "sample", "position", "token_id", "token", "special"),
    *("logprob", "raw_logprob", "probability", "entropy_bits"),
]


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
class SamplingResult(NotebookResult):
    """Each model's `n` completions of one prompt with the same sampler and seed, every token with its
    probability, and their metrics (`models[i].metrics`, e.g. `self_bleu`, `distinct_2`).

    In a notebook it shows every completion with its tokens coloured by probability (hover a token for the
    alternatives). Tables: `to_pandas()` one row per completion, `tokens_frame()` one row per token,
    `metrics_frame()` one row per model.
    """

    frame_height = 720

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

    def to_pandas(self) -> pd.DataFrame:
        """One row per (model, completion): model, sample (0-based index), text, tokens (count, special tokens
        such as EOS included), finish_reason ("eos", "stop" or "length"), raw_logprob (log-probability of the whole
        completion under the raw model, nats), mean_raw_logprob (per token, nats; NaN for no token) and
        mean_entropy_bits (mean entropy of the raw next-token distributions along it, bits)."""
        import pandas as pd

        rows = [
            [m.model, k, c.text, len(c.tokens), c.finish_reason, c.raw_logprob, *_per_token_means(c)]
            for m in self.models
            for k, c in enumerate(m.completions)
        ]
        return pd.DataFrame(rows, columns=COMPLETION_COLUMNS)

    def tokens_frame(self) -> pd.DataFrame:
        """One row per generated token: model, sample, position (0-based), token_id, token (its text), special
        (EOS or a control token), logprob (under the distribution sampled from, after the sampler chain, nats),
        raw_logprob (under the raw model, nats), probability (exp(raw_logprob)) and entropy_bits (of the raw
        next-token distribution; NaN when a server showed only its top alternatives)."""
        import pandas as pd

        rows = [
            [m.model, k, i, t.id, t.text, t.special, t.logprob, t.raw_logprob, math.exp(t.raw_logprob), t.entropy_bits]
            for m in self.models
            for k, c in enumerate(m.completions)
            for i, t in enumerate(c.tokens)
        ]
        return pd.DataFrame(rows, columns=TOKEN_COLUMNS)

    def metrics_frame(self) -> pd.DataFrame:
        """One row per model: model, seconds (wall time of its sampling), then one column per diversity metric
        (see `completion_metrics`; entropies in bits)."""
        import pandas as pd

        return pd.DataFrame([{"model": m.model, "seconds": m.seconds, **m.metrics} for m in self.models])

    def plot(self) -> Figure:
        """Each token's probability under the raw model along each completion, one panel per model (a matplotlib
        Figure): where the completions were certain and where they branched."""
        from modescope.viz.figures import detached
        from modescope.viz.tokens_html import probability_figure

        return detached(probability_figure(self))

    def to_html(self) -> str:
        """The page `modescope sample --html` writes: tokens coloured by probability, alternatives on hover."""
        from modescope.viz.tokens_html import sampling_page

        return sampling_page(self)


def _per_token_means(completion: Continuation) -> tuple[float, float]:
    """(mean raw log-probability in nats, mean entropy in bits) over the tokens of one completion."""
    count = len(completion.tokens)
    if not count:
        return math.nan, math.nan
    entropy = math.fsum(t.entropy_bits for t in completion.tokens) / count
    return completion.raw_logprob / count, entropy


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


def sample(
    models: Backend | str | Sequence[Backend | str],
    prompt: str | ChatPrompt,
    n: int = 16,
    max_tokens: int = 64,
    *,
    temperature: float = 1.0,
    sampler: SamplerSettings | None = None,
    seed: int | None = 0,
    stop: str | Sequence[str] = (),
    top_k_alternatives: int = 10,
    max_samples: int = MAX_SAMPLES,
    embedder: Any = None,
    equivalence: Equivalence = "rouge1",
    equivalence_threshold: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> SamplingResult:
    """n completions of a prompt per model, every token with its probability, and how diverse they are.

    Every model samples with the same sampler and seed. Each token records its log-probability (nats) under the
    distribution it was sampled from and under the raw model, the entropy of the raw next-token distribution
    (bits) and the most likely alternatives. The metrics per model: distinct-n, EAD, self-BLEU, compression
    ratio, embedding diversity, equivalence classes (NoveltyBench), mean token entropy (bits), branching factor
    and the share of confident tokens.

    Args:
        models: One model or a list: loaded models (`ms.load`) or names to load (a preset such as
            "gemma-3-270m", a folder, a .gguf file, a cached HF id, NAME@URL).
        prompt: The text to continue, or a `ChatPrompt` for a chat model. A list of prompts gives a
            `PromptSetResult` instead: every prompt's samples and the aggregates over the prompts.
        n: Completions per model.
        max_tokens: Tokens per completion at most.
        temperature: Plain sampling temperature (0 is greedy); for a full sampler chain give `sampler` instead.
        sampler: A sampler chain, e.g. `SamplerSettings.make(temperature=0.8, top_p=0.95)`; it cannot be given
            together with a `temperature` other than 1 (set the temperature in the chain).
        seed: Random seed: the same seed gives the same samples on the same model.
        stop: A stop string or a list of them: a completion ends after the first token that completes one.
        top_k_alternatives: Alternatives recorded per token (the most likely tokens under the raw model).
        max_samples: Larger `n` is refused.
        embedder: Texts -> unit vectors for the embedding metrics; None loads all-MiniLM-L6-v2.
        equivalence: When two completions are one class: "rouge1" (word overlap) or "embedding" (cosine).
        equivalence_threshold: The threshold of that test; None uses its default.
        progress: Called with each model's name as its sampling starts.

    Returns:
        A `SamplingResult`: per model the completions (each token with its log-probabilities in nats, entropy in
        bits and alternatives), the metrics and the seconds it took.

    Example:
        >>> import modescope as ms
        >>> result = ms.sample(["gemma-3-270m", "smollm2-135m-instruct"], "Tell me a joke.", n=8)
        >>> result.to_pandas().head()
    """
    from modescope.models import backends as resolve

    settings = _sampler_of(temperature, sampler)
    stops = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(prompt, list | tuple):
        return sample_models(resolve(models), prompt, n, max_tokens, settings, seed, stops)
    _checked(n, max_samples, settings)
    _check_request(max_tokens, stops, top_k_alternatives, equivalence)
    loaded = resolve(models)  # names are loaded; duplicates refused
    options = (top_k_alternatives, max_samples, embedder, progress, equivalence, equivalence_threshold)
    return sample_models(loaded, prompt, n, max_tokens, settings, seed, stops, *options)


def _check_request(max_tokens: int, stops: list[str], top_k_alternatives: int, equivalence: str) -> None:
    """Refuse what `sample_models` would refuse only after loading the models (or not at all)."""
    if max_tokens < 1:
        raise ModescopeError(f"max_tokens must be at least 1 (got {max_tokens})")
    if any(not isinstance(s, str) or not s for s in stops):
        raise ModescopeError(f"stop strings must be non-empty strings (got {stops!r})")
    if top_k_alternatives < 0:
        raise ModescopeError(f"top_k_alternatives must be 0 or more (got {top_k_alternatives})")
    if equivalence not in ("rouge1", "embedding"):
        raise ModescopeError(f"unknown equivalence test {equivalence!r}; use 'rouge1' or 'embedding'")


def _sampler_of(temperature: float, sampler: SamplerSettings | None) -> SamplerSettings:
    """The sampler chain of `sample`: `sampler`, or plain `temperature`; both at once is ambiguous."""
    if sampler is None:
        return SamplerSettings.make(temperature=temperature)
    if not isinstance(sampler, SamplerSettings):
        raise ModescopeError("sampler is a SamplerSettings, e.g. SamplerSettings.make(temperature=0.8, top_p=0.95)")
    if temperature != 1.0:
        raise ModescopeError(
            f"give the temperature inside the sampler (temperature={temperature} and a sampler were both given), "
            "e.g. SamplerSettings.make(temperature=0.8, top_p=0.95)"
        )
    return sampler


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
