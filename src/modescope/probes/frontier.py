"""The diversity-quality frontier of remedies for collapse: every remedy of a grid, at every strength, on the
same prompts, measured for how diverse its samples are and what that costs in quality.

For one model and a batch of prompts, each point of the grid (`modescope.remedies.grid`) samples n texts per
prompt (all prompts decoded together) and measures them:

- diversity: `embedding_diversity` (1 - mean pairwise MiniLM cosine), `class_share` (NoveltyBench-style
  equivalence classes, ROUGE-1 test, over the number of texts: 1 when every text is its own class),
  `distinct_2`;
- quality: `fluency`, the mean per-token log-likelihood (nats) of each text under a reference model given the
  *direct* prompt (the reference is the model itself unless another is given: how natural the text is as an
  answer to the question as asked, whatever prompt or sampler produced it); `reward`, the mean of an optional
  reward callable (prompt, text) -> float; for Verbalized Sampling `parse_rate`, the share of the asked-for
  responses that could be parsed (the unparsed are counted, never dropped silently).

A Verbalized Sampling point asks for k responses per generation and makes ceil(n / k) generations, keeping
the first n parsed responses, so it is compared with the other points on (at most) the same number of texts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modescope.engine.decode import generate_groups
from modescope.engine.samplers import SamplerSettings
from modescope.engine.score import continuation_logprobs, mean_logprob
from modescope.errors import ModescopeError
from modescope.metrics.embeddings import Embedder
from modescope.models.base import Backend
from modescope.remedies.grid import RemedyPoint
from modescope.results import NotebookResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

Reward = Callable[[str, str], float]
DIVERSITY = ("embedding_diversity", "class_share", "distinct_2")
QUALITY = ("fluency", "reward", "parse_rate")
VERBALIZED_TOKENS = 16  # per response, besides its text: its number, probability and line break
MAX_GENERATION_TOKENS = 1024


@dataclass(frozen=True)
class FrontierSettings:
    """What every point shares: samples per prompt, their length, the seed and the measuring tools."""

    n: int = 8
    max_tokens: int = 32
    seed: int = 0
    xtc_threshold: float = 0.1
    guide_mix: str = "geometric"
    embedder: Embedder | None = None
    reward: Reward | None = None
    stop: tuple[str, ...] = ()  # ends every text but a verbalized generation's (whose responses are lines)


@dataclass
class PointSamples:
    """What one point gave on one prompt: its texts (parsed responses for Verbalized Sampling)."""

    texts: list[str]
    asked: int  # responses asked for (Verbalized Sampling: k per generation), else the generations
    parsed: int  # responses obtained (= asked outside Verbalized Sampling)
    # the sampled token ids of each text (special tokens left out), None for a text cut at a stop string;
    # None for all of them for parsed responses
    ids: list[list[int] | None] | None = None


def point_sampler(point: RemedyPoint, settings: FrontierSettings) -> SamplerSettings:
    """The sampler chain of a point: the point's sampler at its strength, else plain temperature 1."""
    s = point.strength
    if point.remedy == "temperature":
        return SamplerSettings.make(temperature=s)
    if point.remedy == "min_p":
        return SamplerSettings.make(min_p=s)
    if point.remedy == "top_n_sigma":
        return SamplerSettings.make(top_n_sigma=s)
    if point.remedy == "xtc":
        return SamplerSettings.make(xtc_threshold=settings.xtc_threshold, xtc_probability=s)
    return SamplerSettings.make()


def point_prompt(point: RemedyPoint, prompt: str) -> str:
    """The prompt text a point sends: the prompt strategy's rewrite, or the prompt itself."""
    from modescope.remedies.strategies import render_strategy

    if point.remedy in ("vary", "few-shot"):
        return render_strategy(point.remedy, prompt)
    if point.remedy == "verbalized":
        return render_strategy("verbalized", prompt, k=point.k)
    return prompt


