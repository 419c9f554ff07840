"""Metrics against temperature, one line per model; and divergence against τ for each temperature fit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from modescope.probes.temperature import TemperatureFit, TemperatureSweep

TAU_TICKS = [0.25, 0.5, 1.0, 2.0, 4.0]
SWEEP_METRICS = [
    ("mean_entropy_bits", "mean token entropy (bits)"),
    ("distinct_2", "distinct-2"),
    ("self_bleu", "self-BLEU"),
    ("equivalence_classes", "equivalence classes"),
]


def plot_temperature(sweep: TemperatureSweep, fits: Sequence[TemperatureFit], path: Path) -> Path:
    """Write the sweep (top row) and, when there are fits, the divergence curves (bottom row) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter

    rows = 2 if fits else 1
    fig, axes = plt.subplots(rows, len(SWEEP_METRICS), figsize=(4.2 * len(SWEEP_METRICS), 3.6 * rows), squeeze=False)
    models = list(dict.fromkeys(p.model for p in sweep.points))
    for ax, (metric, label) in zip(axes[0], SWEEP_METRICS, strict=True):
        for k, model in enumerate(models):
            ax.plot(sweep.temperatures, sweep.series(model, metric), marker="o", color=f"C{k}", label=model)
        ax.set_xlabel("temperature")
        ax.set_title(label, fontsize=10)
        if metric == "equivalence_classes":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if fits:
        for ax in axes[1][len(fits) :]:
            ax.axis("off")
        for ax, fit in zip(axes[1], fits, strict=False):
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
