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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from modescope.engine.decode import Continuation, TokenRecord, generate, generate_many
from modescope.errors import ModescopeError
from modescope.models.base import Backend, ChatPrompt, require_one_prompt
from modescope.results import NotebookResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

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


def _check_settings(plan: AttractorPlan, max_tokens: int, criterion: str) -> None:
    """What can be checked before any model runs (and before one is loaded)."""
    if criterion not in get_args(Criterion):
        raise ModescopeError(f"unknown ending criterion {criterion!r}; use sentence, edit or embedding")
    if max_tokens < 2:
        raise ModescopeError(f"max tokens must be at least 2 (got {max_tokens})")
    if plan.alternatives < 2:
        raise ModescopeError(
            f"alternatives must be at least 2, the first swap being the 2nd likeliest token (got {plan.alternatives})"
        )
    if plan.swap_positions < 0:
        raise ModescopeError(f"swap positions must be 0 or more (got {plan.swap_positions})")
    if plan.detour_tokens < 1:
        raise ModescopeError(f"detour tokens must be at least 1 (got {plan.detour_tokens})")
    for p in [*(plan.positions or []), *plan.detour_positions]:
        if p < 0:
            raise ModescopeError(f"position {p} is negative; mainline positions count tokens from 0")
    for edit in plan.edits:
        if not 0 <= edit.start <= edit.end:
            raise ModescopeError(f"edit {edit.start}:{edit.end} needs character offsets 0 <= I <= J")


def _check_model(plan: AttractorPlan, backend: Backend) -> None:
    """What can be checked once the model is loaded, before it generates anything."""
    if plan.alternatives > backend.vocab.size:
        raise ModescopeError(
            f"alternatives must be between 2 and the vocabulary size {backend.vocab.size} of {backend.name} "
            f"(got {plan.alternatives})"
        )
    backend.capabilities.require(
        "an attractor experiment (it swaps in the mainline's alternatives)", backend.name, "top-k"
    )


def _check_plan(plan: AttractorPlan, backend: Backend, mainline: Continuation) -> None:
    _check_model(plan, backend)
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
    _check_settings(plan, max_tokens, criterion)
    _check_model(plan, backend)
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
    _check_settings(plan, max_tokens, criterion)
    if len({m.name for m in models}) != len(models):
        raise ModescopeError("a model is listed twice; name each model once")
    for model in models:  # refuse a bad plan before the first model spends time generating
        _check_model(plan, model)
    return [run_attractor(m, prompt, plan, max_tokens, criterion, threshold, embedder) for m in models]


RUN_COLUMNS = [
    "model",
    "kind",
    "label",
    "position",
    "inserted",
    "continuation",
    "reconverged",
    "reconvergence_tokens",
    "reconvergence_chars",
    "divergent_confidence",
    "last_sentence_equal",
    "edit_similarity",
    "converged",
    "embedding_cosine",
]


@dataclass
class AttractorResults(NotebookResult):
    """Every model's attractor experiment on one prompt, as `attractor` returns it.

    Iterate over it (or index it by position or model name) for each model's `AttractorResult`.
    """

    prompt: str  # the prompt's text (a chat prompt's user message)
    results: list[AttractorResult]

    frame_height: ClassVar[int] = 720

    def __iter__(self) -> Iterator[AttractorResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, key: int | str) -> AttractorResult:
        if isinstance(key, int):
            return self.results[key]
        for result in self.results:
            if result.model == key:
                return result
        raise KeyError(f"no model {key!r} here; the models are {', '.join(r.model for r in self.results)}")

    def to_dict(self) -> dict[str, Any]:
        """The CLI's --json: the prompt, and per model its mainline, aggregates and every run."""
        return {"prompt": self.prompt, "models": [r.to_dict() for r in self.results]}

    def to_pandas(self) -> pd.DataFrame:
        """One row per (model, perturbation), columns as in `RUN_COLUMNS`: the perturbation (kind, label, mainline
        token `position`, `inserted` text), the greedy `continuation` after it, whether and after how many
        tokens / characters it rejoins the mainline (`reconvergence_tokens` is missing when it never does), the
        mean probability of its tokens before rejoining (`divergent_confidence`), and the ending measures
        (`last_sentence_equal`, `edit_similarity` in [0, 1], `converged`, `embedding_cosine`)."""
        import pandas as pd

        rows = [
            {"model": result.model, "reconverged": run.reconverged} | run_dict
            for result in self.results
            for run, run_dict in zip(result.runs, result.to_dict()["runs"], strict=True)
        ]
        frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
        # whole token and character counts, missing where the continuation never rejoins
        return frame.astype({"reconvergence_tokens": "Int64", "reconvergence_chars": "Int64"})

    def to_html(self) -> str:
        """The page `modescope attractor --html` writes: per model, the mainline and every perturbed row."""
        from modescope.viz.attractor_html import attractor_page

        return attractor_page(self.results, self.prompt)

    def plot(self) -> Figure:
        """Basin share per model (bars) and tokens to reconvergence per model (strip + box)."""
        from modescope.viz.attractor_plot import attractor_figure
        from modescope.viz.figures import detached

        return detached(attractor_figure(self.results))


