"""Playground-style HTML for sampled completions: every token coloured by its probability.

Green is likely, red unlikely (under the raw model); hovering a token shows the top alternatives at that
position with their probabilities. Completions of each model stand side by side. The page is
self-contained (no script, no external file) and escapes all model text.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from modescope.viz.offline import offline_csp
from modescope.viz.precision_html import capabilities_note

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from modescope.engine.decode import Continuation, TokenRecord
    from modescope.probes.sampling import SamplingResult

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1b1b1b; background: #fafafa; }
h1 { font-size: 1.2rem; } h2 { font-size: 1rem; margin: 0.2rem 0 0.6rem; }
.prompt { white-space: pre-wrap; background: #fff; border: 1px solid #ddd; padding: 0.6rem; font-family: monospace; }
.models { display: grid; grid-template-columns: repeat(var(--models), minmax(18rem, 1fr)); gap: 1rem; }
.completion { background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 0.5rem; margin-bottom: 0.6rem;
  font-family: monospace; white-space: pre-wrap; line-height: 1.6; }
.tok { position: relative; border-radius: 2px; cursor: default; }
.tok .alts { display: none; position: absolute; left: 0; top: 1.5em; z-index: 10; background: #222; color: #eee;
  padding: 0.4rem 0.6rem; border-radius: 4px; white-space: pre; font-size: 0.8rem; line-height: 1.35; }
.tok:hover .alts { display: block; }
.tok:hover { outline: 1px solid #333; }
.special { color: #777; font-style: italic; }
.chosen { color: #ffd479; }
table.metrics { border-collapse: collapse; font-size: 0.85rem; margin-bottom: 0.8rem; }
table.metrics td { padding: 0.1rem 0.6rem 0.1rem 0; }
.meta { color: #555; font-size: 0.85rem; }
"""


def probability_colour(probability: float) -> str:
    """Background colour from red (unlikely) through yellow to green (likely)."""
    hue = 120.0 * max(0.0, min(1.0, probability))
    return f"hsl({hue:.0f}, 75%, 82%)"


def _token_span(record: TokenRecord) -> str:
    raw = math.exp(record.raw_logprob)
    lines = [f"p = {raw:.4f} (sampled from: {math.exp(record.logprob):.4f}), entropy {record.entropy_bits:.2f} bits"]
    for alt in record.top:
        marker = "▶" if alt.id == record.id else " "
        lines.append(f"{marker} {math.exp(alt.logprob):7.4f}  {alt.text!r}")
    alts = html.escape("\n".join(lines))
    text = html.escape(record.text if not record.special else f"⟨{record.text}⟩")
    cls = "tok special" if record.special else "tok"
    return f'<span class="{cls}" style="background:{probability_colour(raw)}">{text}<span class="alts">{alts}</span></span>'


def completion_html(completion: Continuation) -> str:
    tokens = "".join(_token_span(t) for t in completion.tokens)
    return f'<div class="completion">{tokens}</div>'


def sampling_page(result: SamplingResult) -> str:
    """A self-contained HTML page of every model's completions."""
    columns = []
    for model in result.models:
        metrics = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{value:.4g}</td></tr>" for name, value in model.metrics.items()
        )
        completions = "".join(completion_html(c) for c in model.completions)
        columns.append(
            f'<section><h2>{html.escape(model.model)}</h2><table class="metrics">{metrics}</table>{completions}</section>'
        )
    settings = ", ".join(f"{k}={v}" for k, v in result.sampler.model_dump().items() if k != "order")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{offline_csp()}<title>modescope samples</title><style>{STYLE}</style></head>
<body>
<h1>{result.n} completions per model</h1>
{capabilities_note(result.capabilities)}
<div class="prompt">{html.escape(result.prompt)}</div>
<p class="meta">max tokens {result.max_tokens}, seed {result.seed}; sampler: {html.escape(settings)};
order: {html.escape(" → ".join(result.sampler.order))}. Colour: probability under the raw model (green likely,
red unlikely); hover a token for the alternatives.</p>
<div class="models" style="--models: {len(result.models)}">{"".join(columns)}</div>
</body></html>
"""


def probability_figure(result: SamplingResult) -> Figure:
    """One panel per model: each token's probability under the raw model against its position, one line per
    completion (NaN where a server gave no probabilities)."""
    from modescope.viz.figures import pyplot

    count = len(result.models)
    fig, axes = pyplot().subplots(1, count, figsize=(5.0 * count, 3.4), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], result.models, strict=True):
        for completion in model.completions:
            probabilities = [math.exp(t.raw_logprob) for t in completion.tokens]
            ax.plot(range(len(probabilities)), probabilities, color="C0", alpha=0.35, linewidth=1)
        ax.set_title(model.model, fontsize=10)
        ax.set_xlabel("token position")
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("probability under the raw model")
    fig.tight_layout()
    return fig