def point_backend(point: RemedyPoint, backend: Backend, guide: Backend | None, mix: str) -> Backend:
    """The model a point samples from: the mixture with the guide for base-guided decoding, else the model."""
    if point.remedy != "guided":
        return backend
    if guide is None:
        raise ModescopeError("the guided remedy needs a guide model (the tuned model's base); give --guide MODEL")
    from modescope.remedies.guided import guided

    return guided(backend, guide, float(point.strength or 0.0), mix)


def sample_point(
    point: RemedyPoint, backend: Backend, prompts: Sequence[str], settings: FrontierSettings, guide: Backend | None
) -> list[PointSamples]:
    """The point's texts on every prompt, all prompts decoded together."""
    from modescope.remedies.strategies import stop_strings

    model = point_backend(point, backend, guide, settings.guide_mix)
    ids = [model.prompt_ids(point_prompt(point, p)) for p in prompts]
    sampler = point_sampler(point, settings)
    if point.remedy == "verbalized":
        return _verbalized_point(point, model, ids, sampler, settings)
    own = stop_strings(point.remedy) if point.remedy in ("vary", "few-shot") else ()
    stop = tuple(dict.fromkeys([*settings.stop, *own]))
    groups = generate_groups(
        model,
        ids,
        settings.n,
        settings.max_tokens,
        sampler=sampler,
        seed=settings.seed,
        stop=stop,
        top_k_alternatives=0,
    )
    found = []
    for group in groups:
        texts = [_cut(c.text, stop) for c in group]
        # a text cut at a stop string is scored as text; the others exactly as sampled
        tokens = [None if c.finish_reason == "stop" else [t.id for t in c.tokens if not t.special] for c in group]
        found.append(PointSamples(texts, settings.n, settings.n, tokens))
    return found