def attractor(
    models: Backend | str | Sequence[Backend | str],
    prompt: str | ChatPrompt,
    *,
    edits: Sequence[str | Edit] | str | Edit = (),
    swap_positions: int = 5,
    positions: Sequence[int] | int | None = None,
    alternatives: int = 3,
    detours: Sequence[int] | int = (),
    detour_tokens: int = 3,
    max_tokens: int = 48,
    ending: Criterion = "sentence",
    threshold: float = 0.9,
    seed: int = 0,
    embedder: Any = None,
) -> AttractorResults:
    """Perturb each model's greedy completion, regenerate greedily, and measure whether it comes back.

    The mainline is the temperature-0 completion of `max_tokens` tokens. Each perturbation (a text edit, a swap
    to the k-th likeliest token, a short sampled detour) is continued greedily, all of a model's in one batch.
    A continuation rejoins when its text becomes word for word the mainline's again; the basin share is the
    fraction of perturbations that rejoin (a probability), the distance the tokens it takes to rejoin.

    Args:
        models: One model or a list: loaded models (`ms.load`) or names to load (a preset such as
            "gemma-3-270m", a folder, a .gguf file, a cached HF id, NAME@URL).
        prompt: The text to complete, or a `ChatPrompt` for a chat model.
        edits: Text edits of the mainline, each "I:J:TEXT" (or an `Edit`): characters I..J replaced by TEXT.
        swap_positions: Evenly spaced mainline positions (tokens) for swaps; 0 for none.
        positions: Swap at these mainline token indices instead.
        alternatives: Swap in the k-th likeliest token for k = 2..alternatives at each swap position.
        detours: Mainline token indices where a short sampled detour is inserted.
        detour_tokens: Tokens sampled per detour.
        max_tokens: Length of the mainline, in tokens (at least 2).
        ending: When an ending counts as converged: "sentence" (equal last sentences), "edit" (their edit
            similarity reaches `threshold`) or "embedding" (their embedding cosine reaches `threshold`).
        threshold: Similarity threshold in [0, 1] for `ending` "edit" or "embedding".
        seed: Seed of the sampled detours.
        embedder: A sentence-transformers model for `ending="embedding"` (default all-MiniLM-L6-v2).

    Returns:
        An `AttractorResults`: per model the mainline and every perturbed run (rejoined after how many tokens
        and characters, the mean probability of its divergent tokens, ending measures), and the basin share,
        ending share (probabilities) and median distance (tokens).

    Example:
        >>> import modescope as ms
        >>> result = ms.attractor(["gemma-3-270m", "smollm2-135m-instruct"], "Q: Are bugs real?\nA:")
        >>> result.to_pandas().groupby("model")["reconverged"].mean()
    """
    from modescope.models import backends as resolve

    require_one_prompt(prompt, "attractor", "attractor")
    if isinstance(edits, str | Edit):  # one edit given bare, not in a list: not its characters one by one
        edits = [edits]
    plan = AttractorPlan(
        edits=[e if isinstance(e, Edit) else Edit.parse(e) for e in edits],
        swap_positions=swap_positions,
        positions=_indices(positions, "positions") if positions is not None else None,
        alternatives=alternatives,
        detour_positions=_indices(detours, "detours"),
        detour_tokens=detour_tokens,
        seed=seed,
    )
    _check_settings(plan, max_tokens, ending)  # before any model loads
    loaded = resolve(models)
    results = attractor_experiment(loaded, prompt, plan, max_tokens, ending, threshold, embedder)
    return AttractorResults(prompt if isinstance(prompt, str) else prompt.user, results)


def _indices(values: Sequence[int] | int, what: str) -> list[int]:
    """Token indices given as a list (or one bare int), checked to be whole numbers."""
    items = [values] if isinstance(values, int) else list(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ModescopeError(f"{what} are mainline token indices (whole numbers), not {values!r}")
    return items
