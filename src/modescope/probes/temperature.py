"""Temperature sweeps and the "is it just temperature?" test.

A tuned model is often said to be the base model at a lower temperature. If that were so, one temperature τ*
would turn the base model's distributions into the tuned model's. Two forms measure how far that goes:

- token level (the two models share a tokenizer): along the tuned model's own greedy and sampled
  trajectories, τ* minimizes the mean over positions of KL(p_tuned || softmax(log p_base / τ));
- outcome level (works across tokenizers): the exact distribution of a candidate set under a per-token
  temperature τ applied along every path of the base model's spelling tree, fitted to the tuned model's.

Each reports τ*, the divergence left at τ*, the divergence at τ = 1, and the share of the divergence that
temperature explains, 1 - D(τ*) / D(1); and the reverse direction (the tuned model heated to match the base).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from modescope import metrics
from modescope.engine.samplers import SamplerSettings
from modescope.engine.tree import Child, Node, PrefixTree
from modescope.errors import ModescopeError
from modescope.models.base import Backend, ChatPrompt
from modescope.probes.distribution import AnswerTree, LeadingSpace, Tokenizations
from modescope.probes.sampling import sample_models

DEFAULT_TEMPERATURES = (0.5, 0.7, 1.0, 1.4, 1.9)
TAU_BOUNDS = (0.05, 20.0)  # the search interval for τ*
CURVE_POINTS = 25  # τ values at which the divergence curve is reported (log-spaced over TAU_BOUNDS / 4..4)
MAX_SNAPSHOT_BYTES = 3 << 30


# --- sweep -------------------------------------------------------------------------------------------------


@dataclass
class SweepPoint:
    model: str
    temperature: float
    metrics: dict[str, float]


@dataclass
class TemperatureSweep:
    prompt: str
    temperatures: list[float]
    points: list[SweepPoint]
    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> Capabilities.metadata()

    def series(self, model: str, metric: str) -> list[float]:
        return [p.metrics[metric] for p in self.points if p.model == model]


def temperature_sweep(
    models: Sequence[Backend],
    prompt: str | ChatPrompt,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    n: int = 16,
    max_tokens: int = 48,
    seed: int | None = 0,
    progress: Callable[[str], None] | None = None,
    embedder: Any = None,
) -> TemperatureSweep:
    """Each model's diversity metrics and mean entropy at each temperature (same seed everywhere)."""
    if not temperatures:
        raise ModescopeError("give at least one temperature")
    points = []
    capabilities: dict[str, dict[str, Any]] = {}
    for temperature in temperatures:
        settings = SamplerSettings.make(temperature=temperature)
        report = (lambda model, t=temperature: progress(f"{model} at temperature {t}")) if progress else None
        result = sample_models(models, prompt, n, max_tokens, settings, seed, progress=report, embedder=embedder)
        points += [SweepPoint(m.model, temperature, m.metrics) for m in result.models]
        capabilities |= result.capabilities
    text = prompt if isinstance(prompt, str) else prompt.user
    return TemperatureSweep(text, list(temperatures), points, capabilities)


# --- fitting τ* --------------------------------------------------------------------------------------------


@dataclass
class TemperatureFit:
    """How well one temperature turns model `source` into model `target`."""

    form: str  # "token" or "outcome"
    source: str  # the model being tempered
    target: str  # the model it should match
    tau: float  # τ*
    divergence_at_tau: float  # bits
    divergence_at_one: float  # bits
    curve: list[tuple[float, float]] = field(default_factory=list)  # (τ, divergence in bits)

    @property
    def explained(self) -> float:
        """Share of the divergence at τ = 1 that the best temperature removes."""
        if self.divergence_at_one <= 0:
            return float("nan")
        return 1.0 - self.divergence_at_tau / self.divergence_at_one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"explained": self.explained}


def fit_temperature(divergence: Callable[[float], float], form: str, source: str, target: str) -> TemperatureFit:
    """Minimize divergence(τ) over log τ in TAU_BOUNDS, and sample the curve around it."""
    lo, hi = (math.log(b) for b in TAU_BOUNDS)
    best = minimize_scalar(
        lambda x: divergence(math.exp(x)), bounds=(lo, hi), method="bounded", options={"xatol": 1e-4}
    )
    tau = float(math.exp(best.x))
    curve_taus = np.exp(np.linspace(math.log(0.25), math.log(4.0), CURVE_POINTS))
    curve = [(float(t), divergence(float(t))) for t in curve_taus]
    return TemperatureFit(form, source, target, tau, float(best.fun), divergence(1.0), curve)


