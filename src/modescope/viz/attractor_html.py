"""HTML for attractor experiments: the mainline and every perturbed completion, one per row.

Each row repeats the mainline tokens before the perturbation point, then the perturbed span (the inserted
text, on a white background with a border), then the greedy continuation, every generated token coloured by
its raw probability (green likely, red unlikely; hover for the number). The part of a continuation that
rejoins the mainline is underlined and marked "↩ rejoined". The page is self-contained (no script) and
escapes all model text.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from modescope.viz.offline import offline_csp
from modescope.viz.precision_html import capabilities_note
from modescope.viz.tokens_html import STYLE, _token_span

if TYPE_CHECKING:
    from modescope.engine.decode import TokenRecord
    from modescope.probes.attractors import AttractorResult, PerturbedRun

ATTRACTOR_STYLE = """
.model { margin-bottom: 1.6rem; }
.rows { display: grid; grid-template-columns: minmax(14rem, max-content) 1fr; gap: 0.25rem 0.8rem;
  align-items: start; }
.label { font-size: 0.8rem; color: #333; line-height: 1.35; }
.label .name { font-family: monospace; font-weight: 600; }
.text { background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 0.3rem 0.5rem;
  font-family: monospace; white-space: pre-wrap; line-height: 1.7; }
.row.mainline .text { border-color: #888; }
.inserted { background: #fff; border: 1.5px solid #222; border-radius: 3px; padding: 0 1px; }
.rejoined { text-decoration: underline; text-decoration-thickness: 2px; text-underline-offset: 3px;
  font-weight: 600; }
.rejoin-mark { font-size: 0.7rem; color: #1a5fb4; font-family: system-ui, sans-serif; margin: 0 0.2rem; }
.yes { color: #1d7a1d; } .no { color: #b3261e; }
"""


def _number(value: float, fmt: str = ".3g") -> str:
    return "—" if math.isnan(value) else format(value, fmt)


def _tokens(records: Sequence[TokenRecord]) -> str:
    return "".join(_token_span(r) for r in records)


def _row(kind: str, label: str, details: str, text: str) -> str:
    return (
        f'<div class="row {kind}" style="display: contents">'
        f'<div class="label"><span class="name">{html.escape(label)}</span><br>{details}</div>'
        f'<div class="text">{text}</div></div>'
    )


def _run_row(result: AttractorResult, run: PerturbedRun) -> str:
    position = run.perturbation.position
    tokens = run.continuation.tokens
    point = run.reconvergence_tokens
    divergent = tokens if point is None else tokens[:point]
    text = _tokens(result.mainline.tokens[:position])
    text += f'<span class="inserted" title="perturbed span">{html.escape(run.inserted_text)}</span>'
    text += _tokens(divergent)
    if point is not None:
        text += '<span class="rejoin-mark">↩ rejoined</span>'
        text += f'<span class="rejoined">{_tokens(tokens[point:])}</span>'
    if point is None:
        back = '<span class="no">never rejoined</span>'
    else:
        back = f'<span class="yes">rejoined after {point} tokens ({run.reconvergence_chars} chars)</span>'
    ending = '<span class="yes">ending converged</span>' if run.converged else '<span class="no">ending differs</span>'
    details = (
        f"{html.escape(run.perturbation.kind)} at token {position}<br>{back}<br>"
        f"divergent confidence {_number(run.divergent_confidence)}<br>"
        f"{ending} (similarity {_number(run.edit_similarity, '.2f')})"
    )
    return _row("run", run.perturbation.label, details, text)


def _model_section(result: AttractorResult) -> str:
    rejoined = sum(r.reconverged for r in result.runs)
    summary = (
        f'<table class="metrics"><tr><td>basin share</td><td>{_number(result.basin_share, ".0%")}'
        f" ({rejoined} of {len(result.runs)} rejoin)</td></tr>"
        f"<tr><td>ending share</td><td>{_number(result.ending_share, '.0%')}</td></tr>"
        f"<tr><td>median distance</td><td>{_number(result.median_distance, '.3g')} tokens</td></tr></table>"
    )
    mainline = _row(
        "mainline",
        "mainline",
        f"greedy, {len(result.mainline.tokens)} tokens",
        _tokens(result.mainline.tokens),
    )
    rows = "".join(_run_row(result, r) for r in result.runs)
    return (
        f'<section class="model"><h2>{html.escape(result.model)}</h2>{summary}'
        f'<div class="rows">{mainline}{rows}</div></section>'
    )


def attractor_page(results: list[AttractorResult], prompt: str) -> str:
    """A self-contained HTML page: per model, the mainline and every perturbed completion, one per row."""
    sections = "".join(_model_section(r) for r in results)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{offline_csp()}<title>modescope attractors</title>
<style>{STYLE}{ATTRACTOR_STYLE}</style></head>
<body>
<h1>Attractors: perturb the greedy completion, regenerate, see whether it comes back</h1>
{capabilities_note(*(r.capabilities for r in results))}
<div class="prompt">{html.escape(prompt)}</div>
<p class="meta">Each row: the mainline up to the perturbation, the perturbed span (boxed, white), then the
greedy continuation. Colour: probability under the raw model (green likely, red unlikely); hover a token for
its probability. Underlined after “↩ rejoined”: the continuation is word for word the mainline again.</p>
{sections}
</body></html>
"""
