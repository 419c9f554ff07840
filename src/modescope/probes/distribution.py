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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from modescope import metrics
from modescope.engine.tree import Child, ExpansionStats, Node, Planned, PrefixTree
from modescope.errors import ModescopeError
from modescope.models.base import Answer, Backend, ChatPrompt, StepRow, TreeStep, partial_distributions
from modescope.models.lm_head import exact_set_sums
from modescope.models.vocab import Vocabulary, starts_with_boundary
from modescope.results import NotebookResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

LeadingSpace = Literal["optional", "required", "none"]
Tokenizations = Literal["all", "canonical"]
LEADING_VARIANTS: dict[str, tuple[str, ...]] = {"optional": ("", " "), "required": (" ",), "none": ("",)}
MAX_TREE_NODES = 500_000
# tree nodes per forward pass: with tree calls a pass holds nodes of every level, and 256 rows keep BLAS
# near its best (11% faster than 128 on Gemma 3 with every spelling of 0..100; 1 GB at the peak there)
TREE_BATCH = 256


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

    def targets_below(self, prefix: bytes) -> list[int]:
        """Targets whose text starts with this node's bytes."""
        return [self.index[text] for text in self._extending(prefix)]

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
            try:
                path = tuple(backend.encode(target.text.decode("utf-8"), add_special_tokens=False))
            except (ValueError, KeyError) as exc:  # a tokenizer without byte fallback (the toy models)
                raise ModescopeError(
                    f"the tokenizer of '{backend.name}' cannot encode {target.text.decode()!r} ({exc}); "
                    "use --tokenizations all or drop that candidate"
                ) from None
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

    def targets_below(self, path: tuple[int, ...]) -> list[int]:
        """Targets whose canonical path starts with this node's path."""
        return [k for k, full in enumerate(self.paths) if full[: len(path)] == path]

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