def _kl_rows_bits(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, in bits, for rows of log-probabilities."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p)).sum(-1) / math.log(2.0)


def same_tokenizer(a: Backend, b: Backend) -> bool:
    return a.vocab.token_bytes == b.vocab.token_bytes and a.vocab.special_ids == b.vocab.special_ids


def _trajectory_distributions(
    backend: Backend, prompt: list[int], paths: Sequence[tuple[int, ...]]
) -> dict[tuple[int, ...], torch.Tensor]:
    """The next-token log-probabilities at every prefix of the given paths (one tree expansion)."""
    prefixes = {path[:k] for path in paths for k in range(len(path))}
    found: dict[tuple[int, ...], torch.Tensor] = {}

    def visit(node: Node, logprobs: torch.Tensor) -> list[Child]:
        found[node.path] = logprobs.float().clone()
        depth = len(node.path)
        nexts = {p[depth] for p in paths if len(p) > depth and p[:depth] == node.path and p[: depth + 1] in prefixes}
        return [Child(t) for t in sorted(nexts)]

    PrefixTree(backend).expand(prompt, visit)
    return found


def token_level_fits(
    base: Backend,
    tuned: Backend,
    prompt: str | ChatPrompt,
    n: int = 8,
    max_tokens: int = 32,
    seed: int | None = 0,
) -> list[TemperatureFit]:
    """τ* at the token level along the tuned model's greedy and sampled trajectories (same tokenizer only)."""
    if not same_tokenizer(base, tuned):
        raise ModescopeError(
            f"the token-level test needs two models with the same tokenizer ('{base.name}' and '{tuned.name}' "
            "differ); use the outcome-level test with a candidate set"
        )
    prompt_ids = tuned.prompt_ids(prompt)
    greedy = tuned.generate(prompt_ids, n=1, max_tokens=max_tokens, top_k_alternatives=0)
    sampled = tuned.generate(prompt_ids, n=n, max_tokens=max_tokens, temperature=1.0, seed=seed, top_k_alternatives=0)
    paths = [tuple(t.id for t in c.tokens) for c in greedy + sampled]
    tuned_dists = _trajectory_distributions(tuned, prompt_ids, paths)
    base_dists = _trajectory_distributions(base, prompt_ids, paths)
    order = sorted(tuned_dists)
    p = torch.stack([tuned_dists[k] for k in order]).double()
    q = torch.stack([base_dists[k] for k in order]).double()

    def heated(logprobs: torch.Tensor, tau: float) -> torch.Tensor:
        return torch.log_softmax(logprobs / tau, dim=-1)

    forward = fit_temperature(lambda t: float(_kl_rows_bits(p, heated(q, t)).mean()), "token", base.name, tuned.name)
    reverse = fit_temperature(lambda t: float(_kl_rows_bits(q, heated(p, t)).mean()), "token", tuned.name, base.name)
    return [forward, reverse]


class AnswerSnapshot:
    """A model's raw next-token log-probabilities at every node of a candidate set's spelling tree, so the
    exact outcome distribution can be recomputed at any per-token temperature without running the model."""

    def __init__(self, backend: Backend, prompt: str | ChatPrompt, answers: AnswerTree) -> None:
        needed = (answers.nodes + 1) * backend.vocab.size * 4
        if needed > MAX_SNAPSHOT_BYTES:
            raise ModescopeError(
                f"fitting a temperature here keeps {needed / 2**30:.1f} GiB of distributions; use a smaller candidate "
                "set or --tokenizations canonical"
            )
        self.answers = answers
        self.parents: list[int] = []
        self.tokens: list[int] = []
        self.data: list[Any] = []
        index: dict[tuple[int, ...], int] = {}
        rows: list[torch.Tensor] = []

        def visit(node: Node, logprobs: torch.Tensor) -> list[Child]:
            index[node.path] = len(rows)
            self.parents.append(index[node.path[:-1]] if node.path else -1)
            self.tokens.append(node.path[-1] if node.path else -1)
            self.data.append(node.data)
            rows.append(logprobs.float())
            return answers.children(node.data)

        PrefixTree(backend).expand(backend.prompt_ids(prompt), visit, answers.root)
        self.logprobs = torch.stack(rows)  # [nodes, vocab], parents before children

    def masses(self, temperature: float) -> np.ndarray:
        """Each candidate's exact mass when every next-token distribution is tempered by `temperature`."""
        tempered = torch.log_softmax(self.logprobs / temperature, dim=-1)  # float32: ~1e-6 relative, ample for a fit
        path = [0.0] * len(self.parents)
        pieces: list[list[float]] = [[] for _ in self.answers.targets]
        for i, parent in enumerate(self.parents):
            if parent >= 0:
                path[i] = path[parent] + float(tempered[parent, self.tokens[i]])
            for k, logmass in self.answers.contributions(self.data[i], path[i], tempered[i]):
                pieces[k].append(logmass)
        return self.answers.candidate_masses(pieces)


def outcome_level_fits(
    base: Backend,
    tuned: Backend,
    prompt: str | ChatPrompt,
    candidates: Sequence[str],
    leading_space: LeadingSpace = "optional",
    tokenizations: Tokenizations = "all",
) -> list[TemperatureFit]:
    """τ* at the outcome level: the base model's exact candidate distribution under a per-token temperature,
    fitted to the tuned model's, and the reverse. Divergence: KL(target || tempered source) within the set."""
    snapshots = {
        b.name: AnswerSnapshot(b, prompt, AnswerTree(b, candidates, leading_space, tokenizations))
        for b in (base, tuned)
    }

    def logp(name: str, tau: float) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return metrics.normalize_log(np.log(snapshots[name].masses(tau)))

    def fit(source: str, target: str) -> TemperatureFit:
        goal = logp(target, 1.0)
        return fit_temperature(lambda tau: metrics.kl_bits(goal, logp(source, tau)), "outcome", source, target)

    return [fit(base.name, tuned.name), fit(tuned.name, base.name)]


def report_dict(sweep: TemperatureSweep, fits: Sequence[TemperatureFit]) -> dict[str, Any]:
    """The JSON shape of `modescope temperature`."""
    return {
        "prompt": sweep.prompt,
        "temperatures": sweep.temperatures,
        "sweep": [asdict(p) for p in sweep.points],
        "fits": [f.to_dict() for f in fits],
        "capabilities": sweep.capabilities,
    }
