"""Cross-model homogeneity: do different models give the same answers to the same prompts?

After Jiang et al. 2025, "Artificial Hivemind: The Open-Ended Homogeneity of Language Models (and Beyond)"
(NeurIPS): open-ended prompts draw repetitive samples from one model (intra-model) and strikingly similar
samples across different models (inter-model). Both are measured here with sentence embeddings:

- intra-model similarity of model A on a prompt: the mean cosine over the n(n-1)/2 pairs of A's samples
  (self-pairs excluded; two identical samples are a pair with cosine 1). Undefined (NaN) for fewer than two.
- inter-model similarity of A and B on a prompt: the mean cosine over all n_A x n_B pairs (a from A, b from B).
  Defined as soon as each has one sample.

Each is averaged over the prompts where it is defined, with a 95% percentile-bootstrap interval (prompts
resampled, `modescope.metrics.paired.bootstrap_means`), and laid out as a models x models matrix (diagonal:
intra, off the diagonal: inter; symmetric). Each model's share of prompts whose intra-model similarity exceeds
a threshold (default 0.8, the paper's line for a prompt answered near-identically) comes with an interval too.
When inter(A, B) is as high as intra(A) and intra(B), the two models sample from the same mode.

Edge cases, each counted per model in `ModelCounts`: an empty (or whitespace-only) text carries no answer and
is left out before embedding; a model with fewer than two texts left on a prompt has no intra similarity there;
a prompt without a model's entry counts as missing for it. Not-defined values are left out of the means.
Every distinct text is embedded once, in one call of the embedder (all-MiniLM-L6-v2 unless given).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from modescope.errors import ModescopeError
from modescope.jsonsafe import finite
from modescope.metrics.diversity import embed, mean_pairwise_cosine
from modescope.metrics.embeddings import Embedder
from modescope.metrics.paired import Estimate, bootstrap_means

DEFAULT_THRESHOLD = 0.8  # Jiang et al.: mean pairwise similarity above 0.8 marks a prompt answered near-identically

Samples = Mapping[str, Mapping[str, Sequence[str]]]  # prompt id -> model -> its sampled texts on that prompt
NAN = float("nan")


def pair_label(a: str, b: str) -> str:
    """How a pair of models is named in the dict form and among metrics (as the prompt-set aggregate does)."""
    return f"{a} vs {b}"


@dataclass(frozen=True)
class PromptHomogeneity:
    """One prompt: per model the texts compared and the intra-model similarity (NaN: fewer than two), per pair
    of models (in model order) the inter-model similarity (NaN: a side without text). Models without an entry
    for the prompt are absent from `samples` and `intra`."""

    id: str
    samples: dict[str, int]
    intra: dict[str, float]
    inter: dict[tuple[str, str], float]


@dataclass(frozen=True)
class ModelCounts:
    """How many prompts a model's intra similarity rests on, and why others were left out."""

    prompts: int  # prompts with an entry for the model
    measured: int  # of those, prompts with two texts or more: intra defined
    too_few: int  # prompts with an entry but fewer than two non-empty texts: intra undefined
    missing: int  # prompts without an entry for the model
    empty_texts: int  # empty or whitespace-only texts left out, over all prompts