def _disjoint_bounds(low: np.ndarray, high: np.ndarray, parents: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
    """`_disjoint_masses` on intervals: a container loses at least the lower, at most the upper mass of
    what it contains."""
    new_low, new_high = low.copy(), high.copy()
    for k, parent in enumerate(parents):
        if parent is not None:
            new_low[parent] -= high[k]
            new_high[parent] -= low[k]
    return np.maximum(new_low, 0.0), np.maximum(new_high, 0.0)


@dataclass
class Outcome:
    text: str
    mass: float  # absolute probability of the outcome after the prompt (the lower bound when bounded)
    prob: float  # probability normalized within the candidate set
    logmass: float  # natural log of `mass`
    # upper bound of the mass: equal to `mass` when exact; above it by the mass nobody showed (a top-k
    # server) or by tokens that start with an incomplete UTF-8 character after the candidate (undecided)
    mass_upper: float = math.nan

    def __post_init__(self) -> None:
        if math.isnan(self.mass_upper):
            self.mass_upper = self.mass


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
    # None when every mass is exact up to undecided UTF-8 mass; else what makes them bounds
    bounds: str | None = None
    capabilities: dict[str, Any] = field(default_factory=dict)  # the backend's tier, see Capabilities

    @property
    def coverage_upper(self) -> float:
        return math.fsum(o.mass_upper for o in self.outcomes)

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
class DistributionResult(NotebookResult):
    """Every model's distribution over one candidate set, and each pair's divergences.

    In a notebook it shows the bars, each model's summary and the divergences; `to_pandas()` is one row per
    (model, outcome), `to_pandas(wide=True)` one row per candidate with a probability column per model.
    """

    frame_height = 760

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
            row["outcomes"] = [
                {"text": o.text, "mass": o.mass, "mass_upper": o.mass_upper, "prob": o.prob} for o in r.outcomes
            ]
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

    def to_pandas(self, wide: bool = False) -> pd.DataFrame:
        """One row per (model, outcome): model, text, mass (absolute probability after the prompt; the lower
        bound when bounded), mass_upper, prob (probability within the candidate set).

        With `wide=True`: one row per candidate (index `text`, in candidate order) and one column per model
        holding its probability within the set."""
        import pandas as pd

        long = pd.DataFrame(
            [
                {"model": r.model, "text": o.text, "mass": o.mass, "mass_upper": o.mass_upper, "prob": o.prob}
                for r in self.results
                for o in r.outcomes
            ],
            columns=["model", "text", "mass", "mass_upper", "prob"],
        )
        if not wide:
            return long
        table = long.pivot(index="text", columns="model", values="prob")
        return table.reindex(index=[o.text for o in self.results[0].outcomes], columns=[r.model for r in self.results])

    def plot(self) -> Figure:
        """Grouped bars of each model's probability within the candidate set (a matplotlib Figure)."""
        from modescope.viz.distribution_plot import distribution_figure
        from modescope.viz.figures import detached

        return detached(distribution_figure(self))

    def to_html(self) -> str:
        """A self-contained page: the bars, each model's summary, the divergences and the full table."""
        from modescope.viz.distribution_html import distribution_page

        return distribution_page(self)

    def result(self, model: str) -> ModelDistribution:
        return next(r for r in self.results if r.model == model)


def check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ModescopeError(f"temperature must be a positive number (got {temperature}); 1 leaves the model as is")


def tempered(temperature: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-token temperature transform of log-probabilities (None at temperature 1). The maximum is
    subtracted first, so that a tiny temperature (1e-310) cannot overflow every entry to -inf (NaN after the
    softmax): the likeliest tokens keep 0 and the distribution tends to the point mass it should."""
    if temperature == 1.0:
        return None
    return lambda logprobs: torch.log_softmax((logprobs - logprobs.amax(dim=-1, keepdim=True)) / temperature, dim=-1)


@dataclass
class BatchSums:
    """Sums over token sets for each node of a forwarded batch (see `AnswerTree.batch_sums`)."""

    boundary: list[float]  # log P(the next token is a boundary), nats
    undecided: list[float]  # P(the next token starts with an incomplete UTF-8 character)
    shown: list[float]  # total probability of the finite entries (1 unless the distributions are partial)


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
        self.boundary_mask = torch.zeros(backend.vocab.size, dtype=torch.bool).index_fill_(0, self.boundary, True)
        self._weights: torch.Tensor | None = None
        self.undecided = torch.tensor(backend.vocab.undecided_ids, dtype=torch.long)
        self.nested = _nested_in(self.targets, self.planner, backend.vocab)

    @property
    def root(self) -> Any:
        return self.planner.root

    def children(self, data: Any) -> list[Child]:
        return self.planner.expansion(data).children

    def contributions(
        self, data: Any, node_logprob: float, logprobs: torch.Tensor | StepRow, boundary: float | None = None
    ) -> list[tuple[int, float]]:
        """(target, log-probability) of every event that ends at this node: its text followed by a boundary
        token, or a straddling token that finishes a target and starts a boundary. `boundary`, the node's
        log-probability of a boundary token next, is computed here unless given (see `batch_sums`)."""
        plan = self.planner.expansion(data)
        found = []
        if plan.terminals:
            if boundary is None:
                assert isinstance(logprobs, torch.Tensor), "a step row gives its boundary sums"
                boundary = float(torch.logsumexp(logprobs.index_select(0, self.boundary).double(), 0))
            found += [(k, node_logprob + boundary) for k in plan.terminals]
        found += [(k, node_logprob + float(logprobs[token])) for token, k in plan.straddles]
        return found

    def batch_sums(self, logprobs: torch.Tensor, partial: bool) -> BatchSums:
        """The sums over token sets every node of a forwarded batch [nodes, vocab] needs, for the whole batch at
        once: two passes over the batch instead of a gather and a log-sum-exp per node (a tree call sums them
        as it normalizes: `step_sums`).

        Sums are torch's cascade sums (relative error ~2e-7 in float32 over 262k terms, measured against
        float64). A float32 exp underflows below ~1e-38, so a row whose boundary mass comes out under 1e-30 gets an
        exact float64 log-sum-exp instead (`lm_head.exact_set_sums`; rare: the event is then negligible)."""
        rows = len(logprobs)
        undecided = (
            logprobs.index_select(1, self.undecided).exp().sum(-1).double()
            if len(self.undecided)
            else torch.zeros(rows, dtype=torch.float64)
        )
        probs = logprobs.exp()  # one pass serves both sums below
        shown = probs.sum(-1).double() if partial else torch.ones(rows, dtype=torch.float64)
        # the other tokens zeroed in place (no second [nodes, vocab] buffer), then summed
        weights = self._boundary_weights(logprobs.dtype)
        boundary = probs.mul_(weights).sum(-1, keepdim=True).double()
        zero = torch.zeros(rows, 1, dtype=torch.float64)  # the log-probabilities are normalized already
        boundary = exact_set_sums(boundary, weights.unsqueeze(0), zero, lambda row: logprobs[row])
        return BatchSums(boundary[:, 0].log().tolist(), undecided.tolist(), shown.tolist())

    def token_sets(self) -> torch.Tensor:
        """The token sets a tree call sums over at every node [2, vocab]: the boundary tokens, and those starting
        with an incomplete UTF-8 character (`batch_sums`)."""
        undecided = torch.zeros(len(self.boundary_mask), dtype=torch.float32).index_fill_(0, self.undecided, 1.0)
        return torch.stack([self._boundary_weights(torch.float32), undecided])

    def columns(self, plan: Sequence[Planned]) -> torch.Tensor:
        """The vocabulary ids whose log-probabilities the nodes of `plan` are read at: their tokens, and the
        straddling tokens of the root and of every node."""
        tokens = {node.token for node in plan}
        for data in [self.root, *(node.data for node in plan)]:
            tokens.update(token for token, _ in self.planner.expansion(data).straddles)
        return torch.tensor(sorted(tokens), dtype=torch.long)

    def step_sums(self, step: TreeStep) -> BatchSums:
        """`batch_sums` from a tree step's set sums (`token_sets`): exact, no pass over the vocabulary."""
        assert step.set_sums is not None
        rows = len(step.set_sums)
        return BatchSums(step.set_sums[:, 0].log().tolist(), step.set_sums[:, 1].tolist(), [1.0] * rows)

    def _boundary_weights(self, dtype: torch.dtype) -> torch.Tensor:
        """1 for a boundary token and 0 for the others, in `dtype` (made once per dtype)."""
        if self._weights is None or self._weights.dtype != dtype:
            self._weights = self.boundary_mask.to(dtype)
        return self._weights

    def bounded_contributions(
        self,
        data: Any,
        node_logprob: float,
        logprobs: torch.Tensor | StepRow,
        partial: bool,
        sums: BatchSums,
        row: int,
    ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """`contributions` (exact lower bounds, log) and upper-bound extras (target, mass) at one node, row
        `row` of a batch whose `sums` were taken.

        Extras: tokens starting with an incomplete UTF-8 character after a complete target (they may or may
        not start a word); and with `partial` (only the shown tokens finite) the mass nobody showed, for every
        target reachable through an unshown child or straddling token."""
        plan = self.planner.expansion(data)
        node_mass = math.exp(node_logprob)
        extras: list[tuple[int, float]] = []
        unseen = max(0.0, 1.0 - sums.shown[row]) if partial else 0.0
        if plan.terminals:
            extras += [(k, node_mass * (sums.undecided[row] + unseen)) for k in plan.terminals]
        if partial and unseen > 0.0:
            affected = {k for token, k in plan.straddles if not math.isfinite(float(logprobs[token]))}
            for child in plan.children:
                if not math.isfinite(float(logprobs[child.token])):
                    affected.update(self.planner.targets_below(child.data))
            extras += [(k, node_mass * unseen) for k in sorted(affected)]
        found = self.contributions(data, node_logprob, logprobs, sums.boundary[row])
        lower = [(k, x) for k, x in found if math.isfinite(x)]
        return lower, extras

    def candidate_bounds(
        self, pieces: Sequence[Sequence[float]], extras: Sequence[Sequence[float]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each candidate's (lower, upper) mass: the exact events' log-probabilities per target, plus the
        masses each target's upper bound adds."""
        low = np.array([math.fsum(math.exp(x) for x in p) for p in pieces], dtype=np.float64)
        high = low + np.array([math.fsum(e) for e in extras], dtype=np.float64)
        low, high = _disjoint_bounds(low, high, self.nested)
        mass_low = np.zeros(len(self.candidates), dtype=np.float64)
        mass_high = np.zeros(len(self.candidates), dtype=np.float64)
        for target, lo, hi in zip(self.targets, low, high, strict=True):
            mass_low[target.candidate] += lo
            mass_high[target.candidate] += hi
        return mass_low, mass_high

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
    batch_size: int = TREE_BATCH,
    progress: Callable[[int, int], None] | None = None,
    temperature: float = 1.0,
) -> ModelDistribution:
    """One model's exact distribution over `candidates` after `prompt`.

    With `temperature` τ != 1, every next-token distribution along every path is tempered first
    (softmax(log p / τ)), which is what sampling at temperature τ does to the outcome probabilities.
    `progress(done, total)` is called as tree nodes are forwarded.
    """
    options = (leading_space, tokenizations, batch_size, progress, temperature)
    return outcome_distributions(backend, [prompt], candidates, *options)[0]


def outcome_distributions(
    backend: Backend,
    prompts: Sequence[str | ChatPrompt],
    candidates: Sequence[str],
    leading_space: LeadingSpace = "optional",
    tokenizations: Tokenizations = "all",
    batch_size: int = TREE_BATCH,
    progress: Callable[[int, int], None] | None = None,
    temperature: float = 1.0,
) -> list[ModelDistribution]:
    """`outcome_distribution` of each prompt. A backend with tree calls (`Backend.tree_start`) expands each
    prompt's answer tree in its own full passes, one prompt after another, and each result's stats are its own.
    Otherwise the answer trees of all prompts are expanded together (each level's forward passes serve every
    prompt; see `PrefixTree.expand_many`): each result's stats count its own tree (nodes, levels, prompt tokens;
    `tokens_forwarded` leaves the batch's padding out), `forward_calls` are those of the whole batch, which
    served every prompt, and `seconds` is the batch's time split in proportion to each prompt's tokens. Either
    way masses equal the prompts' own runs up to the rounding of batched matmuls. `progress(done, total)` counts tree nodes over all
    prompts. A server that scores given tokens answers each prompt on its own (it batches requests itself).
    """
    check_temperature(temperature)
    capabilities = backend.capabilities
    if temperature != 1.0:  # tempering renormalizes every node over the whole vocabulary
        capabilities.require("a tempered distribution (--temperature other than 1)", backend.name)
    capabilities.require("an outcome distribution", backend.name, "top-k")
    answers = AnswerTree(backend, candidates, leading_space, tokenizations)
    prompt_ids = [backend.prompt_ids(p) for p in prompts]
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress:
            progress(done, answers.nodes * len(prompts))

    if capabilities.server is not None and capabilities.scores_sequences and temperature == 1.0:
        found = [_scored_bounds(backend, answers, ids, advance) for ids in prompt_ids]
    else:
        found = _expanded_bounds(backend, answers, prompt_ids, batch_size, advance, temperature)
    results = []
    for low, high, stats in found:
        result = _summarize(backend.name, answers.candidates, low, stats, high)
        result.capabilities = capabilities.metadata()
        if capabilities.tier != "full":
            result.bounds = f"bounds (top-{capabilities.top_k} server)"
        results.append(result)
    return results


Bounds = tuple[np.ndarray, np.ndarray, ExpansionStats]


def _expanded_bounds(
    backend: Backend,
    answers: AnswerTree,
    prompt_ids: Sequence[list[int]],
    batch_size: int,
    advance: Callable[[int], None],
    temperature: float,
) -> list[Bounds]:
    """Expand the answer tree below every prompt with the prefix-tree engine: exact masses from whole
    distributions, or bounds from partial ones (a top-k server that cannot score given tokens: unshown
    branches are not followed)."""
    pieces: list[list[list[float]]] = [[[] for _ in answers.targets] for _ in prompt_ids]
    extras: list[list[list[float]]] = [[[] for _ in answers.targets] for _ in prompt_ids]
    nodes, levels = [0] * len(prompt_ids), [0] * len(prompt_ids)

    with partial_distributions(backend) as partial:

        def record(node: Node, logprobs: torch.Tensor | StepRow, sums: BatchSums, row: int) -> None:
            """A node's exact events and upper-bound extras, added to its prompt's."""
            k = node.prompt
            lower, upper = answers.bounded_contributions(node.data, node.logprob, logprobs, partial, sums, row)
            for target, logmass in lower:
                pieces[k][target].append(logmass)
            for target, mass in upper:
                extras[k][target].append(mass)

        def visit(batch: Sequence[Node], logprobs: torch.Tensor) -> list[list[Child]]:
            sums = answers.batch_sums(logprobs, partial)
            found = []
            for row, node in enumerate(batch):
                nodes[node.prompt] += len(node.path) > 0
                levels[node.prompt] = max(levels[node.prompt], len(node.path))
                record(node, logprobs[row], sums, row)
                children = answers.children(node.data)
                found.append(
                    [c for c in children if math.isfinite(float(logprobs[row, c.token]))] if partial else children
                )
            return found

        def expansion() -> PrefixTree:
            return PrefixTree(backend, batch_size=batch_size, progress=advance, transform=tempered(temperature))

        # a whole distribution at every node: the tree is known before it is expanded, so a backend with tree
        # calls takes it in a few full passes (nodes of every level together), one prompt after another (each
        # prompt's nodes fill the passes; its stats are its own); otherwise level by level, every prompt together
        planned: list[ExpansionStats] = []
        if not partial:
            sets, plan = answers.token_sets(), _plan(answers)
            columns = answers.columns(plan)  # the steps keep only the log-probabilities read

            def visit_step(batch: Sequence[Node], step: TreeStep) -> None:
                sums = answers.step_sums(step)
                for row, node in enumerate(batch):
                    record(node, step.row(row), sums, row)

            for k, ids in enumerate(prompt_ids):
                stats = expansion().expand_planned(ids, plan, visit_step, answers.root, sets, k, columns)
                if stats is None:  # no tree calls (nothing was visited)
                    break
                planned.append(stats)
        if planned:  # tree calls are the backend's: every prompt had them
            assert len(planned) == len(prompt_ids)
            return [(*answers.candidate_bounds(pieces[k], extras[k]), planned[k]) for k in range(len(prompt_ids))]
        total = expansion().expand_many(prompt_ids, None, [answers.root] * len(prompt_ids), visit_batch=visit)
    own = [len(ids) + n for ids, n in zip(prompt_ids, nodes, strict=True)]  # token positions of each prompt
    found = []
    for k, ids in enumerate(prompt_ids):
        share = own[k] / max(1, sum(own))
        stats = ExpansionStats(nodes[k], levels[k], len(ids), own[k], total.forward_calls, total.seconds * share)
        found.append((*answers.candidate_bounds(pieces[k], extras[k]), stats))
    return found


def _plan(answers: AnswerTree) -> list[Planned]:
    """Every node of the answer tree below the root, level by level, each with its parent's index."""
    plan: list[Planned] = []
    level: list[tuple[int, Any]] = [(-1, answers.root)]
    while level:
        below = []
        for parent, data in level:
            for child in answers.children(data):
                plan.append(Planned(parent, child.token, child.data))
                below.append((len(plan) - 1, child.data))
        level = below
    return plan


def _tree_nodes(answers: AnswerTree) -> list[tuple[tuple[int, ...], Any]]:
    """Every (token path, planner data) of the answer tree below the root, parents before children."""
    found: list[tuple[tuple[int, ...], Any]] = []
    stack: list[tuple[tuple[int, ...], Any]] = [((), answers.root)]
    while stack:
        path, data = stack.pop()
        if path:
            found.append((path, data))
        stack += [((*path, c.token), c.data) for c in reversed(answers.children(data))]
    return found


FIRST_LOOK = 20  # alternatives shown per terminal in the first pass over a full server
RESOLUTION = 1e-6  # on a full server, the widest a candidate's interval may stay, relative to its mass


@dataclass
class _Terminal:
    """A node that spells complete targets: its path probability and what its next tokens say."""

    path: tuple[int, ...]
    targets: list[int]
    logprob: float  # log P(path | prompt), exact (scored)
    lower: float = -math.inf  # log of the shown boundary mass
    unseen: float = 0.0  # mass not shown at this node
    undecided: float = 0.0  # shown mass of tokens starting with an incomplete UTF-8 character

    def read(self, answer: Answer, answers: AnswerTree, vocab_size: int, complete: bool) -> None:
        assert answer.shown_ids is not None and answer.shown_logprobs is not None
        shown = torch.full((vocab_size,), -math.inf, dtype=torch.float64)
        shown[answer.shown_ids] = answer.shown_logprobs
        if complete:  # a whole distribution: renormalize the server's float32 values in float64
            shown -= torch.logsumexp(shown, 0)
        boundary = shown.index_select(0, answers.boundary)
        self.lower = float(torch.logsumexp(boundary, 0)) if bool(torch.isfinite(boundary).any()) else -math.inf
        self.unseen = 0.0 if complete else max(0.0, 1.0 - float(shown.exp().sum()))
        undecided = shown.index_select(0, answers.undecided) if len(answers.undecided) else shown[:0]
        self.undecided = float(undecided.exp().sum())

    @property
    def width(self) -> float:
        """How far the unshown tail can move this node's contribution (probability)."""
        return math.exp(self.logprob) * self.unseen


def _scored_bounds(
    backend: Backend, answers: AnswerTree, prompt_ids: list[int], advance: Callable[[int], None]
) -> tuple[np.ndarray, np.ndarray, ExpansionStats]:
    """Masses from a server that scores given tokens (vLLM prompt_logprobs): every path probability is exact,
    and only what follows a complete target needs the next-token distribution.

    One request per leaf or terminal node scores its path and shows its top k; one per straddling token
    scores it; several go to a request, requests concurrently. On a top-k server the boundary after a
    target stays a bound. On a full server, the terminals whose unshown tail could move a candidate by more
    than RESOLUTION of its mass then get their whole distribution: the heavy spellings, not the rare ones."""
    started = time.perf_counter()
    calls = backend.stats.calls
    full = backend.capabilities.tier == "full"
    nodes = _tree_nodes(answers)
    plans = {path: answers.planner.expansion(data) for path, data in [((), answers.root), *nodes]}
    asked = [path for path, _ in nodes if plans[path].terminals or not plans[path].children]
    straddles = [(path, token, k) for path, plan in plans.items() for token, k in plan.straddles]
    base = len(prompt_ids)
    look = FIRST_LOOK if full else backend.capabilities.top_k or 1
    answered = backend.query([[*prompt_ids, *path] for path in asked], look, True)
    scored = backend.query([[*prompt_ids, *path, token] for path, token, _ in straddles], 0, True)
    path_logprob: dict[tuple[int, ...], float] = {(): 0.0}
    for path, answer in zip(asked, answered, strict=True):
        assert answer.scores is not None
        total = 0.0
        for depth in range(len(path)):
            total += answer.scores[base + depth - 1]
            path_logprob[path[: depth + 1]] = total
    terminals: list[_Terminal] = []
    for path, answer in zip(asked, answered, strict=True):
        if plans[path].terminals:
            terminals.append(_Terminal(path, plans[path].terminals, path_logprob[path]))
            terminals[-1].read(answer, answers, backend.vocab.size, complete=False)
    pieces: list[list[float]] = [[] for _ in answers.targets]
    for (path, _, k), answer in zip(straddles, scored, strict=True):
        assert answer.scores is not None
        pieces[k].append(path_logprob[path] + answer.scores[-1])
    resolved = _resolve(backend, answers, prompt_ids, terminals, pieces) if full else 0
    advance(len(nodes))
    extras: list[list[float]] = [[] for _ in answers.targets]
    for terminal in terminals:
        for k in terminal.targets:
            if math.isfinite(terminal.lower):
                pieces[k].append(terminal.logprob + terminal.lower)
            extras[k].append(math.exp(terminal.logprob) * (terminal.unseen + terminal.undecided))
    stats = ExpansionStats(
        nodes=len(nodes),
        levels=max((len(p) for p, _ in nodes), default=0),
        prompt_tokens=base,
        tokens_forwarded=sum(base + len(p) for p in asked) + sum(base + len(p) + 1 for p, _, _ in straddles),
        forward_calls=backend.stats.calls - calls,
        seconds=time.perf_counter() - started,
        whole_distributions=resolved,
    )
    return (*answers.candidate_bounds(pieces, extras), stats)


def _resolve(
    backend: Backend,
    answers: AnswerTree,
    prompt_ids: list[int],
    terminals: list[_Terminal],
    pieces: list[list[float]],
) -> int:
    """Fetch whole distributions for the terminals whose unshown tail is too wide for some candidate
    (widest first, until every candidate is within RESOLUTION of its mass). Returns how many."""
    by_candidate: dict[int, list[_Terminal]] = {}
    for terminal in terminals:
        for candidate in {answers.targets[k].candidate for k in terminal.targets}:
            by_candidate.setdefault(candidate, []).append(terminal)
    chosen: dict[tuple[int, ...], _Terminal] = {}
    for candidate, members in by_candidate.items():
        targets = [k for k, t in enumerate(answers.targets) if t.candidate == candidate]
        known = math.fsum(math.exp(x) for k in targets for x in pieces[k])
        known += math.fsum(math.exp(t.logprob + t.lower) for t in members if math.isfinite(t.lower))
        width = math.fsum(t.width for t in members)
        for terminal in sorted(members, key=lambda t: -t.width):
            if width <= RESOLUTION * known or terminal.width == 0.0:
                break
            chosen[terminal.path] = terminal
            width -= terminal.width
    if chosen:
        whole = backend.query([[*prompt_ids, *path] for path in chosen], None, False)
        for terminal, answer in zip(chosen.values(), whole, strict=True):
            terminal.read(answer, answers, backend.vocab.size, complete=True)
    return len(chosen)


def _summarize(
    model: str, candidates: list[str], mass: np.ndarray, stats: ExpansionStats, upper: np.ndarray | None = None
) -> ModelDistribution:
    upper = mass if upper is None else upper
    with np.errstate(divide="ignore"):
        logmass = np.log(mass)
    coverage = float(mass.sum())
    if float(upper.sum()) == 0.0:
        raise ModescopeError(f"model '{model}' gives the candidate set no probability at all; check the candidates")
    # bounds whose lower ends are all 0 (a top-k server showed none) say nothing within the set
    logp = metrics.normalize_log(logmass) if coverage else np.full(len(candidates), math.nan)
    prob = np.exp(logp)
    entropy = metrics.entropy_bits(logp) if coverage else math.nan
    top = int(np.argmax(prob)) if coverage else int(np.argmax(upper))
    return ModelDistribution(
        model=model,
        outcomes=[
            Outcome(text, float(m), float(p), float(lm), float(u))
            for text, m, p, lm, u in zip(candidates, mass, prob, logmass, upper, strict=True)
        ],
        coverage=coverage,
        entropy_bits=entropy,
        normalized_entropy=entropy / math.log2(len(candidates)) if len(candidates) > 1 else 0.0,
        effective_outcomes=2.0**entropy,
        top1=candidates[top],
        top1_share=float(prob[top]),
        chi_square=metrics.chi_square_uniform(logp) if coverage else math.nan,
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
    models: Backend | str | Sequence[Backend | str],
    prompt: str | ChatPrompt,
    candidates: Sequence[str],
    leading_space: LeadingSpace = "optional",
    tokenizations: Tokenizations = "all",
    batch_size: int = TREE_BATCH,
    progress: Callable[[str, int, int], None] | None = None,
    temperature: float = 1.0,
) -> DistributionResult:
    """Exact probability of every answer in a candidate set after a prompt, for each model, and divergences.

    Every way the tokenizer can spell each answer is summed (a prefix tree of spellings is expanded with
    batched forward passes), so the masses are exact, not sampled. An answer counts when it ends at a word
    boundary (what follows cannot extend it, e.g. "4" is not the start of "42").

    Args:
        models: One model or a list: loaded models (`ms.load`) or names to load (a preset such as
            "gemma-3-270m", a folder, a .gguf file, a cached HF id, NAME@URL).
        prompt: The text before the answer, or a `ChatPrompt` for a chat model. A list of prompts gives a
            `PromptSetResult` instead: every prompt's distributions and the aggregates over the prompts.
        candidates: The answer set, e.g. `ms.integers(0, 100)` or `ms.choices("red", "blue")`.
        leading_space: "optional" counts " 42" and "42", "required" only " 42", "none" only "42".
        tokenizations: "all" sums every spelling; "canonical" only the tokenizer's own.
        batch_size: Tree nodes per forward pass.
        progress: `progress(model, done, total)` is called as tree nodes are forwarded.
        temperature: Per-token temperature applied at every step of every spelling (1 leaves the model as is).

    Returns:
        A `DistributionResult`: per model each answer's absolute mass (probability after the prompt) and its
        probability within the set, the set's coverage, entropy (bits), top answer; per pair of models the KL
        divergences and Jensen-Shannon divergence (bits) and total variation.

    Example:
        >>> import modescope as ms
        >>> result = ms.distribution(["gemma-3-270m", "smollm2-135m-instruct"],
        ...                          "A random number between 0 and 100:", ms.integers(0, 100))
        >>> result.to_pandas(wide=True).head()
    """
    from modescope.models import backends as resolve

    loaded = resolve(models)  # names are loaded; duplicates refused
    if isinstance(prompt, list | tuple):
        from modescope.probes.prompt_set import over_prompts

        settings = {"choices": list(candidates), "leading_space": leading_space, "tokenizations": tokenizations}
        return over_prompts("distribution", loaded, prompt, temperature=temperature, **settings)  # type: ignore[return-value]
    results = []
    for backend in loaded:
        report = (lambda done, total, name=backend.name: progress(name, done, total)) if progress else None
        results.append(
            outcome_distribution(
                backend, prompt, candidates, leading_space, tokenizations, batch_size, report, temperature
            )
        )
    comparisons = [compare(a, b) for i, a in enumerate(results) for b in results[i + 1 :]]
    text = prompt if isinstance(prompt, str) else prompt.user
    return DistributionResult(text, list(candidates), leading_space, tokenizations, results, comparisons, temperature)
