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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from modescope import metrics
from modescope.engine.decode import generate
from modescope.engine.samplers import SamplerSettings
from modescope.engine.tree import Child, Node, PrefixTree
from modescope.errors import ModescopeError
from modescope.models.base import Backend, ChatPrompt, require_one_prompt
from modescope.probes.distribution import AnswerTree, LeadingSpace, Tokenizations, make_targets
from modescope.probes.sampling import MAX_SAMPLES, sample_models
from modescope.results import NotebookResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

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
class TemperatureSweep(NotebookResult):
    """Each model's diversity metrics at each temperature of a sweep.

    In a notebook it shows the metrics against temperature and the table; `to_pandas()` is one row per
    (model, temperature) with a column per metric.
    """

    frame_height = 620

    prompt: str
    temperatures: list[float]
    points: list[SweepPoint]
    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> Capabilities.metadata()

    def series(self, model: str, metric: str) -> list[float]:
        return [p.metrics[metric] for p in self.points if p.model == model]

    def to_dict(self) -> dict[str, Any]:
        """The sweep part of `report_dict`: prompt, temperatures, sweep (model, temperature, metrics), capabilities."""
        return {
            "prompt": self.prompt,
            "temperatures": self.temperatures,
            "sweep": [asdict(p) for p in self.points],
            "capabilities": self.capabilities,
        }

    def to_pandas(self) -> pd.DataFrame:
        """One row per (model, temperature): model, temperature, then one column per metric of
        `modescope.probes.sampling.completion_metrics` (entropies in bits; NaN where a metric was not measured)."""
        import pandas as pd

        rows = [{"model": p.model, "temperature": p.temperature, **p.metrics} for p in self.points]
        return pd.DataFrame(rows)

    def plot(self) -> Figure:
        """Mean token entropy (bits), distinct-2, self-BLEU and equivalence classes against temperature, one line
        per model (a matplotlib Figure)."""
        from modescope.viz.figures import detached
        from modescope.viz.temperature_plot import sweep_figure

        return detached(sweep_figure(self))

    def to_html(self) -> str:
        """A self-contained page: the metrics against temperature and the table of every point."""
        from modescope.viz.temperature_html import sweep_page

        return sweep_page(self)


def temperature_sweep(
    models: Backend | str | Sequence[Backend | str],
    prompt: str | ChatPrompt,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    n: int = 16,
    max_tokens: int = 48,
    seed: int | None = 0,
    progress: Callable[[str], None] | None = None,
    embedder: Any = None,
) -> TemperatureSweep:
    """How diverse each model's completions are at each temperature: n samples per model and temperature.

    Every temperature uses the same seed, so the sweep changes only the temperature. The metrics are those of
    `ms.sample` (distinct-n, self-BLEU, embedding diversity, equivalence classes; mean token entropy in bits of
    the raw model along the sampled tokens).

    Args:
        models: One model or a list: loaded models (`ms.load`) or names to load (a preset such as
            "gemma-3-270m", a folder, a .gguf file, a cached HF id, NAME@URL).
        prompt: The text to continue, or a `ChatPrompt` for a chat model.
        temperatures: The temperatures of the sweep (0 is greedy).
        n: Completions per model and temperature.
        max_tokens: Tokens per completion at most.
        seed: Random seed: the same seed gives the same samples.
        progress: Called with a line such as "gemma-3-270m at temperature 0.7" before each run.
        embedder: Texts -> unit vectors for the embedding metrics; None loads all-MiniLM-L6-v2.

    Returns:
        A `TemperatureSweep`: one point per (model, temperature) holding its metrics.

    Example:
        >>> import modescope as ms
        >>> sweep = ms.temperature_sweep(["gemma-3-270m", "smollm2-135m-instruct"], "Tell me a joke.", n=8)
        >>> sweep.to_pandas()[["model", "temperature", "mean_entropy_bits", "distinct_2"]]
    """
    from modescope.models import backends as resolve

    require_one_prompt(prompt, "temperature_sweep", "temperature")
    _check_sweep(temperatures, n, max_tokens)
    loaded = resolve(models)  # names are loaded; duplicates refused
    points = []
    capabilities: dict[str, dict[str, Any]] = {}
    for temperature in temperatures:
        settings = SamplerSettings.make(temperature=temperature)
        report = (lambda model, t=temperature: progress(f"{model} at temperature {t}")) if progress else None
        result = sample_models(loaded, prompt, n, max_tokens, settings, seed, progress=report, embedder=embedder)
        points += [SweepPoint(m.model, temperature, m.metrics) for m in result.models]
        capabilities |= result.capabilities
    text = prompt if isinstance(prompt, str) else prompt.user
    return TemperatureSweep(text, list(temperatures), points, capabilities)


