"""Calibration of Verbalized Sampling: the probabilities a model states against the ones it really has."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modescope.remedies.stated import StatedVsReal


def _rho(value: float, reason: str | None) -> str:
    return f"{value:.2f}" if math.isfinite(value) else f"n/a ({reason})" if reason else "n/a"


def plot_calibration(result: StatedVsReal, path: Path) -> Path:
    """Write a PNG: one point per distinct response, its stated share on x and on y its exact share (the
    model's own probabilities renormalized over the responses) and its direct-sampling frequency, with the
    diagonal of perfect calibration and both Spearman correlations in the legend."""
    from modescope.viz.figures import pyplot, write_figure

    plt = pyplot()  # Agg, but a notebook kernel keeps its inline backend

    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    stated = [r.stated_share for r in result.rows]
    exact = [r.exact_share for r in result.rows]
    frequency = [r.direct_frequency for r in result.rows]
    top = max([0.05, *[v for v in stated + exact + frequency if math.isfinite(v)]]) * 1.08
    ax.plot([0, top], [0, top], color="0.6", linestyle="--", linewidth=1, label="stated = real")
    rho_exact = _rho(result.spearman_exact, result.spearman_exact_reason)
    rho_freq = _rho(result.spearman_frequency, result.spearman_frequency_reason)
    ax.scatter(stated, exact, s=28, color="C0", label=f"exact share (Spearman {rho_exact})", zorder=3)
    ax.scatter(stated, frequency, s=28, color="C1", marker="s", label=f"direct frequency (Spearman {rho_freq})")
    for row in sorted(result.rows, key=lambda r: -r.stated_share)[:8]:  # name the most stated ones
        if math.isfinite(row.exact_share):
            label = row.text if len(row.text) <= 24 else row.text[:23] + "…"
            ax.annotate(
                label, (row.stated_share, row.exact_share), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("stated probability (normalized, mean over generations)")
    ax.set_ylabel("real probability")
    ax.set_title(
        f"{result.model}: {len(result.rows)} responses, parse rate {result.parse_rate:.0%}"
        if math.isfinite(result.parse_rate)
        else result.model,
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return write_figure(fig, path)