def _cut(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (the decoder keeps the stop string in the text)."""
    for s in stop:
        text = text.split(s, 1)[0]
    return text


def _verbalized_point(
    point: RemedyPoint, model: Backend, ids: list[list[int]], sampler: SamplerSettings, settings: FrontierSettings
) -> list[PointSamples]:
    """ceil(n / k) generations per prompt, each asked for k responses; the first n parsed responses kept."""
    from modescope.remedies.verbalized import parse_verbalized

    k = point.k
    generations = math.ceil(settings.n / k)
    tokens = min(MAX_GENERATION_TOKENS, k * (settings.max_tokens + VERBALIZED_TOKENS))
    groups = generate_groups(model, ids, generations, tokens, sampler=sampler, seed=settings.seed, top_k_alternatives=0)
    found = []
    for group in groups:
        parses = [parse_verbalized(c.text, k, truncated=c.finish_reason == "length") for c in group]
        responses = [r.text for parse in parses for r in parse.responses]
        found.append(PointSamples(responses[: settings.n], k * generations, len(responses)))
    return found


def fluency(reference: Backend, prompts: Sequence[str], found: Sequence[PointSamples], sampler: Backend) -> list[float]:
    """Per prompt, the mean over its texts of their mean per-token log-likelihood under `reference` given the
    direct prompt (NaN for a prompt without texts).

    A sampled text is scored exactly as sampled (its token ids) when `reference` has the tokenizer of the
    model that sampled it; otherwise, and for a parsed Verbalized Sampling response, its text is encoded by
    the reference, with a space before it when neither it nor the plain prompt brings one (as it would be
    written after the prompt)."""
    from modescope.remedies.guided import tokenizer_mismatch

    same = tokenizer_mismatch(reference, sampler) is None
    rows: list[tuple[int, list[int], list[int]]] = []
    for k, (prompt, samples) in enumerate(zip(prompts, found, strict=True)):
        prompt_ids = reference.prompt_ids(prompt)
        sampled = samples.ids if same and samples.ids is not None else [None] * len(samples.texts)
        for text, ids in zip(samples.texts, sampled, strict=True):
            scored = ids if ids is not None else _encoded(reference, prompt, text)
            if scored:
                rows.append((k, prompt_ids, scored))
    scores = continuation_logprobs(reference, [r[1] for r in rows], [r[2] for r in rows])
    per_prompt: list[list[float]] = [[] for _ in prompts]
    for (k, _, _), score in zip(rows, scores, strict=True):
        per_prompt[k].append(mean_logprob(score))
    return [math.fsum(v) / len(v) if v else math.nan for v in per_prompt]


def _encoded(reference: Backend, prompt: str, text: str) -> list[int]:
    """A text as the reference would read it after the plain prompt: with a space before it when neither
    brings one (a parsed response starts with its first word)."""
    spaced = reference.chat_style is None and text[:1] and not text[0].isspace() and not prompt[-1:].isspace()
    return reference.encode(" " + text if spaced else text, add_special_tokens=False)


def measure(
    samples: PointSamples, prompt: str, settings: FrontierSettings, fluency_value: float
) -> dict[str, float | None]:
    """Every number of one point on one prompt."""
    from modescope.metrics.diversity import distinct_n, embedding_diversity, equivalence_classes, rouge1_equivalence

    texts = samples.texts
    nonempty = [t for t in texts if t.strip()]
    classes = equivalence_classes(texts, rouge1_equivalence()).count if texts else 0
    values: dict[str, float | None] = {
        "embedding_diversity": embedding_diversity(texts, settings.embedder) if len(texts) > 1 else math.nan,
        "class_share": classes / len(texts) if texts else math.nan,
        "distinct_2": distinct_n(nonempty, 2) if nonempty else math.nan,
        "fluency": fluency_value,
        "reward": _mean_reward(settings.reward, prompt, texts),
        "parse_rate": samples.parsed / samples.asked if samples.asked else math.nan,
        "n_texts": float(len(texts)),
    }
    return {k: (v if v is not None and math.isfinite(v) else None) for k, v in values.items()}


def _mean_reward(reward: Reward | None, prompt: str, texts: Sequence[str]) -> float:
    if reward is None or not texts:
        return math.nan
    from modescope.lab.rewards import score

    try:
        return math.fsum(score(reward, [prompt] * len(texts), texts)) / len(texts)
    except Exception as exc:  # a user's reward may raise anything: say which, and end the unit clearly
        raise ModescopeError(f"the reward failed: {exc}") from exc


def frontier_prompts(
    backend: Backend,
    prompts: Sequence[str],
    points: Sequence[RemedyPoint],
    settings: FrontierSettings,
    *,
    guide: Backend | None = None,
    reference: Backend | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[dict[str, Any]]:
    """Every point on every prompt for one model; per prompt {"points": [{"remedy", "strength", "label",
    "metrics": {...}, "texts": [...]}]}, the texts kept for the page and later measures."""
    if settings.n < 2:
        raise ModescopeError(f"a frontier needs at least 2 samples per prompt to measure diversity (got {settings.n})")
    scorer = reference or backend
    results: list[dict[str, Any]] = [{"points": []} for _ in prompts]
    for index, point in enumerate(points):
        progress(f"{backend.name}: {point.label} ({index + 1}/{len(points)}) on {len(prompts)} prompts")
        found = sample_point(point, backend, prompts, settings, guide)
        fluent = fluency(scorer, prompts, found, backend)
        for k, (samples, value) in enumerate(zip(found, fluent, strict=True)):
            metrics = measure(samples, prompts[k], settings, value)
            entry = {"remedy": point.remedy, "strength": point.strength, "label": point.label}
            results[k]["points"].append(entry | {"metrics": metrics, "texts": samples.texts})
    return results


# --- over the prompts: estimates, comparisons with `direct`, and the Pareto frontier ------------------------


@dataclass
class FrontierUnit:
    """One model's points on one prompt (a stored unit's payload)."""

    model: str
    prompt_id: str
    prompt: str
    points: list[dict[str, Any]]
    meta: dict[str, Any] | None = None


MEASURES = (*DIVERSITY, *QUALITY)
EXAMPLE_PROMPTS = 3  # prompts whose texts the page shows for each point
EXAMPLE_TEXTS = 2


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Whether each (x, y) point is on the Pareto frontier (no other point is at least as high on both and
    higher on one); a point with a NaN coordinate is never on it."""
    on = []
    for i, (x, y) in enumerate(points):
        measured = math.isfinite(x) and math.isfinite(y)
        beaten = any(
            j != i and math.isfinite(a) and math.isfinite(b) and a >= x and b >= y and (a > x or b > y)
            for j, (a, b) in enumerate(points)
        )
        on.append(measured and not beaten)
    return on


