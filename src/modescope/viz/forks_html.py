"""Forking tokens as a self-contained HTML page: the mainline, each token shaded by how much the outcome
distribution shifts there, and per position the outcomes with their probabilities."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from modescope.viz.offline import offline_csp
from modescope.viz.precision_html import capabilities_note
from modescope.viz.tokens_html import STYLE

if TYPE_CHECKING:
    from modescope.probes.forks import ForkResult

FORK_STYLE = """
.fork { border-radius: 2px; }
table.positions { border-collapse: collapse; font-size: 0.85rem; margin-top: 0.8rem; }
table.positions td, table.positions th { padding: 0.15rem 0.6rem; border-bottom: 1px solid #eee; text-align: left; }
.bar { display: inline-block; height: 0.7rem; background: #c0392b; vertical-align: middle; }
.outcome { font-family: monospace; white-space: pre-wrap; }
"""


def _shade(score: float) -> str:
    """White for no shift, deep red for a complete change of the outcome distribution."""
    return f"hsl(0, 75%, {100 - 45 * max(0.0, min(1.0, score)):.0f}%)"


def _outcomes(distribution: dict[str, float], top: int = 4) -> str:
    ranked = sorted(distribution.items(), key=lambda kv: -kv[1])[:top]
    return "<br>".join(f'{p:.0%} <span class="outcome">{html.escape(repr(text))}</span>' for text, p in ranked)


def forks_section(model: str, result: ForkResult) -> str:
    tokens = "".join(
        f'<span class="fork" style="background:{_shade(p.change_score)}" title="position {p.position}: shift '
        f'{p.change_score:.2f}">{html.escape(p.token)}</span>'
        for p in result.positions
    )
    rows = "".join(
        f"<tr><td>{p.position}</td><td class='outcome'>{html.escape(repr(p.token))}</td>"
        f'<td><span class="bar" style="width:{100 * p.change_score:.0f}px"></span> {p.change_score:.2f}</td>'
        f"<td>{_outcomes(p.outcomes)}</td></tr>"
        for p in result.positions
    )
    return (
        f"<section><h2>{html.escape(model)}</h2><div class='completion'>{tokens}</div>"
        "<table class='positions'><tr><th>position</th><th>token</th><th>shift (TV)</th>"
        f"<th>outcomes when resampling from here</th></tr>{rows}</table></section>"
    )


def forks_page(results: dict[str, ForkResult], prompt: str) -> str:
    sections = "".join(forks_section(model, result) for model, result in results.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{offline_csp()}<title>modescope forking tokens</title>
<style>{STYLE}{FORK_STYLE}</style></head>
<body>
<h1>Forking tokens</h1>
{capabilities_note(*(r.capabilities for r in results.values()))}
<div class="prompt">{html.escape(prompt)}</div>
<p class="meta">Each mainline token is shaded by how far the outcome distribution moves there (total variation
from the previous position); the table lists the outcomes of continuations resampled from each position.</p>
{sections}
</body></html>
"""