def _check_sweep(temperatures: Sequence[float], n: int, max_tokens: int) -> None:
    """Refuse a sweep that cannot run, before any model loads."""
    if isinstance(temperatures, int | float) or not temperatures:
        raise ModescopeError("give at least one temperature, as a list such as [0.5, 1.0, 1.5]")
    if any(not (math.isfinite(t) and t >= 0) for t in temperatures):
        raise ModescopeError(f"temperatures must be 0 (greedy) or positive finite numbers (got {list(temperatures)})")
    if not 1 <= n <= MAX_SAMPLES or max_tokens < 1:
        raise ModescopeError(
            f"n must be between 1 and {MAX_SAMPLES} and max_tokens at least 1 (got n={n}, max_tokens={max_tokens})"
        )


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
    greedy = generate(tuned, prompt_ids, n=1, max_tokens=max_tokens, top_k_alternatives=0)
    sampled = generate(tuned, prompt_ids, n=n, max_tokens=max_tokens, temperature=1.0, seed=seed, top_k_alternatives=0)
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


@dataclass
class TemperatureFits(NotebookResult):
    """The "is it just temperature?" test between a base and a tuned model: every fit, and what was skipped.

    In a notebook it shows the table of fits and the divergence against τ; `to_pandas()` is one row per fit.
    """

    frame_height = 560

    prompt: str
    base: str
    tuned: str
    fits: list[TemperatureFit]
    notices: list[str] = field(default_factory=list)  # e.g. a test skipped, and why

    def to_dict(self) -> dict[str, Any]:
        """prompt, base, tuned, fits (each as in the `fits` list of `report_dict`) and notices."""
        return {
            "prompt": self.prompt,
            "base": self.base,
            "tuned": self.tuned,
            "fits": [f.to_dict() for f in self.fits],
            "notices": self.notices,
        }

    def to_pandas(self) -> pd.DataFrame:
        """One row per fit: form ("token" or "outcome"), source (the tempered model), target (the model it should
        match), tau (τ*), divergence_at_tau and divergence_at_one (KL in bits), explained (share, 0..1)."""
        import pandas as pd

        columns = ["form", "source", "target", "tau", "divergence_at_tau", "divergence_at_one", "explained"]
        return pd.DataFrame([{c: getattr(f, c) for c in columns} for f in self.fits], columns=columns)

    def plot(self) -> Figure:
        """One panel per fit: the divergence (KL, bits) against τ, with τ* dashed (a matplotlib Figure)."""
        from modescope.viz.figures import detached
        from modescope.viz.temperature_plot import fits_figure

        return detached(fits_figure(self.fits))

    def to_html(self) -> str:
        """A self-contained page: the table of fits, the notices and the divergence curves."""
        from modescope.viz.temperature_html import fits_page

        return fits_page(self)


def fit_pair(
    base: Backend,
    tuned: Backend,
    prompt: str | ChatPrompt,
    candidates: Sequence[str] | None = None,
    tokenizations: Tokenizations = "all",
    leading_space: LeadingSpace = "optional",
    n: int = 8,
    max_tokens: int = 32,
    seed: int | None = 0,
    progress: Callable[[str], None] | None = None,
) -> TemperatureFits:
    """Every fit that the pair allows: token level when the tokenizers match, outcome level when `candidates`
    are given. What cannot run is a notice, not an error (the result may hold no fit)."""
    fits: list[TemperatureFit] = []
    notices = []
    if same_tokenizer(base, tuned):
        if progress:
            progress("token-level temperature fit")
        fits += token_level_fits(base, tuned, prompt, n=n, max_tokens=max_tokens, seed=seed)
    else:
        notices.append(f"token-level test skipped: '{base.name}' and '{tuned.name}' have different tokenizers")
    if candidates is not None:
        if progress:
            progress("outcome-level temperature fit")
        fits += outcome_level_fits(base, tuned, prompt, candidates, leading_space, tokenizations)
    else:
        notices.append("outcome-level test skipped: no candidate set given")
    text = prompt if isinstance(prompt, str) else prompt.user
    return TemperatureFits(text, base.name, tuned.name, fits, notices)


