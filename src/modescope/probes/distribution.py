"""Exact probabilities of whole answer sets (every integer 0..100, a list of choices).

The mass of a candidate is P(the continuation spells optional leading whitespace, then exactly the
candidate, then a boundary), where a boundary is a next character that is not a word character, or an
EOS/special token. It is summed over every token sequence that spells the text (or only the canonical
encoding with tokenizations="canonical"), by expanding the tree of those sequences with the prefix-tree
engine: each tree node costs one token position, and the prompt is encoded once.

A token may spell the end of a candidate and the boundary at once ("4," after "4" is the same event as "4"
then ","); such straddling tokens are counted too, so in "all" mode the mass is exactly the probability of the
textual event. When one candidate extends another past a boundary ("New" and "New York"), the shorter
one's mass excludes the longer one's, so outcomes stay disjoint and their masses add up to the coverage.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from modescope import metrics
from modescope.engine.tree import Child, ExpansionStats, Node, PrefixTree
from modescope.errors import ModescopeError
from modescope.jsonsafe import finite_json
from modescope.models.base import Backend, ChatPrompt
from modescope.models.vocab import Vocabulary, starts_with_boundary

if TYPE_CHECKING:
    import pandas as pd

LeadingSpace = Literal["optional", "required", "none"]
Tokenizations = Literal["all", "canonical"]
LEADING_VARIANTS: dict[str, tuple[str, ...]] = {"optional": ("", " "), "required": (" ",), "none": ("",)}
MAX_TREE_NODES = 500_000


@dataclass(frozen=True)
class Target:
    """One spelling to look for: a candidate with one leading-whitespace variant."""

    candidate: int
    text: bytes


@dataclass
class Expansion:
    """What happens at a tree node: children to expand, candidates it completes, straddling tokens."""

    children: list[Child] = field(default_factory=list)
    terminals: list[int] = field(default_factory=list)  # targets whose text the node spells exactly
    straddles: list[tuple[int, int]] = field(default_factory=list)  # (token, target): the token ends it


class _AllTokenizations:
    """Plans the tree of every token sequence that spells a prefix of some target. Node data: its bytes."""

    def __init__(self, targets: list[Target], vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.index = {t.text: k for k, t in enumerate(targets)}
        self.sorted_texts = sorted(self.index)
        self.root: Any = b""

    def _extending(self, prefix: bytes) -> list[bytes]:
        start = bisect.bisect_left(self.sorted_texts, prefix)
        found = []
        for text in self.sorted_texts[start:]:
            if not text.startswith(prefix):
                break
            found.append(text)
        return found

    @cache  # noqa: B019 - one planner per probe run; the cache dies with it
    def expansion(self, prefix: bytes) -> Expansion:
        result = Expansion()
        children: dict[int, bytes] = {}
        for text in self._extending(prefix):
            rest = text[len(prefix) :]
            if not rest:
                result.terminals.append(self.index[text])
                continue
            for end in range(1, len(rest) + 1):
                for token in self.vocab.ids_with_bytes(rest[:end]):
                    children[token] = prefix + rest[:end]
            for token, data in self.vocab.ids_starting_with(rest):
                if len(data) > len(rest) and starts_with_boundary(data[len(rest) :]) is True:
                    result.straddles.append((token, self.index[text]))
        result.children = [Child(token, data) for token, data in children.items()]
        return result

    def count_nodes(self) -> int:
        """Tree nodes below the root: token paths, counted per byte prefix so the count itself stays cheap."""

        @cache
        def below(prefix: bytes) -> int:
            return sum(1 + below(c.data) for c in self.expansion(prefix).children)

        return below(self.root)


class _CanonicalTokenization:
    """Plans the tree of each target's canonical encoding. Node data: its token path."""

    def __init__(self, targets: list[Target], backend: Backend) -> None:
        self.root: Any = ()
        self.paths: list[tuple[int, ...]] = []
        self.plan: dict[tuple[int, ...], Expansion] = {(): Expansion()}
        for k, target in enumerate(targets):
            path = tuple(backend.encode(target.text.decode("utf-8"), add_special_tokens=False))
            spelled = b"".join(backend.vocab.token_bytes[t] for t in path)
            if spelled != target.text:
                raise ModescopeError(
                    f"the tokenizer of '{backend.name}' does not spell {target.text.decode()!r} on its own "
                    "(it adds or changes characters); use --tokenizations all"
                )
            self.paths.append(path)
            for depth in range(len(path)):
                parent = self.plan[path[:depth]]
                if path[: depth + 1] not in self.plan:
                    self.plan[path[: depth + 1]] = Expansion()
                    parent.children.append(Child(path[depth], path[: depth + 1]))
            self.plan[path].terminals.append(k)

    def expansion(self, path: tuple[int, ...]) -> Expansion:
        return self.plan[path]

    def count_nodes(self) -> int:
        return len(self.plan) - 1


