"""Attractor experiments: perturb a greedy completion, regenerate it greedily, and see whether it comes back.

The mainline is the temperature-0 completion of the prompt. A perturbation replaces mainline tokens from some
position with other tokens (a user's text edit, the k-th most likely alternative token, or a short sampled
detour); every perturbed prefix is then continued greedily, all of them in one batched decode call. A
continuation reconverges when, from some token on, its text is word for word a piece of the mainline's text
after the perturbation point: the model found its way back. The basin share is the fraction of
perturbations that reconverge.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from modescope.engine.decode import Continuation, TokenRecord, generate, generate_many
from modescope.errors import ModescopeError
from modescope.models.base import Backend, ChatPrompt

Criterion = Literal["sentence", "edit", "embedding"]
MIN_MATCH_CHARS = 12  # a rejoined piece must be this long (or be the whole rest of the text) to count
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Edit:
    """Replace characters start..end (end exclusive) of the mainline completion's text with `text`."""

    start: int
    end: int
    text: str

    @classmethod
    def parse(cls, spec: str) -> Edit:
        """Parse 'I:J:TEXT' (TEXT may contain colons)."""
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise ModescopeError(f"edit {spec!r} is not I:J:TEXT with character offsets I <= J")
        return cls(int(parts[0]), int(parts[1]), parts[2])


@dataclass
class Perturbation:
    kind: str  # "edit", "swap" or "detour"
    position: int  # mainline token index where the perturbation starts
    inserted: list[int]  # tokens that take the place of mainline tokens from `position`
    label: str


@dataclass
class PerturbedRun:
    """One perturbation, its greedy continuation, and whether and where it came back."""

    perturbation: Perturbation
    inserted_text: str
    continuation: Continuation
    reconvergence_tokens: int | None  # continuation tokens before it rejoins the mainline; None: never
    reconvergence_chars: int | None
    divergent_confidence: float  # mean raw probability of the continuation's tokens before it rejoins
    last_sentence_equal: bool
    edit_similarity: float  # 1 - Levenshtein distance / longer length, of the two last sentences
    converged: bool  # the ending converged, by the experiment's criterion
    embedding_cosine: float | None = None  # of the two last sentences, with the embedding criterion

    @property
    def reconverged(self) -> bool:
        return self.reconvergence_tokens is not None


@dataclass
class AttractorResult:
    """One model's mainline, perturbed runs and aggregates."""

    model: str
    mainline: Continuation
    runs: list[PerturbedRun]
    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> Capabilities.metadata()

    @property
    def basin_share(self) -> float:
        """Share of perturbations whose continuation rejoins the mainline."""
        return sum(r.reconverged for r in self.runs) / len(self.runs) if self.runs else float("nan")

    @property
    def ending_share(self) -> float:
        """Share of perturbations whose ending converged (by the experiment's criterion)."""
        return sum(r.converged for r in self.runs) / len(self.runs) if self.runs else float("nan")

    @property
    def median_distance(self) -> float:
        """Median tokens to reconvergence over the runs that reconverge (NaN when none does)."""
        distances = [r.reconvergence_tokens for r in self.runs if r.reconvergence_tokens is not None]
        return float(statistics.median(distances)) if distances else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "mainline": self.mainline.text,
            "basin_share": self.basin_share,
            "ending_share": self.ending_share,
            "median_distance_tokens": self.median_distance,
            "capabilities": self.capabilities,
            "runs": [
                {
                    "kind": r.perturbation.kind,
                    "label": r.perturbation.label,
                    "position": r.perturbation.position,
                    "inserted": r.inserted_text,
                    "continuation": r.continuation.text,
                    "reconvergence_tokens": r.reconvergence_tokens,
                    "reconvergence_chars": r.reconvergence_chars,
                    "divergent_confidence": r.divergent_confidence,
                    "last_sentence_equal": r.last_sentence_equal,
                    "edit_similarity": r.edit_similarity,
                    "converged": r.converged,
                    "embedding_cosine": r.embedding_cosine,
                }
                for r in self.runs
            ],
        }


