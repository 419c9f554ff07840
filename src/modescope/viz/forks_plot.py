"""Forking tokens at a glance: the change score along each model's mainline, its largest jump marked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modescope.viz.figures import pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from modescope.probes.forks import ForkResult


def forks_figure(results: dict[str, ForkResult]) -> Figure:
    """Change score (total variation of the outcome distribution from the previous position) per mainline
    position, one line per model; each model's largest jump is labelled with its mainline token."""
    plt = pyplot()
    longest = max((len(r.positions) for r in results.values()), default=0)
    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, 0.25 * longest + 3.0)), 3.6))
    for k, (model, result) in enumerate(results.items()):
        xs = [p.position for p in result.positions]
        ax.plot(xs, [p.change_score for p in result.positions], marker="o", ms=3, color=f"C{k}", label=model)
        top = result.forks(1)
        if top and top[0].change_score > 0:
            fork = top[0]
            ax.annotate(
                repr(fork.token),
                (fork.position, fork.change_score),
                textcoords="offset points",
                xytext=(0, 6 + 10 * k),  # stacked, so two models' labels at one position stay readable
                ha="center",
                fontsize=8,
                color=f"C{k}",
            )
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("mainline position (tokens)")
    ax.set_ylabel("change score (total variation)")
    ax.set_title("where the outcome gets decided", fontsize=10)
    ax.grid(alpha=0.3)
    if results:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig
