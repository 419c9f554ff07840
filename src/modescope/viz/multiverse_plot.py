"""The block multiverse as a static figure (SVG or PNG).

x is the depth (one column per step of text), a block's height is its joint probability relative to the
view, and siblings are stacked inside their parent's span, most likely on top. The mass an expanded node
did not list (children below the cutoff, spellings not continued) is a grey block under its children.
With two or more models, each model's own tree gets a panel on the same axes, and a difference panel draws
the union tree coloured by log2(p_tuned / p_base), sized by the mean of the two joints (the mean is additive,
so the nesting stays exact where both models have a value; a step only one model has is sized by that model's
joint, and blocks are clipped to their parent's span).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modescope.viz.figures import detached, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from modescope.probes.multiverse import Multiverse, MultiverseNode, View

FONT_SIZE = 7.0
CHAR_WIDTH = 0.61  # DejaVu Sans Mono advance, in font sizes
GAP = 0.06  # horizontal gap between columns, in columns
OTHER_COLOUR = "#d4d4d4"
NOT_COMPARABLE_COLOUR = "#bdbdbd"
DIFFERENCE_LIMIT = 4.0  # bits: the colour scale saturates beyond ±4


def visible_text(text: str) -> str:
    """A token's text with invisible characters drawn: ⏎ newline, ⇥ tab, ␣ leading/trailing space."""
    shown = text.replace("\r", "").replace("\n", "⏎").replace("\t", "⇥")
    stripped = shown.strip(" ")
    if not stripped:
        return "␣" * len(shown) if shown else "∅"
    lead = len(shown) - len(shown.lstrip(" "))
    trail = len(shown) - len(shown.rstrip(" "))
    return "␣" * lead + stripped + "␣" * trail


@dataclass
class Panel:
    """How to draw one tree: block sizes, colours and labels."""

    title: str
    size: Callable[[MultiverseNode], float]  # joint probability the block's height stands for
    colour: Callable[[MultiverseNode], Any]
    label: Callable[[MultiverseNode], str]
    children: Callable[[MultiverseNode], list[MultiverseNode]]
    hatched: Callable[[MultiverseNode], bool] = lambda node: False


def _text_colour(colour: Any) -> str:
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _fit(text: str, width_pt: float) -> str | None:
    """The label cut to a column width (None when not even two characters fit)."""
    room = int(width_pt / (CHAR_WIDTH * FONT_SIZE)) - 1
    if room < 2:
        return None
    return text if len(text) <= room else text[: room - 1] + "…"


def _draw(ax: Any, panel: Panel, top: MultiverseNode, depth: int, points_per_unit: tuple[float, float]) -> None:
    """Draw the tree below `top` (which fills the height 0..1) into `ax`, in columns 0..depth-1."""
    from matplotlib.patches import Rectangle

    x_pt, y_pt = points_per_unit
    top_size = panel.size(top) or 1.0
    column_width = 1.0 - GAP

    def block(x: float, y: float, height: float, colour: Any, text: str, hatch: bool = False) -> None:
        if height * y_pt < 0.3:  # under a third of a point: invisible anyway
            return
        ax.add_patch(
            Rectangle(
                (x, y),
                column_width,
                height,
                facecolor=colour,
                edgecolor="white",
                linewidth=0.4,
                hatch="////" if hatch else None,
            )
        )
        if height * y_pt >= FONT_SIZE * 1.25 and (fitted := _fit(text, column_width * x_pt)):
            ax.text(
                x + 0.03,
                y + height / 2,
                fitted,
                fontsize=FONT_SIZE,
                family="DejaVu Sans Mono",
                va="center",
                ha="left",
                color=_text_colour(colour),
                clip_on=True,
                in_layout=False,
            )

    def below(node: MultiverseNode, column: int, y_top: float, span: float) -> None:
        """Draw the children of `node`, whose block spans y_top - span .. y_top."""
        if column >= depth:
            return
        scale = 1.0 / top_size
        y = y_top
        for child in panel.children(node):
            # clipped to what is left of the parent's block, as the HTML page does: in the difference view a step
            # only one model has is sized by that model alone, so siblings may add up to more than the parent
            height = max(0.0, min(panel.size(child) * scale, y - (y_top - span)))
            y -= height
            block(column, y, height, panel.colour(child), panel.label(child), panel.hatched(child))
            below(child, column + 1, y + height, height)
        rest = span - (y_top - y)
        if node.expanded and rest * y_pt >= 0.3:
            share = rest / (panel.size(node) * scale) if panel.size(node) > 0 else 0.0
            block(column, y - rest, rest, OTHER_COLOUR, f"other {share:.0%}")

    below(top, 0, 1.0, 1.0)


def _axes(ax: Any, title: str, depth: int, first_depth: int) -> None:
    ax.set_xlim(0, depth - GAP)
    ax.set_ylim(0, 1)
    ax.set_xticks([k + (1 - GAP) / 2 for k in range(depth)], [str(first_depth + k + 1) for k in range(depth)])
    ax.set_xlabel("step (token) below the view")
    ax.set_ylabel("joint probability (relative to the view)")
    ax.set_title(title.replace("$", r"\$"), fontsize=9, loc="left")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _model_panel(tree: Multiverse, model: int, cmap: Any) -> Panel:
    cutoff = tree.cutoff if len(tree.models) > 1 else 0.0

    def conditional(node: MultiverseNode) -> float:
        value = node.values[model]
        return 0.0 if value is None else value.prob

    def label(node: MultiverseNode) -> str:
        value = node.values[model]
        text = "⟨end⟩" if node.eos else visible_text((value.text if value else None) or node.text)
        return f"{text} {conditional(node):.0%}"

    return Panel(
        title=tree.models[model],
        size=lambda n: n.joint(model) or 0.0,
        colour=lambda n: "#3a3a3a" if n.eos else cmap(0.12 + 0.78 * conditional(n)),
        label=label,
        children=lambda n: sorted(n.listed_children(model, cutoff), key=lambda c: -(c.joint(model) or 0.0)),
    )


