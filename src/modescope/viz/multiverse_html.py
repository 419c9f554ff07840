"""The block multiverse as one interactive, self-contained HTML page.

A tree of continuations is drawn as nested blocks: one column per token position, block height = joint
probability of the path, siblings stacked in descending probability inside their parent's span, and the
mass nobody expanded as a grey "other" block under the listed children. There is one view per model and,
when the expansion holds a union tree, a difference view (the second model against the first) coloured by
log2 of the ratio of their conditional probabilities. Clicking a block makes it the view root (it fills the
height, its descendants rescale by 1/joint); hovering shows the full path and every number.

The data travels inside the page as JSON and is drawn by a small vanilla script: no network at view time,
and all model text reaches the page through textContent or html.escape, never as markup.

Hooks for browser tests: every node block has class `block` and `data-path` (child indices from the root
joined by "/", root = ""); grey unexpanded blocks have class `rest` and `data-rest-of` (the parent's path);
`#view-root` carries `data-path` and `data-joint`; `#up` and `#root` are the controls; view tabs carry
`data-view` ("model:0", "model:1", ..., "difference"); `window.multiverseReady` is true once drawn.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from modescope.jsonsafe import finite
from modescope.viz.offline import offline_csp
from modescope.viz.precision_html import capabilities_note

# The base rules match tokens_html.STYLE; they are repeated rather than imported because that module pulls
# in torch (1.4 s), and this page is written from plain JSON.
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2rem 1.5rem; color: #1b1b1b; background: #fafafa; }
h1 { font-size: 1.2rem; }
.prompt { white-space: pre-wrap; background: #fff; border: 1px solid #ddd; padding: 0.6rem; font-family: monospace;
  max-height: 9rem; overflow: auto; }
.meta { color: #555; font-size: 0.85rem; }
.mono { font-family: ui-monospace, monospace; white-space: pre-wrap; }
.prefix-line { font-size: 0.85rem; margin: 0.4rem 0 0; }
.notices { background: #fff4d6; border: 1px solid #e0b84c; border-radius: 4px; padding: 0.4rem 0.7rem;
  font-size: 0.85rem; margin: 0.6rem 0; }
.notices ul { margin: 0.2rem 0 0; padding-left: 1.2rem; }
.bar { display: flex; flex-wrap: wrap; gap: 0.4rem 1rem; align-items: center; margin: 0.7rem 0 0.5rem; }
.bar button { font: inherit; font-size: 0.85rem; padding: 0.22rem 0.7rem; border: 1px solid #bbb;
  background: #fff; border-radius: 4px; cursor: pointer; }
.bar button.active { background: #1b1b1b; color: #fff; border-color: #1b1b1b; }
.bar button:disabled { opacity: 0.4; cursor: default; }
.tabs, .controls { display: flex; gap: 0.3rem; flex-wrap: wrap; }
#view-root { font-size: 0.85rem; background: #fff; border: 1px solid #ddd; border-radius: 4px;
  padding: 0.35rem 0.6rem; margin-bottom: 0.4rem; }
#view-root .path { font-family: ui-monospace, monospace; white-space: pre-wrap; }
#view-root .stats { color: #444; margin-left: 0.6rem; white-space: nowrap; }
.faint { color: #999; }
.tk { border-right: 1px dotted #bbb; }
#legend { display: flex; flex-wrap: wrap; gap: 0.3rem 1.4rem; align-items: center; font-size: 0.78rem;
  color: #333; margin: 0.3rem 0 0.5rem; }
.scale { display: inline-flex; align-items: center; gap: 0.35rem; }
.ramp { display: inline-block; width: 11rem; height: 0.7rem; border: 1px solid #ccc; vertical-align: middle; }
.swatch { display: inline-block; width: 1.1rem; height: 0.8rem; border: 1px solid #ccc; vertical-align: middle;
  margin-right: 0.3rem; }
#axis { position: relative; height: 1.1rem; font-size: 0.72rem; color: #777; }
#axis span { position: absolute; top: 0; padding-left: 0.35rem; white-space: nowrap; overflow: hidden; }
#drawing-wrap { overflow-x: auto; }
#drawing { position: relative; background: #fff; box-shadow: 0 0 0 1px #e3e3e3; }
.block, .rest { position: absolute; box-sizing: border-box; overflow: hidden; white-space: nowrap;
  display: flex; align-items: center; gap: 0.4rem; padding: 0 0.35rem; font-size: 12px; line-height: 14px;
  border-right: 2px solid #fff; border-bottom: 1px solid #fff; }
.block { cursor: pointer; }
.block.thin, .rest.thin { border-bottom: 0; padding: 0; }
.block:hover { outline: 2px solid #111; outline-offset: -2px; z-index: 2; }
.block .tok { font-family: ui-monospace, monospace; overflow: hidden; text-overflow: ellipsis; min-width: 0; }
.block .p { flex: none; font-size: 11px; opacity: 0.75; font-variant-numeric: tabular-nums; }
.block.eos::after { content: ""; position: absolute; right: 0; top: 0; bottom: 0; width: 5px; background: #111; }
.block.nc, .swatch.nc { background: repeating-linear-gradient(45deg, #ececec 0 4px, #b9b9b9 4px 6px); color: #333; }
.rest, .swatch.other { background: #d6d6d6; color: #555; font-style: italic; font-size: 11px; }
.swatch.eos { background: linear-gradient(90deg, #eee 70%, #111 70%); }
#tooltip { position: fixed; display: none; z-index: 20; max-width: 34rem; background: #222; color: #eee;
  padding: 0.45rem 0.65rem; border-radius: 4px; font-size: 0.8rem; line-height: 1.4; pointer-events: none; }
#tooltip .mono { color: #fff; display: block; margin-bottom: 0.3rem; max-height: 12rem; overflow: hidden; }
#tooltip .tk { border-right-color: #666; }
#tooltip .faint { color: #999; }
#tooltip table { border-collapse: collapse; }
#tooltip td, #tooltip th { padding: 0 0.7rem 0 0; text-align: left; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
#tooltip th { color: #aaa; font-weight: normal; }
"""

