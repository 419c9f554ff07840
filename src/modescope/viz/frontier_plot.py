"""The diversity-quality frontier as a PNG: one panel per model, each remedy a line through its strengths.

Every point is a mean over the prompts, with its 95% bootstrap interval on both axes as thin error bars; the
`direct` point (plain sampling) is a black star; the points on the model's Pareto frontier are ringed and
joined by a dashed grey staircase. Up and right is better: more diverse at less cost.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modescope.viz.figures import pyplot, write_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LABELS = {
    "embedding_diversity": "embedding diversity (1 − mean cosine)",
    "class_share": "equivalence classes per text",
    "distinct_2": "distinct-2",
    "fluency": "fluency (mean log-likelihood per token, nats)",
    "reward": "reward",
    "parse_rate": "parse rate",
}


def _estimate(point: dict[str, Any], name: str) -> tuple[float, float, float]:
    e = point["metrics"].get(name) or {}
    values = [e.get(k) for k in ("mean", "low", "high")]
    mean, low, high = (float(v) if v is not None else math.nan for v in values)
    return mean, low, high


def axis_label(name: str) -> str:
    return LABELS.get(name, name)


def plot_frontier(payload: dict[str, Any], path: Path) -> Path:
    """Write the frontier of a `modescope.probes.frontier.summarize` payload as a PNG."""
    return write_figure(frontier_figure(payload), path)


def frontier_figure(payload: dict[str, Any]) -> Figure:
    """The frontier of a `modescope.probes.frontier.summarize` payload: one panel per model."""
    plt = pyplot()
    models = payload["models"]
    x_name, y_name = payload["diversity"], payload["quality"]
    remedies = list(dict.fromkeys(p["remedy"] for p in payload["points"] if p["remedy"] != "direct"))
    colors = {r: f"C{k % 10}" for k, r in enumerate(remedies)}
    fig, axes = plt.subplots(1, len(models), figsize=(6.2 * len(models), 5.0), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        own = [p for p in payload["points"] if p["model"] == model]
        _draw_model(ax, own, x_name, y_name, colors)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel(axis_label(x_name))
        ax.set_ylabel(axis_label(y_name), fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.suptitle(f"diversity-quality frontier over {len(payload.get('prompts', []))} prompts", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return fig


def _draw_model(ax: Any, own: list[dict[str, Any]], x_name: str, y_name: str, colors: dict[str, str]) -> None:
    direct = next((p for p in own if p["remedy"] == "direct"), None)
    for remedy, color in colors.items():
        line = sorted((p for p in own if p["remedy"] == remedy), key=lambda p: p["strength"] or 0.0)
        if not line:
            continue
        xs = [_estimate(p, x_name) for p in line]
        ys = [_estimate(p, y_name) for p in line]
        ax.errorbar(
            [x[0] for x in xs],
            [y[0] for y in ys],
            xerr=_bars(xs),
            yerr=_bars(ys),
            color=color,
            marker="o",
            markersize=5,
            linewidth=1.4,
            elinewidth=0.6,
            capsize=0,
            label=remedy,
        )
        for p, x, y in zip(line, xs, ys, strict=True):
            if p["strength"] is not None and math.isfinite(x[0]) and math.isfinite(y[0]):
                ax.annotate(f"{p['strength']:g}", (x[0], y[0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if direct is not None:
        ax.plot(
            [_estimate(direct, x_name)[0]],
            [_estimate(direct, y_name)[0]],
            marker="*",
            color="black",
            markersize=13,
            linestyle="none",
            label="direct",
            zorder=5,
        )
    front = sorted((_estimate(p, x_name)[0], _estimate(p, y_name)[0]) for p in own if p.get("on_front"))
    if front:
        ax.plot(*zip(*front, strict=True), linestyle="--", color="grey", linewidth=1)
        ax.scatter(*zip(*front, strict=True), s=140, facecolors="none", edgecolors="black", linewidths=1, zorder=6)


def _bars(estimates: list[tuple[float, float, float]]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars from (mean, low, high); 0 where the interval is unknown."""
    below = [m - lo if math.isfinite(m - lo) else 0.0 for m, lo, _ in estimates]
    above = [hi - m if math.isfinite(hi - m) else 0.0 for m, _, hi in estimates]
    return [below, above]