def make_targets(candidates: Sequence[str], leading_space: LeadingSpace) -> list[Target]:
    """Every (candidate, whitespace variant) spelling, refusing two spellings that are the same text."""
    if leading_space not in LEADING_VARIANTS:
        raise ModescopeError(f"unknown leading-space mode '{leading_space}'; use optional, required or none")
    targets: list[Target] = []
    owner: dict[bytes, int] = {}
    for k, candidate in enumerate(candidates):
        for prefix in LEADING_VARIANTS[leading_space]:
            text = (prefix + candidate).encode("utf-8")
            if text in owner:
                other = candidates[owner[text]]
                raise ModescopeError(
                    f"candidates {other!r} and {candidate!r} both spell {text.decode()!r} with optional leading "
                    "space; use --leading-space none or remove one"
                )
            owner[text] = k
            targets.append(Target(k, text))
    return targets


def _nested_in(
    targets: list[Target], planner: _AllTokenizations | _CanonicalTokenization, vocab: Vocabulary
) -> list[int | None]:
    """For each target, the closest other target whose event contains it (None if none does).

    'New York' followed by a boundary is also 'New' followed by a boundary (the space), so 'New' contains it.
    In canonical mode the containment is by token path: the shorter path, then a boundary token.
    """
    parents: list[int | None] = []
    if isinstance(planner, _CanonicalTokenization):
        by_path = {path: k for k, path in enumerate(planner.paths)}
        boundary = set(vocab.boundary_ids)
        for path in planner.paths:
            cuts = [j for j in range(1, len(path)) if path[:j] in by_path and path[j] in boundary]
            parents.append(by_path[path[: cuts[-1]]] if cuts else None)
        return parents
    for target in targets:
        text = target.text
        cuts = [j for j in range(1, len(text)) if text[:j] in planner.index and starts_with_boundary(text[j:]) is True]
        parents.append(planner.index[text[: cuts[-1]]] if cuts else None)
    return parents


def _disjoint_masses(targets: list[Target], masses: np.ndarray, parents: list[int | None]) -> np.ndarray:
    """Subtract from each target the mass of the targets its event contains (their closest container)."""
    result = masses.copy()
    for k, parent in enumerate(parents):
        if parent is not None:
            result[parent] -= masses[k]
    return np.maximum(result, 0.0)


@dataclass
class Outcome:
    text: str
    mass: float  # absolute probability of the outcome after the prompt
    prob: float  # probability normalized within the candidate set
    logmass: float  # natural log of `mass`


@dataclass
class ModelDistribution:
    """One model's distribution over the candidate set."""

    model: str
    outcomes: list[Outcome]
    coverage: float  # total mass of the set: 1 - coverage is the mass of every other continuation
    entropy_bits: float
    normalized_entropy: float  # entropy / log2(n): 1 for uniform
    effective_outcomes: float  # 2^entropy
    top1: str
    top1_share: float
    chi_square: float  # Pearson chi-square divergence from uniform
    stats: ExpansionStats

    def logprobs(self) -> np.ndarray:
        return metrics.normalize_log(np.array([o.logmass for o in self.outcomes]))


@dataclass
class Comparison:
    a: str
    b: str
    kl_ab_bits: float
    kl_ba_bits: float
    js_bits: float
    tv: float
    spearman: float


@dataclass
class DistributionResult:
    """Every model's distribution over one candidate set, and each pair's divergences."""

    prompt: str
    candidates: list[str]
    leading_space: str
    tokenizations: str
    results: list[ModelDistribution]
    comparisons: list[Comparison]
    temperature: float = 1.0  # per-token temperature applied along every path

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: prompt, per-model results (outcomes in candidate order), pair comparisons."""
        results = []
        for r in self.results:
            row = {k: v for k, v in asdict(r).items() if k not in ("outcomes", "stats")}
            row["outcomes"] = [{"text": o.text, "mass": o.mass, "prob": o.prob} for o in r.outcomes]
            row["stats"] = asdict(r.stats) | {"minimum_tokens": r.stats.minimum_tokens}
            results.append(row)
        return {
            "prompt": self.prompt,
            "leading_space": self.leading_space,
            "tokenizations": self.tokenizations,
            "temperature": self.temperature,
            "results": results,
            "comparisons": [asdict(c) for c in self.comparisons],
        }

    def to_json(self) -> str:
        """`to_dict` as strict JSON: a value that is not a finite number (a Spearman correlation of a constant
        distribution, say) is written as null."""
        return finite_json(self.to_dict())

    def to_pandas(self) -> pd.DataFrame:
        """One row per (model, outcome): model, text, mass, prob."""
        import pandas as pd

        return pd.DataFrame(
            [
                {"model": r.model, "text": o.text, "mass": o.mass, "prob": o.prob}
                for r in self.results
                for o in r.outcomes
            ]
        )

    def result(self, model: str) -> ModelDistribution:
        return next(r for r in self.results if r.model == model)


def check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ModescopeError(f"temperature must be a positive number (got {temperature}); 1 leaves the model as is")


def tempered(temperature: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-token temperature transform of log-probabilities (None at temperature 1)."""
    if temperature == 1.0:
        return None
    return lambda logprobs: torch.log_softmax(logprobs / temperature, dim=-1)


class AnswerTree:
    """A candidate set spelled in one model's vocabulary: which tree nodes to expand, and how the node
    probabilities add up to each candidate's mass."""

    def __init__(
        self, backend: Backend, candidates: Sequence[str], leading_space: LeadingSpace, tokenizations: Tokenizations
    ) -> None:
        if tokenizations not in ("all", "canonical"):
            raise ModescopeError(f"unknown tokenizations mode '{tokenizations}'; use all or canonical")
        self.candidates = list(candidates)
        self.targets = make_targets(candidates, leading_space)
        self.planner: _AllTokenizations | _CanonicalTokenization = (
            _AllTokenizations(self.targets, backend.vocab)
            if tokenizations == "all"
            else _CanonicalTokenization(self.targets, backend)
        )
        self.nodes = self.planner.count_nodes()
        if self.nodes > MAX_TREE_NODES:
            raise ModescopeError(
                f"spelling these candidates every possible way takes {self.nodes:,} tree nodes "
                f"(limit {MAX_TREE_NODES:,}); use --tokenizations canonical or shorter candidates"
            )
        self.boundary = torch.tensor(backend.vocab.boundary_ids, dtype=torch.long)
        self.nested = _nested_in(self.targets, self.planner, backend.vocab)

    @property
    def root(self) -> Any:
        return self.planner.root

    def children(self, data: Any) -> list[Child]:
        return self.planner.expansion(data).children

    def contributions(self, data: Any, node_logprob: float, logprobs: torch.Tensor) -> list[tuple[int, float]]:
        """(target, log-probability) of every event that ends at this node: its text followed by a boundary
        token, or a straddling token that finishes a target and starts a boundary."""
        plan = self.planner.expansion(data)
        found = []
        if plan.terminals:
            ending = node_logprob + float(torch.logsumexp(logprobs.index_select(0, self.boundary), 0))
            found += [(k, ending) for k in plan.terminals]
        found += [(k, node_logprob + float(logprobs[token])) for token, k in plan.straddles]
        return found

    def candidate_masses(self, pieces: Sequence[Sequence[float]]) -> np.ndarray:
        """Each candidate's mass from the log-probabilities of its targets' events (made disjoint)."""
        target_mass = np.array([math.fsum(math.exp(x) for x in p) for p in pieces], dtype=np.float64)
        target_mass = _disjoint_masses(self.targets, target_mass, self.nested)
        mass = np.zeros(len(self.candidates), dtype=np.float64)
        for target, m in zip(self.targets, target_mass, strict=True):
            mass[target.candidate] += m
        return mass


