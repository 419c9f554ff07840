"""The classic figure: each model's probability of every candidate, on one shared axis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from modescope.probes.distribution import DistributionResult

MAX_TICK_LABELS = 40
NICE_STEPS = [k * 10**e for e in range(7) for k in (1, 2, 5)]  # tick every 1, 2, 5, 10, 20, 50, ... candidates


def share_bounds(low: Sequence[float], high: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The interval of each outcome's probability within the set, given every outcome's absolute mass
    interval [low, high]: its share is smallest when it sits at its lower bound and every other outcome at its
    upper bound, largest the other way round. Contains the share of the lower bounds (`Outcome.prob`)."""
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    others_high, others_low = hi.sum() - hi, lo.sum() - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        smallest = np.where(lo > 0, lo / (lo + others_high), 0.0)
        largest = np.where(hi > 0, hi / (hi + others_low), 0.0)
    return np.clip(smallest, 0.0, 1.0), np.clip(largest, 0.0, 1.0)


def distribution_figure(result: DistributionResult) -> Figure:
    """Grouped bars (one colour per model) of probability within the candidate set.

    A bounded model (behind a top-k server) gets error bars over the interval its share of the set can take
    given its outcomes' mass intervals, and its legend entry carries its bounds label.
    """
    from modescope.viz.figures import pyplot

    plt = pyplot()
    count = len(result.candidates)
    models = len(result.results)
    width = 0.85 / models
    x = np.arange(count)
    fig, ax = plt.subplots(figsize=(min(24.0, max(8.0, 0.14 * count + 4.0)), 4.8), layout="constrained")
    for k, r in enumerate(result.results):
        probs = np.array([o.prob for o in r.outcomes])
        label = f"{r.model}  (coverage {r.coverage:.1%}, entropy {r.entropy_bits:.2f} bits, top {r.top1!r})"
        errors = None
        if r.bounds is not None:
            low, high = share_bounds([o.mass for o in r.outcomes], [o.mass_upper for o in r.outcomes])
            errors = np.vstack([np.maximum(probs - low, 0.0), np.maximum(high - probs, 0.0)])
            coverage = f"coverage {r.coverage:.1%}–{r.coverage_upper:.1%}"
            label = (
                f"{r.model}  {r.bounds}  ({coverage}, lower bounds: entropy {r.entropy_bits:.2f} bits, top {r.top1!r})"
            )
        ax.bar(
            x + (k - (models - 1) / 2) * width,
            probs,
            width,
            label=label,
            color=f"C{k}",
            alpha=0.9,
            yerr=errors,
            error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.25"},
        )
    step = next(s for s in NICE_STEPS if s * MAX_TICK_LABELS >= count) if count > MAX_TICK_LABELS else 1
    ax.set_xticks(x[::step], [result.candidates[i] for i in range(0, count, step)], rotation=90 if step == 1 else 0)
    ax.set_xlim(-0.6, count - 0.4)
    ax.set_xlabel("candidate")
    bounded = any(r.bounds is not None for r in result.results)
    ax.set_ylabel("probability within the candidate set" + ("\n(error bars: bounds)" if bounded else ""))
    prompt = result.prompt if len(result.prompt) <= 90 else "…" + result.prompt[-89:]
    ax.set_title(repr(prompt).replace("$", r"\$"), fontsize=9, loc="left")  # no mathtext
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_distribution(result: DistributionResult, path: Path) -> Path:
    """Write `distribution_figure` as a PNG; returns `path`."""
    from modescope.viz.figures import write_figure

    return write_figure(distribution_figure(result), path, dpi=120)
