"""A self-contained page of an exact answer-set distribution: the bars, each model's summary, the divergences
between models and every answer's probabilities. No script; the figure is an inline PNG; all text escaped."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from modescope.viz.distribution_plot import distribution_figure
from modescope.viz.notebook import TABLE_PAGE_STYLE, figure_png
from modescope.viz.offline import offline_csp
from modescope.viz.precision_html import capabilities_note

if TYPE_CHECKING:
    from modescope.probes.distribution import DistributionResult


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _summary(result: DistributionResult) -> str:
    head = "<tr><th>model</th><th>coverage</th><th>entropy (bits)</th><th>effective answers</th><th>top answer</th>"
    head += "<th>its share</th><th>tree nodes</th></tr>"
    rows = "".join(
        f"<tr><td>{_e(r.model)}{' (' + _e(r.bounds) + ')' if r.bounds else ''}</td><td>{r.coverage:.2%}</td>"
        f"<td>{r.entropy_bits:.3f}</td><td>{r.effective_outcomes:.1f}</td><td>{_e(repr(r.top1))}</td>"
        f"<td>{r.top1_share:.1%}</td><td>{r.stats.nodes}</td></tr>"
        for r in result.results
    )
    return f"<table>{head}{rows}</table>"


def _comparisons(result: DistributionResult) -> str:
    if not result.comparisons:
        return ""
    head = "<tr><th>pair</th><th>KL(a‖b) bits</th><th>KL(b‖a) bits</th><th>JS bits</th><th>TV</th></tr>"
    rows = "".join(
        f"<tr><td>{_e(c.a)} vs {_e(c.b)}</td><td>{c.kl_ab_bits:.4f}</td><td>{c.kl_ba_bits:.4f}</td>"
        f"<td>{c.js_bits:.4f}</td><td>{c.tv:.4f}</td></tr>"
        for c in result.comparisons
    )
    return f"<h2>Divergences within the set</h2><table>{head}{rows}</table>"


def _answers(result: DistributionResult) -> str:
    head = "<tr><th>answer</th>" + "".join(f"<th>{_e(r.model)}: p in set</th>" for r in result.results)
    head += "".join(f"<th>{_e(r.model)}: mass</th>" for r in result.results) + "</tr>"
    rows = []
    for i, text in enumerate(o.text for o in result.results[0].outcomes):
        shares = "".join(f"<td>{r.outcomes[i].prob:.4%}</td>" for r in result.results)
        masses = "".join(f"<td>{r.outcomes[i].mass:.3e}</td>" for r in result.results)
        rows.append(f"<tr><td>{_e(repr(text))}</td>{shares}{masses}</tr>")
    return f"<h2>Every answer</h2><table>{head}{''.join(rows)}</table>"


def distribution_page(result: DistributionResult) -> str:
    """The page `DistributionResult.to_html()` returns (and a notebook shows inline)."""
    figure = figure_png(distribution_figure(result), "probability of each answer within the set, per model")
    capabilities = {r.model: r.capabilities for r in result.results}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{offline_csp(images=True)}<title>modescope distribution</title>
<style>{TABLE_PAGE_STYLE}</style></head>
<body>
<h1>Exact distribution over {len(result.candidates)} answers</h1>
{capabilities_note(capabilities)}
<div class="prompt">{_e(result.prompt)}</div>
<p class="meta">tokenizations: {_e(result.tokenizations)}; leading space: {_e(result.leading_space)};
per-token temperature {result.temperature:g}. Coverage is the absolute mass of the whole set after the prompt;
"p in set" is renormalized within it.</p>
{_summary(result)}
{_comparisons(result)}
<h2>Probability within the set</h2>
{figure}
{_answers(result)}
</body></html>
"""