# The drawing script. It works on one normalized node shape for every view, so layout, clicks and tooltips
# do not care whether a tree is a model's own or the union; it only ever writes model text as textContent.
SCRIPT = r"""
(() => {
"use strict";
const data = JSON.parse(document.getElementById("multiverse-data").textContent);
const $ = (id) => document.getElementById(id);
const drawing = $("drawing"), axis = $("axis"), header = $("view-root"), tooltip = $("tooltip");
const MIN_PX = 0.5, LABEL_PX = 14, MAX_BITS = 4, MIN_COL = 78, MAX_COL = 230;
const SEQUENTIAL = ["#f7fcf0", "#d7efd1", "#a8ddb5", "#6cc3c8", "#3497c4", "#0c62a3"];
const DIVERGING = ["#2166ac", "#67a9cf", "#d1e5f0", "#efefef", "#fddbc7", "#ef8a62", "#b2182b"];
const NEUTRAL = [232, 232, 232];
const models = data.models || [];

const isNum = (x) => typeof x === "number" && isFinite(x);
// The mean of the two compared models is additive over siblings, so the difference view nests exactly;
// where one model is not comparable its partner's value stands in.
function pair(values) {
  const a = values ? values[0] : null, b = values ? values[1] : null;
  if (isNum(a) && isNum(b)) return (a + b) / 2;
  return isNum(a) ? a : isNum(b) ? b : 0;
}
function childPath(parent, index) { return parent.path === "" ? String(index) : parent.path + "/" + index; }

function normalize(raw, parent, index, union) {
  const node = { raw, parent, index, text: raw.text || "", eos: !!raw.eos, union,
    path: parent ? childPath(parent, index) : "", depth: parent ? parent.depth + 1 : 0 };
  if (union) {
    node.size = pair(raw.joints);
    node.rest = pair(raw.unexpanded);
    node.expanded = (raw.entropy_bits || []).some(isNum);
    const p0 = raw.probs ? raw.probs[0] : null, p1 = raw.probs ? raw.probs[1] : null;
    node.comparable = isNum(p0) && isNum(p1);
    // unclipped (it may be infinite where one model gives 0); only the colour is clipped
    node.ratio = node.comparable ? (p0 === p1 ? 0 : Math.log2(p1 / p0)) : null;
  } else {
    node.size = isNum(raw.joint) ? raw.joint : 0;
    node.rest = isNum(raw.unexpanded) ? raw.unexpanded : 0;
    node.expanded = isNum(raw.entropy_bits);
    node.cond = isNum(raw.prob) ? raw.prob : null;
  }
  node.children = (raw.children || []).map((c, i) => normalize(c, node, i, union));
  // descending size, whatever order the producer used; data-path keeps the original indices
  node.sorted = node.children.slice().sort((a, b) => b.size - a.size);
  const opens = node.expanded && (node.children.length > 0 || node.rest > 0);
  node.reach = node.children.reduce((m, c) => Math.max(m, c.reach), node.depth + (opens ? 1 : 0));
  return node;
}

const views = {};
const tabs = [];
(data.trees || []).forEach((tree, i) => {
  views["model:" + i] = { key: "model:" + i, label: tree.model, root: normalize(tree.root, null, 0, false) };
  tabs.push("model:" + i);
});
if (data.union && models.length >= 2) {
  views.difference = { key: "difference", label: "difference: " + models[1] + " vs " + models[0],
    root: normalize(data.union, null, 0, true), union: true };
  tabs.push("difference");
}
if (!tabs.length) {
  drawing.textContent = "This expansion holds no trees.";
  window.multiverseReady = true;
  return;
}
const state = { view: views[tabs[0]], node: views[tabs[0]].root };

// ---- formatting: model text is made visible, never interpreted ----
function visible(text, eos) {
  if (text === "") return eos ? "⟨end⟩" : "∅";
  let s = text.replace(/\r/g, "␍").replace(/\t/g, "⇥").replace(/\n/g, "⏎");
  const lead = s.length - s.replace(/^ +/, "").length;
  s = "␣".repeat(lead) + s.slice(lead);
  const trail = s.length - s.replace(/ +$/, "").length;
  return s.slice(0, s.length - trail) + "␣".repeat(trail);
}
function num(x) {
  if (!isNum(x)) return "—";
  if (x === 0 || Math.abs(x) >= 1e-4) return String(Number(x.toPrecision(4)));
  return x.toExponential(2);
}
function pct(x) {
  if (!isNum(x)) return "—";
  const v = 100 * x;
  return (v >= 10 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toPrecision(2)) + "%";
}
function signed(x, digits) {
  if (typeof x !== "number" || isNaN(x)) return "—";
  const size = isFinite(x) ? Math.abs(x).toFixed(digits) : "∞";
  return (x > 0 ? "+" : x < 0 ? "−" : "±") + size;
}
function bits(x) { return signed(x, 2) + " bits"; }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
// path tokens as spans with a dotted boundary, newlines kept as real line breaks after their ⏎
function pathSpans(nodes, into, cls) {
  for (const n of nodes) {
    const shown = visible(n.text, n.eos).replace(/⏎/g, "⏎\n");
    into.appendChild(el("span", "tk" + (cls ? " " + cls : ""), shown));
  }
}
function ancestry(node, stop) {
  const out = [];
  for (let n = node; n && n !== stop; n = n.parent) if (n.parent) out.push(n);
  return out.reverse();
}

// ---- colours ----
function ramp(stops, t) {
  const x = Math.max(0, Math.min(1, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  const a = rgb(stops[i]), b = rgb(stops[i + 1]);
  return a.map((v, k) => Math.round(v + (b[k] - v) * f));
}
function rgb(hex) { return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); }
function css(c) { return "rgb(" + c.join(",") + ")"; }
function ink(c) { return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] < 140 ? "#fff" : "#1b1b1b"; }
function fillOf(node) {
  if (!node.parent) return NEUTRAL;  // the tree root is certain in every model: colour would only distract
  if (node.union) return node.comparable ? ramp(DIVERGING, (node.ratio + MAX_BITS) / (2 * MAX_BITS)) : null;
  return ramp(SEQUENTIAL, node.cond === null ? 0 : node.cond);
}

// ---- drawing ----
let layout = { colW: MIN_COL, scale: 1, height: 400 };
function drawingHeight() {
  const top = drawing.getBoundingClientRect().top + window.scrollY;
  return Math.max(320, Math.min(1600, Math.floor(window.innerHeight - top - 20)));
}
function render() {
  const root = state.node;
  const columns = root.reach - root.depth + 1;
  const width = Math.max(300, $("drawing-wrap").clientWidth - 2);
  const colW = Math.max(MIN_COL, Math.min(MAX_COL, Math.floor(width / columns)));
  const height = drawingHeight();
  layout = { colW, height, scale: root.size > 0 ? height / root.size : 0 };
  const frag = document.createDocumentFragment();
  place(root, 0, 0, height, frag);
  drawing.replaceChildren(frag);
  drawing.style.width = colW * columns + "px";
  drawing.style.height = height + "px";
  axis.replaceChildren();
  axis.style.width = drawing.style.width;
  for (let c = 0; c < columns; c++) {
    const d = root.depth + c;
    const label = el("span", "", d === 0 ? "start" : "token " + d);
    label.style.cssText = "left:" + c * colW + "px;width:" + colW + "px";
    axis.appendChild(label);
  }
  showHeader();
}
function place(node, col, y, h, frag) {
  if (h < MIN_PX) return;
  frag.appendChild(block(node, col, y, h));
  const bottom = y + h;
  let cy = y;
  for (const child of node.sorted) {
    const ch = Math.min(child.size * layout.scale, bottom - cy);
    if (ch >= MIN_PX) place(child, col + 1, cy, ch, frag);
    cy += Math.max(0, ch);
  }
  if (node.expanded && node.rest > 0) {
    const rh = Math.min(node.rest * layout.scale, bottom - cy);
    if (rh >= MIN_PX) frag.appendChild(restBlock(node, col + 1, cy, rh));
  }
}
function box(e, col, y, h) {
  e.style.left = col * layout.colW + "px";
  e.style.top = y + "px";
  e.style.width = layout.colW + "px";
  e.style.height = h + "px";
  if (h < 4) e.classList.add("thin");
}
function block(node, col, y, h) {
  const e = el("div", "block" + (node.eos ? " eos" : ""));
  e.dataset.path = node.path;
  box(e, col, y, h);
  const fill = fillOf(node);
  if (fill === null) e.classList.add("nc");
  else { e.style.background = css(fill); e.style.color = ink(fill); }
  if (h >= LABEL_PX) {
    e.appendChild(el("span", "tok", node.parent ? visible(node.text, node.eos) : data.prefix ? "prefix" : "start"));
    if (node.parent) {
      const tag = node.union ? (node.comparable ? signed(node.ratio, 1) : "n/c") : pct(node.cond);
      e.appendChild(el("span", "p", tag));
    }
  }
  return e;
}
function restBlock(node, col, y, h) {
  const e = el("div", "rest");
  e.dataset.restOf = node.path;
  box(e, col, y, h);
  if (h >= LABEL_PX) e.textContent = "other " + pct(node.size > 0 ? node.rest / node.size : null);
  return e;
}
function find(path) {
  let n = state.view.root;
  if (path === "") return n;
  for (const i of path.split("/")) n = n.children[Number(i)];
  return n;
}

// ---- header, tabs, legend ----
function showHeader() {
  const node = state.node;
  header.dataset.path = node.path;
  header.dataset.joint = String(node.size);
  header.replaceChildren(el("b", "", "View root: "));
  const path = el("span", "path");
  if (data.prefix) path.appendChild(el("span", "faint", visible(data.prefix, false)));
  const steps = ancestry(node, null);
  if (steps.length) pathSpans(steps, path);
  else path.appendChild(el("span", "faint", data.prefix ? "" : "(start of the continuation)"));
  header.appendChild(path);
  const mean = node.union ? " (mean of the two models)" : "";
  const gained = node.size > 0 ? (-Math.log2(node.size)).toFixed(2) : "∞";
  header.appendChild(el("span", "stats",
    "joint p = " + num(node.size) + mean + " · " + gained + " bits gained · depth " + node.depth));
  $("up").disabled = $("root").disabled = !node.parent;
}
function legend() {
  const box = $("legend");
  box.replaceChildren();
  const scale = el("span", "scale");
  const bar = el("span", "ramp");
  if (state.view.union) {
    bar.style.background = "linear-gradient(90deg," + DIVERGING.join(",") + ")";
    scale.append(el("span", "", "log2(p " + models[1] + " / p " + models[0] + "):  −4"), bar,
      el("span", "", "+4 bits  (blue = tuned lower, red = tuned higher; clipped at ±4)"));
  } else {
    bar.style.background = "linear-gradient(90deg," + SEQUENTIAL.join(",") + ")";
    scale.append(el("span", "", "conditional probability:  0"), bar, el("span", "", "1"));
  }
  box.appendChild(scale);
  const item = (cls, text) => { const s = el("span"); s.append(el("span", "swatch " + cls), text); box.appendChild(s); };
  item("other", "other: mass not expanded (below cutoff or over the node budget)");
  item("eos", "black edge: the continuation ends (EOS)");
  if (state.view.union) item("nc", "not comparable: a model has no token with this text here");
  box.appendChild(el("span", "faint", "height = joint probability" + (state.view.union ? " (mean of the two)" : "") +
    " · click a block to zoom, Esc / ← = up"));
}
// a new view keeps the view root when the other tree has the same path of texts
function sameTexts(node, root) {
  let n = root;
  for (const step of ancestry(node, null)) {
    const next = n.children.find((c) => c.text === step.text && c.eos === step.eos);
    if (!next) break;
    n = next;
  }
  return n;
}
function setView(key) {
  const view = views[key];
  state.node = sameTexts(state.node, view.root);
  state.view = view;
  for (const b of document.querySelectorAll("[data-view]")) b.classList.toggle("active", b.dataset.view === key);
  legend();
  hideTip();
  render();
}
function zoom(node) { if (node) { state.node = node; hideTip(); render(); } }

// ---- tooltip ----
function hideTip() { tooltip.style.display = "none"; }
function row(table, cells, head) {
  const tr = el("tr");
  for (const c of cells) tr.appendChild(el(head ? "th" : "td", "", c));
  table.appendChild(tr);
}
function tipFor(target) {
  const root = state.node;
  tooltip.replaceChildren();
  const path = el("span", "mono");
  const context = ancestry(root, null).slice(-6);
  if (context.length) pathSpans(context, path, "faint");
  if (target.classList.contains("rest")) {
    const node = find(target.dataset.restOf);
    pathSpans(ancestry(node, root), path);
    path.appendChild(el("span", "faint", " …"));
    tooltip.appendChild(path);
    tooltip.appendChild(el("div", "", "other (not expanded): " + pct(node.size > 0 ? node.rest / node.size : null) +
      " of the parent · joint " + num(node.rest) + " (" + pct(node.rest / root.size) + " of view)"));
    return;
  }
  const node = find(target.dataset.path);
  pathSpans(ancestry(node, root), path);
  tooltip.appendChild(path);
  const table = el("table");
  const rel = root.size > 0 ? node.size / root.size : null;
  if (!node.union) {
    row(table, ["conditional p", num(node.cond)]);
    row(table, ["joint p", num(node.size) + "  (" + pct(rel) + " of view)"]);
    row(table, ["entropy of next token", node.expanded ? num(node.raw.entropy_bits) + " bits" : "not expanded"]);
  } else {
    row(table, ["model", "conditional p", "joint p", "entropy (bits)"], true);
    models.forEach((m, i) => row(table, [m, num(node.raw.probs[i]), num(node.raw.joints[i]),
      num((node.raw.entropy_bits || [])[i])]));
  }
  tooltip.appendChild(table);
  if (node.union) {
    tooltip.appendChild(el("div", "", "log2 ratio " + models[1] + " / " + models[0] + ": " +
      (node.comparable ? bits(node.ratio) : "not comparable")));
    tooltip.appendChild(el("div", "", "joint (mean): " + num(node.size) + "  (" + pct(rel) + " of view)"));
  }
  if (node.eos) tooltip.appendChild(el("div", "", "■ the continuation ends here (EOS)"));
}
function moveTip(ev) {
  const pad = 14, w = tooltip.offsetWidth, h = tooltip.offsetHeight;
  const x = ev.clientX + pad + w > window.innerWidth ? ev.clientX - pad - w : ev.clientX + pad;
  const y = ev.clientY + pad + h > window.innerHeight ? Math.max(0, ev.clientY - pad - h) : ev.clientY + pad;
  tooltip.style.left = Math.max(0, x) + "px";
  tooltip.style.top = y + "px";
}

// ---- wiring ----
const tabBox = $("tabs");
for (const key of tabs) {
  const b = el("button", "", views[key].label);
  b.dataset.view = key;
  b.addEventListener("click", () => setView(key));
  tabBox.appendChild(b);
}
$("up").addEventListener("click", () => zoom(state.node.parent));
$("root").addEventListener("click", () => zoom(state.view.root));
drawing.addEventListener("click", (ev) => {
  const b = ev.target.closest(".block");
  if (!b) return;
  const node = find(b.dataset.path);
  zoom(node === state.node ? node.parent : node);
});
drawing.addEventListener("mouseover", (ev) => {
  const t = ev.target.closest(".block, .rest");
  if (!t) return hideTip();
  tipFor(t);
  tooltip.style.display = "block";
  moveTip(ev);
});
drawing.addEventListener("mousemove", (ev) => { if (tooltip.style.display === "block") moveTip(ev); });
drawing.addEventListener("mouseleave", hideTip);
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" || ev.key === "ArrowLeft" || ev.key === "Backspace") zoom(state.node.parent);
  else if (ev.key === "Home") zoom(state.view.root);
});
let pending = false;
window.addEventListener("resize", () => {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
});
setView(tabs[0]);
window.multiverseReady = true;
})();
"""


