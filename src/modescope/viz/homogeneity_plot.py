"""Cross-model homogeneity drawn: a models x models heatmap (PNG) and an HTML table for pages and reports.

Both read the dict form of a `HomogeneityResult` (its `to_dict()`, as stored in a prompt-set payload) or the
result itself: the diagonal is each model's intra-model similarity, the rest the inter-model similarity of
two models, all on one 0..1 color scale, so a hivemind shows as a uniformly bright matrix.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modescope.metrics.homogeneity import HomogeneityResult

LABEL_WIDTH = 18  # characters per line of a model name on the axes
LABEL_LINES = 3  # lines of a model name before it is cut with "…"
COLORMAP = "viridis"  # sequential, readable in grey and by the color-blind


def _data(result: HomogeneityResult | Mapping[str, Any]) -> Mapping[str, Any]:
    return result if isinstance(result, Mapping) else result.to_dict()


def _label(name: str) -> str:
    """A model name wrapped for an axis (long names break at "/", "-", "_" too), without mathtext."""
    spaced = name.replace("/", "/ ").replace("_", "_ ").replace("-", "- ")
    lines = textwrap.wrap(spaced, LABEL_WIDTH, break_long_words=True) or [""]
    lines = [line.replace("/ ", "/").replace("_ ", "_").replace("- ", "-").strip() for line in lines]
    if len(lines) > LABEL_LINES:
        lines = lines[:LABEL_LINES]
        lines[-1] = lines[-1][: LABEL_WIDTH - 1] + "…"
    return "\n".join(lines).replace("$", r"\$")


def _share(data: Mapping[str, Any], model: str) -> float | None:
    value: float | None = (data.get("share_above", {}).get(model) or {}).get("mean")
    return value


def plot_homogeneity(result: HomogeneityResult | Mapping[str, Any], path: Path) -> Path:
    """Write the models x models similarity heatmap as a PNG: every cell annotated with its mean cosine,
    diagonal cells also with the share of prompts above the threshold; unmeasured cells grey with "–"."""
    import matplotlib

    from modescope.viz.figures import pyplot, write_figure

    plt = pyplot()  # Agg, but a notebook kernel keeps its inline backend
    import numpy as np

    data = _data(result)
    models: list[str] = list(data["models"])
    matrix = np.array([[np.nan if v is None else v for v in row] for row in data["matrix"]], dtype=np.float64)
    m = len(models)
    side = max(4.2, 1.15 * m + 2.6)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    cmap = matplotlib.colormaps[COLORMAP].with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0.0, vmax=1.0)
    small = 9 if m <= 6 else 7
    for i in range(m):
        for j in range(m):
            value = matrix[i, j]
            text = "–" if not np.isfinite(value) else f"{value:.2f}"
            share = _share(data, models[i]) if i == j else None
            if i == j and share is not None:
                text += f"\n{share:.0%} > {data['threshold']:g}"
            rgba = cmap(value) if np.isfinite(value) else (0.85, 0.85, 0.85, 1.0)
            light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=small,
                color="black" if light else "white",
            )
    labels = [_label(name) for name in models]
    turned = max(map(len, models), default=0) > 8  # long names: slanted, anchored at their end
    ax.set_xticks(range(m), labels, fontsize=8)
    if turned:
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(m), labels, fontsize=8)
    ax.set_xticks(np.arange(-0.5, m, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, m, 1.0), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    count = data.get("n_prompts", 0)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("mean embedding cosine", fontsize=8)
    ax.set_title(
        f"Cross-model homogeneity over {count} prompt{'' if count == 1 else 's'}\n"
        "diagonal: within a model · off-diagonal: between two models",
        fontsize=9,
    )
    fig.tight_layout()
    return write_figure(fig, path)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _estimate(e: Mapping[str, Any] | None) -> str:
    if not e or e.get("mean") is None:
        return "–"
    if e.get("low") is None or e.get("high") is None:
        return _fmt(e["mean"])
    return f"{_fmt(e['mean'])} [{_fmt(e['low'])}, {_fmt(e['high'])}]"


def _percent(e: Mapping[str, Any] | None) -> str:
    if not e or e.get("mean") is None:
        return "–"
    return f"{e['mean']:.0%} [{e['low']:.0%}, {e['high']:.0%}]"


def _cell_style(value: float | None) -> str:
    """A background on a light-to-dark blue scale over 0..1, with text that stays readable."""
    if value is None:
        return "background:#eee"
    v = min(1.0, max(0.0, value))
    red, green, blue = (round(255 + (end - 255) * v) for end in (0x1F, 0x4E, 0x8C))
    return f"background:rgb({red},{green},{blue});color:{'#fff' if v > 0.55 else '#111'}"


def homogeneity_html(result: HomogeneityResult | Mapping[str, Any]) -> str:
    """An HTML fragment (inline styles only, every text escaped): the similarity matrix, then per model its
    intra similarity with interval, the share of prompts above the threshold and what was left out, then per
    pair its inter similarity with interval."""
    data = _data(result)
    models: list[str] = list(data["models"])
    threshold = data["threshold"]
    head = "".join(f"<th>{_e(m)}</th>" for m in models)
    rows = []
    for model, row in zip(models, data["matrix"], strict=True):
        cells = "".join(
            f'<td style="{_cell_style(v)};text-align:right" title="{_e(model)} / {_e(other)}">{_e(_fmt(v))}</td>'
            for other, v in zip(models, row, strict=True)
        )
        rows.append(f"<tr><th>{_e(model)}</th>{cells}</tr>")
    matrix = f'<table class="homogeneity-matrix"><tr><th></th>{head}</tr>{"".join(rows)}</table>'
    per_model = []
    for model in models:
        counts = data["counts"][model]
        left = [
            f"{counts['too_few']} with fewer than 2 texts" if counts["too_few"] else "",
            f"{counts['missing']} missing" if counts["missing"] else "",
            f"{counts['empty_texts']} empty texts left out" if counts["empty_texts"] else "",
        ]
        per_model.append(
            f"<tr><td>{_e(model)}</td><td>{_e(_estimate(data['intra'][model]))}</td>"
            f"<td>{_e(_percent(data['share_above'][model]))}</td><td>{counts['measured']}</td>"
            f"<td>{_e(', '.join(x for x in left if x) or '–')}</td></tr>"
        )
    models_table = (
        f"<table><tr><th>model</th><th>intra similarity [95% CI]</th><th>prompts above {_e(f'{threshold:g}')} "
        f"[95% CI]</th><th>prompts measured</th><th>prompts left out</th></tr>{''.join(per_model)}</table>"
    )
    pairs = "".join(
        f"<tr><td>{_e(p['a'])} vs {_e(p['b'])}</td><td>{_e(_estimate(p))}</td><td>{p.get('n') or 0}</td></tr>"
        for p in data["inter"]
    )
    pairs_table = (
        f"<table><tr><th>pair</th><th>inter similarity [95% CI]</th><th>prompts</th></tr>{pairs}</table>"
        if pairs
        else ""
    )
    note = (
        f"<p class='meta'>Mean embedding cosine over {data.get('n_prompts', 0)} prompts: within one model's samples "
        "(diagonal, self-pairs excluded) and between two models' samples (off the diagonal). Inter close to intra: "
        "the models answer alike (Jiang et al. 2025, “Artificial Hivemind”).</p>"
    )
    return (
        f"{note}{matrix}<div style='height:0.5rem'></div>{models_table}<div style='height:0.5rem'></div>{pairs_table}"
    )