@dataclass
class AttractorPlan:
    """Which perturbations to run; the same plan is applied to every model."""

    edits: list[Edit] = field(default_factory=list)
    swap_positions: int = 5  # evenly spaced mainline positions for token swaps (0 = none)
    positions: list[int] | None = None  # explicit swap positions instead
    alternatives: int = 2  # swap in the k-th most likely token for k = 2..alternatives
    detour_positions: list[int] = field(default_factory=list)
    detour_tokens: int = 3
    detour_temperature: float = 1.0
    seed: int = 0


def last_sentence(text: str) -> str:
    pieces = [p.strip() for p in _SENTENCE_END.split(text.strip()) if p.strip()]
    return pieces[-1] if pieces else ""


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein(a, b) / max(len(a), len(b)): 1 for equal strings, 0 for nothing in common."""
    if not a and not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b))


def _text(tokens: Sequence[TokenRecord]) -> str:
    return "".join(t.text for t in tokens if not t.special)


def reconvergence(continuation: Continuation, reference: str) -> int | None:
    """The first continuation token from which the rest of its text is a piece of `reference` (the mainline's
    text from the perturbation on): at least MIN_MATCH_CHARS long, or at least two tokens that end exactly
    where the mainline ends (suffix-aligned)."""
    tokens = continuation.tokens
    for start in range(len(tokens)):
        rest = _text(tokens[start:])
        if not rest or rest not in reference:
            continue
        if len(rest) >= MIN_MATCH_CHARS or (reference.endswith(rest) and len(tokens) - start >= 2):
            return start
    return None


def _check_plan(plan: AttractorPlan, backend: Backend, mainline: Continuation) -> None:
    if plan.alternatives < 2 or plan.alternatives > backend.vocab.size:
        raise ModescopeError(f"--alternatives must be between 2 and the vocabulary size {backend.vocab.size}")
    if plan.swap_positions < 0:
        raise ModescopeError("--swap-positions must be 0 or more")
    length = len(mainline.tokens)
    for p in [*(plan.positions or []), *plan.detour_positions]:
        if not 0 <= p < length:
            raise ModescopeError(f"position {p} is beyond the mainline's {length} tokens; use 0..{length - 1}")
    for edit in plan.edits:
        if not 0 <= edit.start <= edit.end <= len(mainline.text):
            raise ModescopeError(
                f"edit {edit.start}:{edit.end} is outside the completion's {len(mainline.text)} characters"
            )


def _swap_positions(plan: AttractorPlan, length: int) -> list[int]:
    if plan.positions is not None:
        return plan.positions
    count = min(plan.swap_positions, max(length - 1, 0))
    if count == 0:
        return []
    return sorted({round((k + 1) * (length - 1) / (count + 1)) for k in range(count)})


def _edit_perturbation(backend: Backend, mainline: Continuation, edit: Edit) -> Perturbation:
    """Keep the mainline tokens that end at or before the edit; re-encode the rest of the edited text."""
    kept, end = 0, 0
    for record in mainline.tokens:
        width = len(record.text) if not record.special else 0
        if end + width > edit.start:
            break
        kept, end = kept + 1, end + width
    text = mainline.text[end : edit.start] + edit.text
    inserted = backend.encode(text, add_special_tokens=False) if text else []
    return Perturbation("edit", kept, inserted, f"edit {edit.start}:{edit.end} → {edit.text!r}")


def plan_perturbations(
    backend: Backend, prompt_ids: list[int], mainline: Continuation, plan: AttractorPlan
) -> list[Perturbation]:
    """The perturbations of `plan` on this model's mainline."""
    _check_plan(plan, backend, mainline)
    found = [_edit_perturbation(backend, mainline, e) for e in plan.edits]
    for position in _swap_positions(plan, len(mainline.tokens)):
        top = mainline.tokens[position].top
        for k in range(2, plan.alternatives + 1):
            if k <= len(top):
                token = top[k - 1].id
                found.append(Perturbation("swap", position, [token], f"swap@{position} k={k} {top[k - 1].text!r}"))
    for position in plan.detour_positions:
        prefix = prompt_ids + [t.id for t in mainline.tokens[:position]]
        (detour,) = generate(
            backend, prefix, max_tokens=plan.detour_tokens, temperature=plan.detour_temperature, seed=plan.seed
        )
        found.append(Perturbation("detour", position, [t.id for t in detour.tokens], f"detour@{position}"))
    return found


