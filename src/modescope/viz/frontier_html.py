"""The diversity-quality frontier as a self-contained interactive page: a scatter per model drawn in SVG by a
small script (no library, no network), axes chosen from every measure, remedies switched on and off, and the
numbers and example texts of a point on hover or click; below, the table of every point.

Model text reaches the page only through `textContent`, so it never becomes markup.
"""

from __future__ import annotations

import html
from typing import Any

from modescope import precision
from modescope.jsonsafe import finite
from modescope.viz.frontier_plot import LABELS
from modescope.viz.offline import offline_csp
from modescope.viz.precision_html import precision_note

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2rem; color: #1b1b1b; background: #fafafa; }
h1 { font-size: 1.2rem; margin: 0 0 0.3rem; } h2 { font-size: 1.02rem; margin: 1rem 0 0.3rem; }
.meta { color: #555; font-size: 0.85rem; } label { font-size: 0.85rem; margin-right: 0.8rem; }
.panels { display: flex; flex-wrap: wrap; gap: 1rem; } .panel { background: #fff; border: 1px solid #ddd; border-radius: 6px; }
svg text { font-size: 11px; fill: #333; } .axis line, .axis path { stroke: #999; }
circle.point { cursor: pointer; } circle.front { stroke: #000; stroke-width: 2; }
#detail { background: #fff; border: 1px solid #d6d6d0; border-radius: 6px; padding: 0.5rem 0.8rem; margin: 0.8rem 0;
  min-height: 3rem; font-size: 0.85rem; } #detail .text { white-space: pre-wrap; font-family: ui-monospace, monospace;
  background: #fafaf7; border: 1px solid #e4e4de; padding: 0.3rem 0.5rem; margin: 0.2rem 0; font-size: 0.8rem; }
table { border-collapse: collapse; font-size: 0.8rem; background: #fff; }
th, td { border: 1px solid #e0e0dc; padding: 0.2rem 0.45rem; text-align: left; } th { background: #efefeb; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.front td:first-child { font-weight: 600; }
"""

SCRIPT = r"""
const DATA = JSON.parse(document.getElementById('frontier').textContent);
const LABELS = JSON.parse(document.getElementById('labels').textContent);
const NS = 'http://www.w3.org/2000/svg';
const W = 460, H = 340, M = {l: 58, r: 14, t: 14, b: 42};
const remedies = [...new Set(DATA.points.map(p => p.remedy))];
const palette = ['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2','#7f7f7f','#bcbd22','#17becf'];
const color = r => r === 'direct' ? '#000' : palette[remedies.filter(x => x !== 'direct').indexOf(r) % 10];
const shown = new Set(remedies);
const xSel = document.getElementById('x'), ySel = document.getElementById('y');
function el(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function html(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}
const mean = (p, m) => (p.metrics[m] || {}).mean;
const fmt = v => v === null || v === undefined ? '–' : Number(v).toPrecision(3);
function ci(e) { return !e || e.mean === null ? '–' : fmt(e.mean) + (e.low !== null ? ' [' + fmt(e.low) + ', ' + fmt(e.high) + ']' : ''); }
function front(points, x, y) {
  return points.map(p => {
    const a = mean(p, x), b = mean(p, y);
    if (a == null || b == null) return false;
    return !points.some(q => q !== p && mean(q, x) != null && mean(q, y) != null &&
      mean(q, x) >= a && mean(q, y) >= b && (mean(q, x) > a || mean(q, y) > b));
  });
}
function detail(p) {
  const box = document.getElementById('detail');
  box.replaceChildren(html('b', p.model + ' · ' + p.label));
  const list = html('div');
  for (const m of DATA.measures) {
    const d = (p.vs_direct || {})[m];
    const diff = d && d.mean !== null ? ' (vs direct ' + (d.mean >= 0 ? '+' : '') + fmt(d.mean) + ', p=' + fmt(d.wilcoxon_p) + ')' : '';
    list.append(html('div', (LABELS[m] || m) + ': ' + ci(p.metrics[m]) + diff));
  }
  box.append(list);
  for (const ex of p.examples || []) {
    box.append(html('div', 'prompt: ' + ex.prompt, 'meta'));
    for (const t of ex.texts) box.append(html('div', t, 'text'));
  }
}
function draw() {
  const x = xSel.value, y = ySel.value, panels = document.getElementById('panels');
  panels.replaceChildren();
  for (const model of DATA.models) {
    const points = DATA.points.filter(p => p.model === model && shown.has(p.remedy));
    const onFront = front(points, x, y);
    const xs = points.map(p => mean(p, x)).filter(v => v != null), ys = points.map(p => mean(p, y)).filter(v => v != null);
    const box = html('div', null, 'panel');
    box.append(html('h2', model));
    const svg = el('svg', {width: W, height: H});
    box.append(svg); panels.append(box);
    if (!xs.length || !ys.length) { svg.append(el('text', {x: 20, y: 30}, 'no point measures both axes')); continue; }
    const pad = (lo, hi) => hi > lo ? [lo - 0.06 * (hi - lo), hi + 0.06 * (hi - lo)] : [lo - 0.5, hi + 0.5];
    const [x0, x1] = pad(Math.min(...xs), Math.max(...xs)), [y0, y1] = pad(Math.min(...ys), Math.max(...ys));
    const sx = v => M.l + (v - x0) / (x1 - x0) * (W - M.l - M.r), sy = v => H - M.b - (v - y0) / (y1 - y0) * (H - M.t - M.b);
    const axis = el('g', {class: 'axis'});
    axis.append(el('line', {x1: M.l, y1: H - M.b, x2: W - M.r, y2: H - M.b}), el('line', {x1: M.l, y1: M.t, x2: M.l, y2: H - M.b}));
    for (let i = 0; i <= 4; i++) {
      const vx = x0 + i * (x1 - x0) / 4, vy = y0 + i * (y1 - y0) / 4;
      axis.append(el('text', {x: sx(vx), y: H - M.b + 14, 'text-anchor': 'middle'}, fmt(vx)));
      axis.append(el('text', {x: M.l - 4, y: sy(vy) + 4, 'text-anchor': 'end'}, fmt(vy)));
    }
    axis.append(el('text', {x: (M.l + W - M.r) / 2, y: H - 6, 'text-anchor': 'middle'}, LABELS[x] || x));
    axis.append(el('text', {x: 12, y: (M.t + H - M.b) / 2, transform: 'rotate(-90 12 ' + (M.t + H - M.b) / 2 + ')', 'text-anchor': 'middle'}, LABELS[y] || y));
    svg.append(axis);
    for (const r of remedies) {
      const line = points.filter(p => p.remedy === r && mean(p, x) != null && mean(p, y) != null)
        .sort((a, b) => (a.strength || 0) - (b.strength || 0));
      if (line.length > 1) svg.append(el('polyline', {points: line.map(p => sx(mean(p, x)) + ',' + sy(mean(p, y))).join(' '),
        fill: 'none', stroke: color(r), 'stroke-width': 1.5}));
    }
    points.forEach((p, i) => {
      if (mean(p, x) == null || mean(p, y) == null) return;
      const c = el('circle', {cx: sx(mean(p, x)), cy: sy(mean(p, y)), r: p.remedy === 'direct' ? 7 : 5, fill: color(p.remedy),
        class: 'point' + (onFront[i] ? ' front' : '')});
      c.append(el('title', {}, p.label + (onFront[i] ? ' (on the frontier)' : '')));
      c.addEventListener('mouseenter', () => detail(p)); c.addEventListener('click', () => detail(p));
      svg.append(c);
      if (p.strength !== null) svg.append(el('text', {x: sx(mean(p, x)) + 6, y: sy(mean(p, y)) - 6}, String(p.strength)));
    });
  }
}
const toggles = document.getElementById('remedies');
for (const r of remedies) {
  const label = html('label'), box = document.createElement('input');
  box.type = 'checkbox'; box.checked = true;
  box.addEventListener('change', () => { box.checked ? shown.add(r) : shown.delete(r); draw(); });
  const swatch = html('span', '■ '); swatch.style.color = color(r);
  label.append(box, swatch, r); toggles.append(label);
}
for (const sel of [xSel, ySel]) for (const m of DATA.measures) sel.append(new Option(LABELS[m] || m, m));
xSel.value = DATA.diversity; ySel.value = DATA.quality;
xSel.addEventListener('change', draw); ySel.addEventListener('change', draw);
draw();
"""


def _script_json(data: Any) -> str:
    import json

    return json.dumps(finite(data), ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")


def _cell(estimate: dict[str, Any] | None) -> str:
    if not estimate or estimate.get("mean") is None:
        return "–"
    if estimate.get("low") is None:
        return f"{estimate['mean']:.3g}"
    return f"{estimate['mean']:.3g} [{estimate['low']:.3g}, {estimate['high']:.3g}]"


def points_table(payload: dict[str, Any]) -> str:
    """Every point: model, remedy, strength, each measure's mean [95% CI], and whether it is on the frontier."""
    measures = payload["measures"]
    head = "".join(f"<th>{html.escape(LABELS.get(m, m))}</th>" for m in measures)
    rows = []
    for p in payload["points"]:
        cells = "".join(f"<td class='num'>{html.escape(_cell(p['metrics'].get(m)))}</td>" for m in measures)
        mark = "yes" if p.get("on_front") else ""
        rows.append(
            f"<tr class='{'front' if p.get('on_front') else ''}'><td>{html.escape(p['model'])}</td>"
            f"<td>{html.escape(p['label'])}</td><td>{mark}</td>{cells}</tr>"
        )
    return f"<table><tr><th>model</th><th>point</th><th>on the frontier</th>{head}</tr>{''.join(rows)}</table>"


def frontier_page(payload: dict[str, Any]) -> str:
    """The whole page for a `modescope.probes.frontier.summarize` payload."""
    count = len(payload.get("prompts", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{offline_csp(scripts=True)}<title>modescope frontier</title><style>{STYLE}</style></head>
<body>
<h1>Diversity-quality frontier</h1>
{precision_note(precision.recorded(payload))}
<p class="meta">{count} prompts · every point a mean over the prompts (95% bootstrap intervals in the table) ·
ringed points are on the model's Pareto frontier for the chosen axes · hover or click a point for its numbers and texts</p>
<div><label>diversity axis <select id="x"></select></label><label>quality axis <select id="y"></select></label></div>
<div id="remedies"></div>
<div id="panels" class="panels"></div>
<div id="detail" class="meta">hover over a point</div>
<h2>Every point</h2>
{points_table(payload)}
<script type="application/json" id="frontier">{_script_json(payload)}</script>
<script type="application/json" id="labels">{_script_json(LABELS)}</script>
<script>{SCRIPT}</script>
</body></html>
"""