def _value(metrics: dict[str, Any], name: str) -> float:
    value = metrics.get(name)
    return float(value) if value is not None else math.nan


def summarize(models: Sequence[str], units: Sequence[FrontierUnit], diversity: str, quality: str) -> dict[str, Any]:
    """The frontier over the prompts, as JSON: per model and point, each measure's mean with its 95%
    bootstrap interval over the prompts, its paired difference from the model's `direct` point, whether the
    point is on the model's Pareto frontier of (diversity, quality) means; and per prompt every number.

        {"kind": "frontier", "models", "diversity", "quality", "measures",
         "points": [{"model", "remedy", "strength", "label", "metrics": {M: estimate}, "vs_direct": {M: diff},
                     "on_front", "examples": [{"prompt", "texts"}]}],
         "prompts": [{"id", "prompt", "meta", "points": {model: {label: {M: value}}}}]}
    """
    from modescope.metrics.paired import bootstrap_means, paired_differences

    prompt_ids = list(dict.fromkeys(u.prompt_id for u in units))
    texts = {u.prompt_id: (u.prompt, u.meta or {}) for u in units}
    by_unit = {(u.model, u.prompt_id): {p["label"]: p for p in u.points} for u in units}
    points: list[dict[str, Any]] = []
    for model in models:
        labels = list(dict.fromkeys(p["label"] for u in units if u.model == model for p in u.points))
        first = {p["label"]: p for u in units if u.model == model for p in u.points}

        def column(label: str, name: str, model: str = model) -> list[float]:
            found = [by_unit.get((model, pid), {}).get(label) for pid in prompt_ids]
            return [_value(p["metrics"], name) if p else math.nan for p in found]

        estimates = bootstrap_means([column(label, m) for label in labels for m in MEASURES])
        compared = [(column("direct", m), column(label, m)) for label in labels for m in MEASURES]
        differences = paired_differences(compared) if "direct" in labels else []
        for i, label in enumerate(labels):
            block = slice(i * len(MEASURES), (i + 1) * len(MEASURES))
            entry = {k: first[label][k] for k in ("remedy", "strength", "label")} | {"model": model}
            entry["metrics"] = {m: e.to_dict() for m, e in zip(MEASURES, estimates[block], strict=True)}
            entry["vs_direct"] = (
                {m: d.to_dict() for m, d in zip(MEASURES, differences[block], strict=True)}
                if differences and label != "direct"
                else {}
            )
            entry["examples"] = [
                {"prompt": texts[pid][0], "texts": by_unit[(model, pid)][label]["texts"][:EXAMPLE_TEXTS]}
                for pid in prompt_ids[:EXAMPLE_PROMPTS]
                if label in by_unit.get((model, pid), {})
            ]
            points.append(entry)
        own = [p for p in points if p["model"] == model]
        axes = [(_mean(p, diversity), _mean(p, quality)) for p in own]
        for p, on in zip(own, pareto(axes), strict=True):
            p["on_front"] = on
    prompts = [
        {
            "id": pid,
            "prompt": texts[pid][0],
            "meta": texts[pid][1],
            "points": {u.model: {p["label"]: p["metrics"] for p in u.points} for u in units if u.prompt_id == pid},
        }
        for pid in prompt_ids
    ]
    return {
        "kind": "frontier",
        "models": list(models),
        "diversity": diversity,
        "quality": quality,
        "measures": list(MEASURES),
        "points": points,
        "prompts": prompts,
    }


