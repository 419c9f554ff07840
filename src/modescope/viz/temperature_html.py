"""Self-contained pages of a temperature sweep and of the "is it just temperature?" fits: a table and the
figure (an inline PNG). No script; all text escaped."""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from modescope.viz.notebook import TABLE_PAGE_STYLE, figure_png
from modescope.viz.offline import offline_csp
from modescope.viz.precision_html import capabilities_note
from modescope.viz.temperature_plot import fits_figure, sweep_figure

if TYPE_CHECKING:
    from modescope.probes.temperature import TemperatureFits, TemperatureSweep

SWEEP_COLUMNS = [
    ("mean_entropy_bits", "mean token entropy (bits)"),
    ("distinct_2", "distinct-2"),
    ("self_bleu", "self-BLEU"),
    ("embedding_diversity", "embedding diversity"),
    ("equivalence_classes", "equivalence classes"),
]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: float | None, spec: str = ".3g") -> str:
    """A measured number, or a dash where it was not measured (NaN or missing)."""
    return "–" if value is None or not math.isfinite(value) else format(value, spec)


def _page(title: str, heading: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{offline_csp(images=True)}<title>{_e(title)}</title>
<style>{TABLE_PAGE_STYLE}</style></head>
<body>
<h1>{_e(heading)}</h1>
{body}
</body></html>
"""


def sweep_page(sweep: TemperatureSweep) -> str:
    """The page `TemperatureSweep.to_html()` returns: the metrics against temperature and every point."""
    head = "<tr><th>model</th><th>temperature</th>" + "".join(f"<th>{_e(label)}</th>" for _, label in SWEEP_COLUMNS)
    rows = "".join(
        f"<tr><td>{_e(p.model)}</td><td>{p.temperature:g}</td>"
        + "".join(f"<td>{_number(p.metrics.get(key))}</td>" for key, _ in SWEEP_COLUMNS)
        + "</tr>"
        for p in sweep.points
    )
    figure = figure_png(sweep_figure(sweep), "diversity metrics against temperature, one line per model")
    body = f"""{capabilities_note(sweep.capabilities)}
<div class="prompt">{_e(sweep.prompt)}</div>
<p class="meta">Every temperature samples with the same seed; entropy is that of the raw model along the sampled
tokens.</p>
{figure}
<h2>Every point</h2>
<table>{head}{rows}</table>"""
    return _page("modescope temperature sweep", f"Diversity at {len(sweep.temperatures)} temperatures", body)


def fits_page(result: TemperatureFits) -> str:
    """The page `TemperatureFits.to_html()` returns: τ* per fit, the notices and the divergence curves."""
    head = "<tr><th>form</th><th>tempered model</th><th>to match</th><th>τ*</th><th>D(τ*) bits</th>"
    head += "<th>D(1) bits</th><th>explained</th></tr>"
    rows = "".join(
        f"<tr><td>{_e(f.form)}</td><td>{_e(f.source)}</td><td>{_e(f.target)}</td><td>{_number(f.tau)}</td>"
        f"<td>{_number(f.divergence_at_tau, '.4g')}</td><td>{_number(f.divergence_at_one, '.4g')}</td>"
        f"<td>{_number(f.explained, '.0%')}</td></tr>"
        for f in result.fits
    )
    notices = "".join(f"<li>{_e(n)}</li>" for n in result.notices)
    figure = figure_png(fits_figure(result.fits), "divergence against temperature for each fit") if result.fits else ""
    body = f"""<div class="prompt">{_e(result.prompt)}</div>
<p class="meta">base {_e(result.base)}, tuned {_e(result.tuned)}. τ* is the temperature that brings the tempered
model closest to the other (KL divergence in bits); "explained" is the share of the divergence at τ = 1 that it
removes, 1 − D(τ*) / D(1).</p>
<table>{head}{rows}</table>
{f'<ul class="meta">{notices}</ul>' if notices else ""}
{figure}"""
    return _page("modescope temperature fit", "Is it just temperature?", body)