def temperature_fit(
    base: Backend | str,
    tuned: Backend | str,
    prompt: str | ChatPrompt,
    *,
    candidates: Sequence[str] | None = None,
    tokenizations: Tokenizations = "all",
    leading_space: LeadingSpace = "optional",
    n: int = 8,
    max_tokens: int = 32,
    seed: int | None = 0,
    progress: Callable[[str], None] | None = None,
) -> TemperatureFits:
    """Is the tuned model just the base model at another temperature? The τ* that brings one closest to the other.

    Two forms, each fitted both ways (the base tempered to match the tuned model, and the reverse):

    - token level, when the two models share a tokenizer: along the tuned model's greedy and `n` sampled
      completions, τ* minimizes the mean over positions of KL(p_target || softmax(log p_source / τ));
    - outcome level, when `candidates` are given (any tokenizers): the exact distribution over the candidate
      set under a per-token temperature τ, fitted to the target's.

    Args:
        base: The base model: a loaded model (`ms.load`) or a name to load.
        tuned: The tuned model, the same way.
        prompt: The text to continue, or a `ChatPrompt` for a chat model.
        candidates: An answer set for the outcome-level test, e.g. `ms.integers(0, 100)`; needed when the
            tokenizers differ.
        tokenizations: Outcome level: "all" sums every spelling of an answer; "canonical" only the tokenizer's own.
        leading_space: Outcome level: "optional" counts " 42" and "42", "required" only " 42", "none" only "42".
        n: Token level: sampled completions of the tuned model (besides the greedy one).
        max_tokens: Token level: tokens per completion at most.
        seed: Random seed of the sampled completions.
        progress: Called with a line such as "token-level temperature fit" as each form starts.

    Returns:
        A `TemperatureFits`: per fit τ*, the divergence at τ* and at τ = 1 (KL, bits), the share of it that τ*
        explains (1 - D(τ*) / D(1)) and the curve of the divergence against τ; and notices of skipped tests.

    Example:
        >>> import modescope as ms
        >>> fits = ms.temperature_fit("gemma-3-270m", "smollm2-135m-instruct", "A random number from 0 to 100:",
        ...                           candidates=ms.integers(0, 100))
        >>> fits.to_pandas()
    """
    from modescope.models import backends as resolve

    candidates = _checked_fit_request(candidates, tokenizations, leading_space, n, max_tokens)
    first, second = resolve([base, tuned])  # names are loaded; the same model twice is refused
    if candidates is None and not same_tokenizer(first, second):
        raise ModescopeError(
            f"'{first.name}' and '{second.name}' have different tokenizers, so only the outcome-level test can run: "
            "give candidates, e.g. candidates=ms.integers(0, 100)"
        )
    return fit_pair(first, second, prompt, candidates, tokenizations, leading_space, n, max_tokens, seed, progress)


def _checked_fit_request(
    candidates: Sequence[str] | None, tokenizations: str, leading_space: LeadingSpace, n: int, max_tokens: int
) -> list[str] | None:
    """The candidates as a list; settings that cannot run are refused before any model loads."""
    if tokenizations not in ("all", "canonical"):
        raise ModescopeError(f"unknown tokenizations mode '{tokenizations}'; use 'all' or 'canonical'")
    if n < 1 or max_tokens < 1:
        raise ModescopeError(f"n and max_tokens must be at least 1 (got n={n}, max_tokens={max_tokens})")
    answers = None if candidates is None or isinstance(candidates, str) else list(candidates)
    if isinstance(candidates, str) or not all(isinstance(c, str) for c in answers or []):
        raise ModescopeError("candidates is a list of answers (strings), e.g. ms.integers(0, 100) or ['yes', 'no']")
    if answers is not None and len(answers) < 2:
        raise ModescopeError("give at least two candidates: one answer has probability 1 at every temperature")
    make_targets(answers or [], leading_space)  # refuses an unknown leading-space mode and clashing spellings
    return answers


def report_dict(sweep: TemperatureSweep, fits: Sequence[TemperatureFit]) -> dict[str, Any]:
    """The JSON shape of `modescope temperature`."""
    return {
        "prompt": sweep.prompt,
        "temperatures": sweep.temperatures,
        "sweep": [asdict(p) for p in sweep.points],
        "fits": [f.to_dict() for f in fits],
        "capabilities": sweep.capabilities,
    }