def _mean(point: dict[str, Any], name: str) -> float:
    value = (point["metrics"].get(name) or {}).get("mean")
    return float(value) if value is not None else math.nan


# --- the Python API --------------------------------------------------------------------------------------------


@dataclass
class FrontierResult(NotebookResult):
    """A frontier over prompts: the `summarize` payload, with its table, figure and page.

    In a notebook it shows the frontier page (every remedy's points with their intervals, the Pareto front)."""

    payload: dict[str, Any]
    units: list[FrontierUnit]

    frame_height = 1300

    def to_dict(self) -> dict[str, Any]:
        """The `summarize` payload: models, measures, every point with its means and intervals."""
        return self.payload

    def to_pandas(self) -> pd.DataFrame:
        """One row per model and point: remedy, strength, each measure's mean and interval, on the frontier."""
        import pandas as pd

        rows = []
        for p in self.payload["points"]:
            row: dict[str, Any] = {k: p[k] for k in ("model", "remedy", "strength", "label", "on_front")}
            for name, e in p["metrics"].items():
                row |= {name: e.get("mean"), f"{name}_low": e.get("low"), f"{name}_high": e.get("high")}
            rows.append(row)
        return pd.DataFrame.from_records(rows)

    def plot(self) -> Figure:
        """The frontier figure (a matplotlib Figure): one panel per model, each remedy a line."""
        from modescope.viz.figures import detached
        from modescope.viz.frontier_plot import frontier_figure

        return detached(frontier_figure(self.payload))

    def to_html(self) -> str:
        """The self-contained frontier page."""
        from modescope.viz.frontier_html import frontier_page

        return frontier_page(self.payload)

    def write_page(self, path: str | Path) -> Path:
        """`save_html(path)`, under its earlier name."""
        return self.save_html(path)


def frontier(
    models: Backend | str | Sequence[Backend | str],
    prompts: str | Sequence[str],
    remedies: Sequence[str] = (),
    *,
    n: int = 8,
    max_tokens: int = 32,
    seed: int = 0,
    guide: Backend | None = None,
    guide_mix: str = "geometric",
    reference: Backend | None = None,
    reward: Reward | None = None,
    embedder: Embedder | None = None,
    stop: Sequence[str] = (),
    diversity: str = "embedding_diversity",
    quality: str = "fluency",
    progress: Callable[[str], None] = lambda message: None,
) -> FrontierResult:
    """Every remedy of the grid (`modescope.remedies.grid` specs, default: every remedy but guided) on every
    prompt and model, summarized over the prompts (nothing stored; `modescope frontier` stores)."""
    from modescope.remedies.grid import DEFAULT_GRID, parse_grid

    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        raise ModescopeError("give at least one prompt")
    if diversity not in DIVERSITY or quality not in QUALITY:
        raise ModescopeError(f"the axes are one of {', '.join(DIVERSITY)} and one of {', '.join(QUALITY)}")
    points = parse_grid(list(remedies) or list(DEFAULT_GRID))
    from modescope.models import backends as resolve

    backends = resolve(models)  # names are loaded (after the settings are checked); duplicates refused
    settings = FrontierSettings(
        n, max_tokens, seed, guide_mix=guide_mix, embedder=embedder, reward=reward, stop=tuple(stop)
    )
    units = []
    for backend in backends:
        found = frontier_prompts(backend, texts, points, settings, guide=guide, reference=reference, progress=progress)
        units += [FrontierUnit(backend.name, str(k + 1), texts[k], f["points"]) for k, f in enumerate(found)]
    return FrontierResult(summarize([b.name for b in backends], units, diversity, quality), units)
