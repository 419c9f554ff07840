"""Metrics against temperature, one line per model; and divergence against τ for each temperature fit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from modescope.probes.temperature import TemperatureFit, TemperatureSweep

TAU_TICKS = [0.25, 0.5, 1.0, 2.0, 4.0]
SWEEP_METRICS = [
    ("mean_entropy_bits", "mean token entropy (bits)"),
    ("distinct_2", "distinct-2"),
    ("self_bleu", "self-BLEU"),
    ("equivalence_classes", "equivalence classes"),
]
PANEL_SIZE = (4.2, 3.6)  # inches per panel


def temperature_figure(sweep: TemperatureSweep, fits: Sequence[TemperatureFit]) -> Figure:
    """The sweep (top row) and, when there are fits, the divergence curves (bottom row, at most one per metric
    panel)."""
    from modescope.viz.figures import pyplot

    rows, columns = (2 if fits else 1), len(SWEEP_METRICS)
    size = (PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows)
    fig, axes = pyplot().subplots(rows, columns, figsize=size, squeeze=False)
    _draw_sweep(axes[0], sweep)
    if fits:
        _draw_fits(axes[1], fits)
    fig.tight_layout()
    return fig


def sweep_figure(sweep: TemperatureSweep) -> Figure:
    """One panel per metric (mean token entropy in bits, distinct-2, self-BLEU, equivalence classes) against
    temperature, one line per model."""
    from modescope.viz.figures import pyplot

    size = (PANEL_SIZE[0] * len(SWEEP_METRICS), PANEL_SIZE[1])
    fig, axes = pyplot().subplots(1, len(SWEEP_METRICS), figsize=size, squeeze=False)
    _draw_sweep(axes[0], sweep)
    fig.tight_layout()
    return fig


def fits_figure(fits: Sequence[TemperatureFit]) -> Figure:
    """One panel per fit: the divergence (KL, bits) from the tempered model to its target against τ, τ* dashed."""
    from modescope.viz.figures import pyplot

    columns = max(1, len(fits))
    fig, axes = pyplot().subplots(1, columns, figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1]), squeeze=False)
    _draw_fits(axes[0], fits)
    fig.tight_layout()
    return fig


def _draw_sweep(axes: Sequence[Any], sweep: TemperatureSweep) -> None:
    from matplotlib.ticker import MaxNLocator

    models = list(dict.fromkeys(p.model for p in sweep.points))
    for ax, (metric, label) in zip(axes, SWEEP_METRICS, strict=True):
        for k, model in enumerate(models):
            ax.plot(sweep.temperatures, sweep.series(model, metric), marker="o", color=f"C{k}", label=model)
        ax.set_xlabel("temperature")
        ax.set_title(label, fontsize=10)
        if metric == "equivalence_classes":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)


def _draw_fits(axes: Sequence[Any], fits: Sequence[TemperatureFit]) -> None:
    """Fits beyond the number of panels are left out; panels beyond the fits are blank."""
    from matplotlib.ticker import NullFormatter

    for ax in axes[len(fits) :]:
        ax.axis("off")
    for ax, fit in zip(axes, fits, strict=False):
        taus, values = zip(*fit.curve, strict=True)
        ax.plot(taus, values, color="C3")
        ax.axvline(fit.tau, color="k", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xticks(TAU_TICKS, [f"{t:g}" for t in TAU_TICKS])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("τ applied to " + fit.source)
        ax.set_ylabel("KL to " + fit.target + " (bits)", fontsize=8)
        ax.set_title(f"{fit.form} level: τ* = {fit.tau:.2f}, explains {fit.explained:.0%}", fontsize=9)
        ax.grid(alpha=0.3)


def plot_temperature(sweep: TemperatureSweep, fits: Sequence[TemperatureFit], path: Path) -> Path:
    """Write `temperature_figure` as a PNG; returns `path`."""
    from modescope.viz.figures import write_figure

    return write_figure(temperature_figure(sweep, fits), path)
