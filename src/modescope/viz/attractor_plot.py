"""Attractor experiments at a glance: basin share per model, and how far each model wanders before it rejoins."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from modescope.viz.figures import pyplot, write_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from modescope.probes.attractors import AttractorResult


def attractor_figure(results: Sequence[AttractorResult]) -> Figure:
    """Basin share per model (bars) and reconvergence distances in tokens per model (strip + box)."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    models = [r.model for r in results]
    positions = np.arange(len(results))
    fig, (share_ax, dist_ax) = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(results) + 4.0), 3.8))

    shares = [0.0 if math.isnan(r.basin_share) else r.basin_share for r in results]
    share_ax.bar(positions, shares, color=[f"C{k}" for k in range(len(results))])
    for x, (r, share) in enumerate(zip(results, shares, strict=True)):
        rejoined = sum(run.reconverged for run in r.runs)
        share_ax.text(x, min(share + 0.02, 0.95), f"{rejoined}/{len(r.runs)}", ha="center", fontsize=8)
    share_ax.set_ylim(0, 1)
    share_ax.set_xticks(positions, models, rotation=20, ha="right", fontsize=8)
    share_ax.set_ylabel("basin share")
    share_ax.set_title("perturbations that rejoin the mainline", fontsize=10)
    share_ax.grid(axis="y", alpha=0.3)

    rng = np.random.default_rng(0)
    for k, r in enumerate(results):
        distances = [run.reconvergence_tokens for run in r.runs if run.reconvergence_tokens is not None]
        never = sum(not run.reconverged for run in r.runs)
        label = f"{r.model}: {never} never rejoin"
        if distances:
            dist_ax.boxplot([distances], positions=[k], widths=0.5, showfliers=False)
            jitter = rng.uniform(-0.12, 0.12, len(distances))
            dist_ax.scatter(k + jitter, distances, s=14, alpha=0.7, color=f"C{k}", label=label, zorder=3)
        else:
            dist_ax.scatter([], [], s=14, color=f"C{k}", label=label)
    dist_ax.set_xticks(positions, models, rotation=20, ha="right", fontsize=8)
    dist_ax.set_xlim(-0.6, len(results) - 0.4)
    dist_ax.set_ylabel("tokens to reconvergence")
    dist_ax.set_ylim(bottom=0)
    dist_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    dist_ax.set_title("distance before rejoining (rejoining runs)", fontsize=10)
    dist_ax.grid(axis="y", alpha=0.3)
    dist_ax.legend(fontsize=7, loc="upper right")

    fig.tight_layout()
    return fig


def plot_attractors(results: Sequence[AttractorResult], path: Path) -> Path:
    """Write `attractor_figure` as a PNG."""
    return write_figure(attractor_figure(results), path)