def log_ratio(node: MultiverseNode, tuned: int = 1, base: int = 0) -> float | None:
    """log2(p_tuned / p_base) of a node's joint probability; None when either model has no value."""
    p, q = node.joint(tuned), node.joint(base)
    if p is None or q is None:
        return None
    if p == 0 or q == 0:
        return math.inf if p > 0 else -math.inf if q > 0 else 0.0
    return math.log2(p / q)


def mean_joint(node: MultiverseNode, tuned: int = 1, base: int = 0) -> float:
    """Block size in the difference view: the mean of the two joints (the one present if the other is None)."""
    present = [j for j in (node.joint(tuned), node.joint(base)) if j is not None]
    return sum(present) / len(present) if present else 0.0


def _difference_panel(tree: Multiverse, norm: Any, cmap: Any) -> Panel:
    def colour(node: MultiverseNode) -> Any:
        ratio = log_ratio(node)
        if ratio is None:
            return NOT_COMPARABLE_COLOUR
        return cmap(norm(max(-DIFFERENCE_LIMIT, min(DIFFERENCE_LIMIT, ratio))))

    def label(node: MultiverseNode) -> str:
        ratio = log_ratio(node)
        text = "⟨end⟩" if node.eos else visible_text(node.text)
        return text if ratio is None else f"{text} {ratio:+.1f}"

    return Panel(
        title=f"difference: log2 p({tree.models[1]}) / p({tree.models[0]})",
        size=mean_joint,
        colour=colour,
        label=label,
        children=lambda n: sorted(n.children, key=lambda c: -mean_joint(c)),
        hatched=lambda n: log_ratio(n) is None,
    )


def _prompt_tail(tree: Multiverse, limit: int = 60) -> str:
    text = tree.prompt + tree.prefix
    return repr(text if len(text) <= limit else "…" + text[-(limit - 1) :])


def plot_multiverse(tree: Multiverse, paths: list[Path], view: View | None = None) -> list[Path]:
    """Write `multiverse_figure` to each path (format from the suffix: .svg, .png, .pdf); returns the paths."""
    fig = multiverse_figure(tree, view)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    detached(fig)
    return paths


def multiverse_figure(tree: Multiverse, view: View | None = None) -> Figure:
    """The block multiverse: one panel per model; with two or more models a difference panel (second model vs
    first) below them. With `view`, every panel is renormalized to that node."""
    import matplotlib
    from matplotlib.colors import TwoSlopeNorm

    plt = pyplot()

    count = len(tree.models)
    top = view.node if view is not None else tree.root
    depth = max(1, tree.depth - top.depth)
    column_in = 1.75
    width = max(7.0, depth * column_in + 1.4)
    rows = 2 if count > 1 else 1
    fig = plt.figure(figsize=(width * count if count > 1 else width, 7.5 * rows + 0.6), layout="constrained")
    grid = fig.add_gridspec(rows, count)
    blues = plt.get_cmap("Blues")
    panels: list[tuple[Any, Panel]] = []
    for m in range(count):
        ax = fig.add_subplot(grid[0, m])
        panel = _model_panel(tree, m, blues)
        forwards = tree.nodes_expanded[m] if m < len(tree.nodes_expanded) else 0
        _axes(ax, f"{panel.title}  ({forwards} forwards)", depth, top.depth)
        panels.append((ax, panel))
    if count > 1:
        ax = fig.add_subplot(grid[1, :])
        norm = TwoSlopeNorm(vmin=-DIFFERENCE_LIMIT, vcenter=0.0, vmax=DIFFERENCE_LIMIT)
        cmap = plt.get_cmap("RdBu_r")
        panel = _difference_panel(tree, norm, cmap)
        _axes(ax, panel.title + "   (block size: mean of the two; hatched grey: not comparable)", depth, top.depth)
        bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.8, pad=0.01)
        bar.set_label(f"log2(p_{tree.models[1]} / p_{tree.models[0]}), clipped at ±{DIFFERENCE_LIMIT:.0f} bits")
        panels.append((ax, panel))
    title = f"block multiverse · prompt {_prompt_tail(tree)} · depth {tree.depth} · cutoff {tree.cutoff:g}"
    if view is not None and view.node is not tree.root:
        title += f"\nview: {view.node.path_text()!r} · p = {view.joint:.3g} · {view.bits_gained:.2f} bits gained"
    if tree.truncated:
        title += "\n" + tree.notices[0]
    fig.suptitle(title.replace("$", r"\$"), fontsize=10, x=0.01, ha="left")
    fig.canvas.draw()  # settle the layout, so that each panel's size in points is final
    for ax, panel in panels:
        box = ax.get_window_extent()
        _draw(ax, panel, top, depth, (box.width * 72 / fig.dpi / depth, box.height * 72 / fig.dpi))
    fig.set_layout_engine("none")  # blocks and labels must not move the panels measured above
    return fig