def run_attractor(
    backend: Backend,
    prompt: str | ChatPrompt,
    plan: AttractorPlan,
    max_tokens: int = 48,
    criterion: Criterion = "sentence",
    threshold: float = 0.9,
    embedder: Any = None,
) -> AttractorResult:
    """The mainline, every perturbation of the plan regenerated greedily in one batch, and the metrics.

    The ending converged when the last sentences are equal ("sentence"), or their normalized edit similarity
    ("edit") or embedding cosine ("embedding", all-MiniLM-L6-v2 unless `embedder` is given) is at least
    `threshold`."""
    if max_tokens < 2:
        raise ModescopeError("--max-tokens must be at least 2")
    backend.capabilities.require(
        "an attractor experiment (it swaps in the mainline's alternatives)", backend.name, "top-k"
    )
    prompt_ids = backend.prompt_ids(prompt)
    (mainline,) = generate(backend, prompt_ids, max_tokens=max_tokens, top_k_alternatives=max(10, plan.alternatives))
    perturbations = plan_perturbations(backend, prompt_ids, mainline, plan)
    ids = [t.id for t in mainline.tokens]
    prefixes = [prompt_ids + ids[: p.position] + p.inserted for p in perturbations]
    budgets = [max(1, len(ids) - p.position - len(p.inserted)) for p in perturbations]
    continuations = generate_many(backend, prefixes, max_tokens=max(budgets), top_k_alternatives=1) if prefixes else []
    runs = [
        _measure(backend, mainline, p, _truncated(c, budget), criterion, threshold, embedder)
        for p, c, budget in zip(perturbations, continuations, budgets, strict=True)
    ]
    return AttractorResult(backend.name, mainline, runs, {backend.name: backend.capabilities.metadata()})


def _truncated(continuation: Continuation, budget: int) -> Continuation:
    """The continuation cut to its own token budget (the batch ran to the longest budget)."""
    if len(continuation.tokens) <= budget:
        return continuation
    return Continuation(continuation.tokens[:budget], "length")


def _cosine(embedder: Any, a: str, b: str) -> float:
    from modescope.metrics.diversity import embed

    vectors = embed([a, b], embedder)
    return float(vectors[0] @ vectors[1])


def _measure(
    backend: Backend,
    mainline: Continuation,
    perturbation: Perturbation,
    continuation: Continuation,
    criterion: Criterion,
    threshold: float,
    embedder: Any,
) -> PerturbedRun:
    reference = _text(mainline.tokens[perturbation.position :])
    point = reconvergence(continuation, reference)
    divergent = continuation.tokens[: point if point is not None else len(continuation.tokens)]
    confidence = statistics.fmean(math.exp(t.raw_logprob) for t in divergent) if divergent else float("nan")
    inserted_text = backend.decode(perturbation.inserted)
    perturbed_text = _text(mainline.tokens[: perturbation.position]) + inserted_text + continuation.text
    mine, theirs = last_sentence(perturbed_text), last_sentence(mainline.text)
    similarity = edit_similarity(mine, theirs)
    cosine = _cosine(embedder, mine, theirs) if criterion == "embedding" else None
    score = {"sentence": float(mine == theirs), "edit": similarity, "embedding": cosine or 0.0}[criterion]
    converged = score >= (1.0 if criterion == "sentence" else threshold)
    return PerturbedRun(
        perturbation,
        inserted_text,
        continuation,
        point,
        len(_text(continuation.tokens[:point])) if point is not None else None,
        confidence,
        mine == theirs,
        similarity,
        converged,
        cosine,
    )


def attractor_experiment(
    models: Sequence[Backend],
    prompt: str | ChatPrompt,
    plan: AttractorPlan,
    max_tokens: int = 48,
    criterion: Criterion = "sentence",
    threshold: float = 0.9,
    embedder: Any = None,
) -> list[AttractorResult]:
    """The same plan on every model (each model perturbs its own mainline)."""
    if criterion not in ("sentence", "edit", "embedding"):
        raise ModescopeError(f"unknown ending criterion {criterion!r}; use sentence, edit or embedding")
    if len({m.name for m in models}) != len(models):
        raise ModescopeError("a model is listed twice; name each model once")
    return [run_attractor(m, prompt, plan, max_tokens, criterion, threshold, embedder) for m in models]