def outcome_distribution(
    backend: Backend,
    prompt: str | ChatPrompt,
    candidates: Sequence[str],
    leading_space: LeadingSpace = "optional",
    tokenizations: Tokenizations = "all",
    batch_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
    temperature: float = 1.0,
) -> ModelDistribution:
    """One model's exact distribution over `candidates` after `prompt`.

    With `temperature` τ != 1, every next-token distribution along every path is tempered first
    (softmax(log p / τ)), which is what sampling at temperature τ does to the outcome probabilities.
    `progress(done, total)` is called as tree nodes are forwarded.
    """
    check_temperature(temperature)
    answers = AnswerTree(backend, candidates, leading_space, tokenizations)
    prompt_ids = backend.prompt_ids(prompt)
    pieces: list[list[float]] = [[] for _ in answers.targets]

    def visit(node: Node, logprobs: torch.Tensor) -> list[Child]:
        for k, logmass in answers.contributions(node.data, node.logprob, logprobs):
            pieces[k].append(logmass)
        return answers.children(node.data)

    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress:
            progress(done, answers.nodes)

    tree = PrefixTree(backend, batch_size=batch_size, progress=advance, transform=tempered(temperature))
    stats = tree.expand(prompt_ids, visit, answers.root)
    return _summarize(backend.name, answers.candidates, answers.candidate_masses(pieces), stats)


def _summarize(model: str, candidates: list[str], mass: np.ndarray, stats: ExpansionStats) -> ModelDistribution:
    with np.errstate(divide="ignore"):
        logmass = np.log(mass)
    coverage = float(mass.sum())
    if coverage == 0.0:
        raise ModescopeError(f"model '{model}' gives the candidate set no probability at all; check the candidates")
    logp = metrics.normalize_log(logmass)
    prob = np.exp(logp)
    entropy = metrics.entropy_bits(logp)
    top = int(np.argmax(prob))
    return ModelDistribution(
        model=model,
        outcomes=[
            Outcome(text, float(m), float(p), float(lm))
            for text, m, p, lm in zip(candidates, mass, prob, logmass, strict=True)
        ],
        coverage=coverage,
        entropy_bits=entropy,
        normalized_entropy=entropy / math.log2(len(candidates)) if len(candidates) > 1 else 0.0,
        effective_outcomes=2.0**entropy,
        top1=candidates[top],
        top1_share=float(prob[top]),
        chi_square=metrics.chi_square_uniform(logp),
        stats=stats,
    )


def compare(a: ModelDistribution, b: ModelDistribution) -> Comparison:
    """Divergences between two models' distributions over the same candidates (each normalized in the set)."""
    p, q = a.logprobs(), b.logprobs()
    return Comparison(
        a=a.model,
        b=b.model,
        kl_ab_bits=metrics.kl_bits(p, q),
        kl_ba_bits=metrics.kl_bits(q, p),
        js_bits=metrics.js_bits(p, q),
        tv=metrics.total_variation(p, q),
        spearman=metrics.spearman(p, q),
    )


def distribution(
    models: Backend | Sequence[Backend],
    prompt: str | ChatPrompt,
    candidates: Sequence[str],
    leading_space: LeadingSpace = "optional",
    tokenizations: Tokenizations = "all",
    batch_size: int = 128,
    progress: Callable[[str, int, int], None] | None = None,
    temperature: float = 1.0,
) -> DistributionResult:
    """Exact distribution of each model over `candidates` after `prompt`, and pairwise divergences.

    `progress(model, done, total)` reports tree nodes forwarded per model.
    """
    backends = [models] if isinstance(models, Backend) else list(models)
    if not backends:
        raise ModescopeError("no model given; name at least one model")
    names = [b.name for b in backends]
    if len(set(names)) != len(names):
        raise ModescopeError(f"a model is listed twice ({', '.join(names)}); name each model once")
    results = []
    for backend in backends:
        report = (lambda done, total, name=backend.name: progress(name, done, total)) if progress else None
        results.append(
            outcome_distribution(
                backend, prompt, candidates, leading_space, tokenizations, batch_size, report, temperature
            )
        )
    comparisons = [compare(a, b) for i, a in enumerate(results) for b in results[i + 1 :]]
    text = prompt if isinstance(prompt, str) else prompt.user
    return DistributionResult(text, list(candidates), leading_space, tokenizations, results, comparisons, temperature)
