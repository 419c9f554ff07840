"""Statistics of a metric measured on many prompts: the mean with a bootstrap confidence interval, and the
paired comparison of two models measured on the same prompts.

Prompts are the unit of resampling: a model's metric on one prompt is one observation, and two models'
metrics on the same prompt form one pair. Not-finite values (a metric a unit could not measure) are dropped,
pairwise for paired statistics. Everything takes an explicit seed, so the same input gives the same interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from modescope.errors import ModescopeError

# Resampled values held at once: bounds the memory of the bootstrap (resamples x prompts) to ~32 MB.
CHUNK_VALUES = 1 << 22


@dataclass(frozen=True)
class Estimate:
    """A mean over prompts with its percentile-bootstrap confidence interval [low, high]; n prompts used."""

    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: a not-finite number is None."""
        return _finite_dict(asdict(self))


@dataclass(frozen=True)
class PairedDifference:
    """The mean of b - a over the prompts where both are measured (n), its bootstrap interval, the two-sided
    Wilcoxon signed-rank p-value, and on how many prompts each side is higher (or they tie)."""

    mean: float
    low: float
    high: float
    n: int
    wilcoxon_p: float
    a_higher: int
    b_higher: int
    ties: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: a not-finite number is None."""
        return _finite_dict(asdict(self))


def _finite_dict(values: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


def _check(confidence: float, resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ModescopeError(f"confidence must be between 0 and 1, such as 0.95 (got {confidence})")
    if resamples < 1:
        raise ModescopeError(f"resamples must be at least 1, such as 10000 (got {resamples})")


def _column(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).ravel()


def _resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means [resamples, k] of the columns of `values` [n, k] over `resamples` draws of n rows with replacement.
    Every column sees the same draws: how often each row was drawn, times the values, is one matrix product
    for all columns (cheaper than gathering each column's resampled values)."""
    n = values.shape[0]
    chunk = max(1, CHUNK_VALUES // n)
    means = np.empty((resamples, values.shape[1]), dtype=np.float64)
    counts = np.empty((min(chunk, resamples), n), dtype=np.float64)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        picks = rng.integers(0, n, size=(rows, n), dtype=np.int32)  # [rows, n]
        for r in range(rows):
            counts[r] = np.bincount(picks[r], minlength=n)
        means[start : start + rows] = counts[:rows] @ values / n
    return means


def _bootstrap(values: np.ndarray, confidence: float, resamples: int, seed: int) -> list[Estimate]:
    """The estimate of each column of `values` [n, k] (all finite)."""
    n, k = values.shape
    if n == 0:
        return [Estimate(math.nan, math.nan, math.nan, 0)] * k
    mean = values.mean(axis=0)
    if n == 1:  # one prompt: nothing to resample, the interval is the point
        return [Estimate(float(m), float(m), float(m), 1) for m in mean]
    means = _resampled_means(values, resamples, np.random.default_rng(seed))
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail], axis=0)
    return [Estimate(float(m), float(lo), float(hi), n) for m, lo, hi in zip(mean, low, high, strict=True)]


def bootstrap_means(
    columns: Sequence[Sequence[float] | np.ndarray], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> list[Estimate]:
    """`bootstrap_mean` of each column, faster: columns measured on the same prompts (same length, same
    not-finite places) share one set of resamples. Each result equals the column's own `bootstrap_mean` (the
    same seed draws the same resamples), up to rounding."""
    _check(confidence, resamples)
    arrays = [_column(c) for c in columns]
    groups: dict[bytes, list[int]] = {}
    for i, array in enumerate(arrays):
        groups.setdefault(np.isfinite(array).tobytes() + b"%d" % len(array), []).append(i)
    found: dict[int, Estimate] = {}
    for members in groups.values():
        measured = np.isfinite(arrays[members[0]])
        matrix = np.column_stack([arrays[i][measured] for i in members])  # [n, k]
        found.update(zip(members, _bootstrap(matrix, confidence, resamples, seed), strict=True))
    return [found[i] for i in range(len(arrays))]


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> Estimate:
    """The mean of `values` (NaN and infinities dropped) with a percentile-bootstrap confidence interval:
    the central `confidence` share of the means of `resamples` resamples (prompts drawn with replacement).

    No value gives NaN for mean and bounds (n = 0); one value gives low = high = mean.
    """
    return bootstrap_means([values], confidence, resamples, seed)[0]


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value that the differences are symmetric around 0.

    Zero differences carry no sign and are dropped (Wilcoxon's own treatment). No difference at all gives NaN
    (nothing measured); differences that are all zero give 1.0: measured, and no evidence of a difference in
    either direction (the test would have no ranks to order). One non-zero difference gives 1.0 too, which is
    the exact value: with one pair each sign has probability 1/2, so the two-sided p is 2 x 1/2. Otherwise
    scipy chooses: the exact distribution for small samples, the normal approximation for large ones.
    """
    if len(differences) == 0:
        return math.nan
    nonzero = differences[differences != 0]
    if len(nonzero) == 0:
        return 1.0
    # scipy warns when ties or a small sample make it switch methods; the p-value it returns is what we want
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.wilcoxon(nonzero, alternative="two-sided")
    return float(result.pvalue)


def paired_differences(
    pairs: Sequence[tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> list[PairedDifference]:
    """`paired_difference` of each (a, b), faster: pairs measured on the same prompts share their resamples."""
    differences = []
    for a, b in pairs:
        first, second = _column(a), _column(b)
        if first.shape != second.shape:
            raise ModescopeError(
                f"paired values need one value per prompt on each side (got {len(first)} and {len(second)})"
            )
        both = np.isfinite(first) & np.isfinite(second)
        differences.append(np.where(both, second - first, math.nan))
    estimates = bootstrap_means(differences, confidence, resamples, seed)
    return [_paired(d[np.isfinite(d)], e) for d, e in zip(differences, estimates, strict=True)]


def _paired(differences: np.ndarray, estimate: Estimate) -> PairedDifference:
    return PairedDifference(
        mean=estimate.mean,
        low=estimate.low,
        high=estimate.high,
        n=estimate.n,
        wilcoxon_p=wilcoxon_p(differences),
        a_higher=int((differences < 0).sum()),
        b_higher=int((differences > 0).sum()),
        ties=int((differences == 0).sum()),
    )


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """The mean of b - a over the prompts where both values are finite, with a paired bootstrap interval
    (prompts resampled, so each keeps its pair), the Wilcoxon signed-rank p-value (see `wilcoxon_p`) and how
    many prompts have a > b, b > a, and a == b. `a[i]` and `b[i]` are the two models on prompt i."""
    return paired_differences([(a, b)], confidence, resamples, seed)[0]