@dataclass(frozen=True)
class HomogeneityResult:
    """Intra- and inter-model similarity of N models over a set of prompts.

    `intra[m]`: mean over prompts of m's intra-model similarity; `inter[(a, b)]` (a before b in `models`): mean
    over prompts of their inter-model similarity; `share_above[m]`: share of m's measured prompts whose intra
    similarity exceeds `threshold`. Each an `Estimate` (mean, 95% bootstrap low/high, n prompts).
    """

    models: list[str]
    threshold: float
    prompts: list[PromptHomogeneity]
    intra: dict[str, Estimate]
    inter: dict[tuple[str, str], Estimate]
    share_above: dict[str, Estimate]
    counts: dict[str, ModelCounts]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for i, a in enumerate(self.models) for b in self.models[i + 1 :]]

    @property
    def matrix(self) -> np.ndarray:
        """[models, models]: intra means on the diagonal, inter means off it (symmetric); NaN where unmeasured."""
        index = {m: i for i, m in enumerate(self.models)}
        out = np.full((len(self.models), len(self.models)), NAN)
        for model, estimate in self.intra.items():
            out[index[model], index[model]] = estimate.mean
        for (a, b), estimate in self.inter.items():
            out[index[a], index[b]] = out[index[b], index[a]] = estimate.mean
        return out

    def similarity(self, a: str, b: str) -> Estimate:
        """intra[a] when a == b, else the inter estimate of the pair in either order."""
        if a == b:
            return self.intra[a]
        return self.inter[(a, b)] if (a, b) in self.inter else self.inter[(b, a)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN -> None):

        {"models", "threshold", "n_prompts", "matrix": [[...]],
         "intra": {model: {"mean", "low", "high", "n"}}, "share_above": {model: {...}},
         "inter": [{"a", "b", "mean", "low", "high", "n"}],
         "counts": {model: {"prompts", "measured", "too_few", "missing", "empty_texts"}},
         "prompts": [{"id", "samples": {model: n}, "intra": {model: v}, "inter": {"a vs b": v}}]}
        """
        data = {
            "models": list(self.models),
            "threshold": self.threshold,
            "n_prompts": len(self.prompts),
            "matrix": self.matrix.tolist(),
            "intra": {m: e.to_dict() for m, e in self.intra.items()},
            "share_above": {m: e.to_dict() for m, e in self.share_above.items()},
            "inter": [{"a": a, "b": b, **self.inter[(a, b)].to_dict()} for a, b in self.pairs],
            "counts": {m: asdict(c) for m, c in self.counts.items()},
            "prompts": [
                {
                    "id": p.id,
                    "samples": dict(p.samples),
                    "intra": dict(p.intra),
                    "inter": {pair_label(a, b): v for (a, b), v in p.inter.items()},
                }
                for p in self.prompts
            ],
        }
        result: dict[str, Any] = finite(data)
        return result


def _is_empty(text: str) -> bool:
    return not text.strip()


def _checked(samples: Samples, models: Sequence[str] | None, threshold: float) -> list[str]:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        raise ModescopeError(f"threshold must be a finite number such as 0.8, got {threshold!r}")
    for prompt_id, by_model in samples.items():
        for model, texts in by_model.items():
            if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
                raise ModescopeError(
                    f"prompt {prompt_id!r}, model {model!r}: give a list of texts (strings), got {texts!r:.80}"
                )
    found = list(models) if models is not None else list(dict.fromkeys(m for row in samples.values() for m in row))
    if not found or len(set(found)) != len(found):
        raise ModescopeError(f"homogeneity needs one or more models, each once (got {found!r})")
    return found


def _vectors(samples: Samples, models: Sequence[str], embedder: Embedder | None) -> dict[str, np.ndarray]:
    """Each distinct non-empty text of the listed models, embedded once (in one call of the embedder)."""
    texts = list(
        dict.fromkeys(t for row in samples.values() for m in models for t in row.get(m, ()) if not _is_empty(t))
    )
    if not texts:
        return {}
    return dict(zip(texts, embed(texts, embedder), strict=True))


def _cross(first: np.ndarray, second: np.ndarray) -> float:
    """Mean cosine over all pairs of a row of `first` [n, d] and a row of `second` [k, d]; NaN if one is empty."""
    if len(first) == 0 or len(second) == 0:
        return NAN
    return float(np.clip((first @ second.T).mean(), -1.0, 1.0))  # rounding can step just past 1


def _prompt(
    prompt_id: str, row: Mapping[str, Sequence[str]], models: Sequence[str], vectors: Mapping[str, np.ndarray]
) -> PromptHomogeneity:
    present = [m for m in models if m in row]
    stacked = {m: [vectors[t] for t in row[m] if not _is_empty(t)] for m in present}
    matrices = {m: np.array(v) if v else np.zeros((0, 0)) for m, v in stacked.items()}  # [n, d]
    intra = {m: mean_pairwise_cosine(matrices[m]) for m in present}  # NaN for fewer than two
    inter = {
        (a, b): _cross(matrices[a], matrices[b]) if a in matrices and b in matrices else NAN
        for i, a in enumerate(models)
        for b in models[i + 1 :]
    }
    return PromptHomogeneity(prompt_id, {m: len(stacked[m]) for m in present}, intra, inter)


def homogeneity(
    samples: Samples,
    embedder: Embedder | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    models: Sequence[str] | None = None,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> HomogeneityResult:
    """Intra- and inter-model similarity of the models' samples over the prompts.

    samples: per prompt id, per model, that model's sampled texts on the prompt, e.g.
    {"q1": {"base": ["...", "..."], "tuned": ["...", "..."]}, ...}. models: which models and in what order
    (default: every model named, in order of first appearance); a listed model absent from a prompt counts as
    missing there. embedder: maps texts to unit rows [n, d] (default all-MiniLM-L6-v2; not loaded when there is
    no text). threshold: the intra similarity a prompt must exceed to count in `share_above`. The intervals are
    percentile bootstraps over prompts (`confidence`, `resamples`, `seed`), so the same input gives the same
    result. A single model gives its intra similarity only (a 1 x 1 matrix).
    """
    names = _checked(samples, models, threshold)
    vectors = _vectors(samples, names, embedder)
    prompts = [_prompt(str(prompt_id), row, names, vectors) for prompt_id, row in samples.items()]
    intra_columns = [np.array([p.intra.get(m, NAN) for p in prompts], dtype=np.float64) for m in names]
    share_columns = [np.where(np.isfinite(c), (c > threshold).astype(np.float64), NAN) for c in intra_columns]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    inter_columns = [np.array([p.inter[pair] for p in prompts], dtype=np.float64) for pair in pairs]
    estimates = bootstrap_means([*intra_columns, *share_columns, *inter_columns], confidence, resamples, seed)
    k = len(names)
    counts = {}
    for m, column in zip(names, intra_columns, strict=True):
        entered = sum(m in p.samples for p in prompts)
        measured = int(np.isfinite(column).sum())
        empty = sum(_is_empty(t) for row in samples.values() for t in row.get(m, ()))
        counts[m] = ModelCounts(entered, measured, entered - measured, len(prompts) - entered, empty)
    return HomogeneityResult(
        models=names,
        threshold=float(threshold),
        prompts=prompts,
        intra=dict(zip(names, estimates[:k], strict=True)),
        inter=dict(zip(pairs, estimates[2 * k :], strict=True)),
        share_above=dict(zip(names, estimates[k : 2 * k], strict=True)),
        counts=counts,
    )