def _embedded_json(data: dict[str, Any]) -> str:
    """The data as JSON that cannot end its <script> element: every "<" is written as the escape \\u003c."""
    text = json.dumps(finite(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c")


def _meta(data: dict[str, Any]) -> str:
    models = [str(m) for m in data.get("models", [])]
    names = ", ".join(
        f'<span class="mono">{html.escape(m)}</span>' + (" (reference)" if i == 0 and len(models) > 1 else "")
        for i, m in enumerate(models)
    )
    trees = "; ".join(
        f"{html.escape(str(t.get('model', '')))}: {int(t.get('nodes_expanded', 0))} nodes expanded"
        f" in {float(t.get('seconds') or 0.0):.1f} s"
        for t in data.get("trees", [])
    )
    settings = (
        f"depth {data.get('depth')}, cutoff {data.get('cutoff')}, max nodes {data.get('max_nodes')}, "
        f"merge {'on' if data.get('merge') else 'off'}"
    )
    return f'<p class="meta">Models: {names}. {html.escape(settings)}. {trees}.</p>'


def _notices(data: dict[str, Any]) -> str:
    notices = [str(n) for n in data.get("notices", [])]
    if data.get("truncated") and not notices:
        notices = ["the expansion was truncated"]
    if not notices:
        return ""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notices)
    return f'<div class="notices" id="notices"><b>Notices</b><ul>{items}</ul></div>'


def multiverse_html(data: dict[str, Any], title: str | None = None) -> str:
    """A self-contained interactive page of an expansion (the dict of `Multiverse.to_dict()`)."""
    heading = html.escape(title or "Block multiverse")
    prefix = str(data.get("prefix") or "")
    prefix_line = (
        f'<p class="prefix-line">Branch the tree starts from: <span class="mono">{html.escape(prefix)}</span></p>'
        if prefix
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{offline_csp(scripts=True)}<title>{heading}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style></head>
<body>
<h1>{heading}</h1>
{capabilities_note(data.get("capabilities") or {})}
<div class="prompt">{html.escape(str(data.get("prompt", "")))}</div>
{prefix_line}
{_meta(data)}
{_notices(data)}
<div class="bar"><div class="tabs" id="tabs"></div>
<div class="controls"><button id="up" type="button">↑ up</button><button id="root" type="button">⤒ root</button></div>
</div>
<div id="view-root" data-path="" data-joint="1"></div>
<div id="legend"></div>
<div id="drawing-wrap"><div id="axis"></div><div id="drawing"></div></div>
<div id="tooltip"></div>
<script type="application/json" id="multiverse-data">{_embedded_json(data)}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def write_multiverse_html(data: dict[str, Any], path: Path, title: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(multiverse_html(data, title), encoding="utf-8")
