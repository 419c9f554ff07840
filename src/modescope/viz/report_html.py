"""One self-contained HTML report of a suite run, assembled from the store.

Every probe rendered its figures and pages when it ran, so the report only assembles them: a header with
the run, an overview of each probe's headline numbers per model, then one section per probe with its
prompt, settings, full metrics, figures (PNG as data URLs) and interactive pages (sandboxed iframes whose
`srcdoc` holds the page). Nothing is fetched at view time, and all model and user text is escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import math
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from modescope import precision
from modescope.browser import HEADLESS_FLAGS, find_chromium
from modescope.errors import ModescopeError
from modescope.store import Metric, ProbeOutput, Store
from modescope.version import __version__
from modescope.viz.notebook import framed
from modescope.viz.offline import offline_csp
from modescope.viz.precision_html import precision_note, precision_tag

# The numbers the overview shows per probe kind (all metrics are in each probe's own table).
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "frontier": [("direct: embedding_diversity", "direct emb. diversity"), ("direct: fluency", "direct fluency")],
    "distribution": [
        ("top1", "top-1"),
        ("top1_share", "top-1 share"),
        ("entropy_bits", "H bits"),
        ("coverage", "coverage"),
    ],
    "sample": [
        ("mean_entropy_bits", "token H bits"),
        ("distinct_2", "distinct-2"),
        ("embedding_diversity", "emb. diversity"),
        ("equivalence_classes", "classes"),
        ("intra_similarity", "intra sim."),  # prompt-set sample probes over 2+ models (cross-model homogeneity)
    ],
    "temperature": [
        ("tau_star_token", "τ* token"),
        ("tau_star_outcome", "τ* outcome"),
        ("explained_outcome", "explained"),
    ],
    "attractor": [("basin_share", "basin share"), ("median_distance", "median tokens back")],
    "forks": [("largest_shift", "largest shift"), ("fork_position", "at token")],
    "multiverse": [
        ("root_entropy_bits", "first-step H bits"),
        ("top_first_step", "top first step"),
        ("nodes", "blocks"),
    ],
}
FRAME_HEIGHT = {
    "multiverse": 980,
    "sample": 720,
    "attractor": 720,
    "forks": 640,
    "prompts.html": 1100,
    "frontier.html": 1300,
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #1b1b1b; background: #f6f6f4; }
header, main, nav { max-width: 1500px; margin: 0 auto; padding: 0 1.5rem; }
header { padding-top: 1.2rem; }
h1 { font-size: 1.45rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin: 0 0 0.4rem; }
h3 { font-size: 0.95rem; margin: 1rem 0 0.4rem; color: #444; }
.meta { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.85rem; background: #fff; }
th, td { border: 1px solid #e0e0dc; padding: 0.25rem 0.55rem; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
th { background: #efefeb; }
section.probe { background: #fff; border: 1px solid #deded8; border-radius: 6px; padding: 1rem 1.2rem;
  margin: 1.2rem 0; }
.prompt { white-space: pre-wrap; font-family: ui-monospace, monospace; background: #fafaf7; border: 1px solid #e4e4de;
  padding: 0.5rem 0.7rem; font-size: 0.85rem; }
.kind { display: inline-block; font-size: 0.75rem; background: #2f4858; color: #fff; border-radius: 3px;
  padding: 0.05rem 0.4rem; margin-left: 0.4rem; vertical-align: middle; }
.cached { background: #8a8a80; }
.notes { color: #8a5a00; font-size: 0.85rem; }
img.figure { max-width: 100%; border: 1px solid #eee; margin: 0.4rem 0; }
iframe { width: 100%; border: 1px solid #ddd; border-radius: 4px; background: #fafafa; }
nav ol { columns: 3; font-size: 0.9rem; }
.overview td, .overview th { text-align: left; }
code { font-size: 0.85rem; }
.bounds-tag { display: inline-block; font-size: 0.72rem; background: #8a5a00; color: #fff; border-radius: 3px;
  padding: 0.02rem 0.35rem; margin-left: 0.3rem; font-weight: normal; white-space: nowrap; }
.bounds { font-size: 0.85rem; margin: 0.6rem 0; }
.bounds table { margin-top: 0.3rem; }
"""
SHOWN_BOUNDED_OUTCOMES = 8  # outcomes listed with their interval per bounded model, by lower bound


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _format(metric: Metric | None) -> str:
    if metric is None:
        return "–"
    if metric.text is not None and metric.value is None:
        return repr(metric.text)
    if metric.value is None:
        return "n/a"
    value = metric.value
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return f"{text} ({metric.text!r})" if metric.text is not None else text


def utc_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "not finished"
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _percent(p: float) -> str:
    v = 100 * p
    return f"{v:.1f}%" if v >= 10 else f"{v:.2f}%" if v >= 0.1 or v == 0 else f"{v:#.2g}%"


def _interval(low: float, high: float) -> str:
    return f"[{_percent(low)}, {_percent(high)}]"


def _bounded(kind: str, payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The models of a distribution probe whose masses are bounds (behind a top-k server), by name: each
    with its bounds label and stored result (outcomes with mass = lower, mass_upper = upper bound)."""
    if kind != "distribution":
        return {}
    return {r["model"]: r for r in payload.get("results", []) if isinstance(r, dict) and r.get("bounds")}


def _tag(label: str, title: str = "") -> str:
    hint = f' title="{_e(title)}"' if title else ""
    return f'<span class="bounds-tag"{hint}>{_e(label)}</span>'


def _coverage_bounds(result: dict[str, Any]) -> tuple[float, float]:
    outcomes = result.get("outcomes", [])
    upper = math.fsum(o["mass"] if o.get("mass_upper") is None else o["mass_upper"] for o in outcomes)
    return float(result.get("coverage") or 0.0), upper


BOUNDS_HINT = "masses are [lower, upper] bounds; the numbers within the set come from the lower bounds"


def _metrics_table(output: ProbeOutput, bounded: dict[str, dict[str, Any]] | None = None) -> str:
    """Metric rows, one column per model (or model pair). A bounded model's column is labelled, and its
    numbers (and those of the pairs it is in) are marked as coming from the lower bounds."""
    bounded = bounded or {}
    models = list(dict.fromkeys(m.model for m in output.metrics))
    names = list(dict.fromkeys(m.name for m in output.metrics))
    cell = {(m.model, m.name): m for m in output.metrics}
    pairs = {f"{c.get('a')} vs {c.get('b')}": (c.get("a"), c.get("b")) for c in output.payload.get("comparisons", [])}
    from_bounds = {model for model in models if set(pairs.get(model, (model,))) & set(bounded)}

    def value(model: str, name: str) -> str:
        if name == "coverage" and model in bounded:
            return _e(_interval(*_coverage_bounds(bounded[model])))
        text = _e(_format(cell.get((model, name))))
        return f"{text} (bounds)" if model in from_bounds and (model, name) in cell else text

    head = "".join(
        f"<th>{_e(model or 'all')}{_tag(bounded[model]['bounds'], BOUNDS_HINT) if model in bounded else ''}</th>"
        for model in models
    )
    rows = "".join(
        f"<tr><td>{_e(name)}</td>" + "".join(f"<td>{value(model, name)}</td>" for model in models) + "</tr>"
        for name in names
    )
    return f"<table><tr><th>metric</th>{head}</tr>{rows}</table>"


def _estimate(e: dict[str, Any] | None) -> str:
    if not e or e.get("mean") is None:
        return "–"
    if e.get("low") is None or e.get("high") is None:
        return f"{e['mean']:.4g}"
    return f"{e['mean']:.4g} [{e['low']:.3g}, {e['high']:.3g}]"


def _prompt_set_table(payload: dict[str, Any]) -> str:
    """A prompt-set probe's numbers in one table: per metric, each model's mean over the prompts with its 95%
    bootstrap interval, and for each pair the paired difference, its Wilcoxon p and on how many prompts the
    second model is higher; then what each pair compares directly (divergences, τ*)."""
    models, pairs = payload.get("models", []), payload.get("pairs", [])
    head = "".join(f"<th>{_e(m)} mean [95% CI]</th>" for m in models)
    head += "".join(
        f"<th>{_e(p['b'])} − {_e(p['a'])} [95% CI]</th><th>Wilcoxon p</th><th>{_e(p['b'])} higher</th>" for p in pairs
    )
    rows = []
    for name in payload.get("metric_names", []):
        cells = [_estimate(payload["per_model"].get(m, {}).get(name)) for m in models]
        for pair in pairs:
            d = pair["metrics"].get(name) or {}
            p_value = "–" if d.get("wilcoxon_p") is None else f"{d['wilcoxon_p']:.2g}"
            higher = f"{d.get('b_higher', 0)} of {d.get('n', 0)}" if d.get("n") else "–"
            cells += [_estimate(d), p_value, higher]
        rows.append(f"<tr><td>{_e(name)}</td>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    table = f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"
    compared = [(p, name, e) for p in pairs for name, e in p.get("comparisons", {}).items()]
    if compared:
        lines = "".join(
            f"<tr><td>{_e(p['a'])} vs {_e(p['b'])}</td><td>{_e(name)}</td><td>{_e(_estimate(e))}</td></tr>"
            for p, name, e in compared
        )
        table += f"<h3>Compared per prompt</h3><table><tr><th>pair</th><th>measure</th><th>mean [95% CI]</th></tr>{lines}</table>"
    count = len(payload.get("prompts", []))
    return f"<p class='meta'>over {count} prompts</p>{table}"


def _homogeneity_section(output: ProbeOutput) -> str:
    """A prompt-set sample probe's cross-model homogeneity: the heatmap, the matrix with each model's share of
    prompts above the threshold, and each pair's inter similarity; nothing when the payload has none."""
    from modescope.viz.homogeneity_plot import homogeneity_html

    data = output.payload.get("homogeneity")
    if not data:
        return ""
    figure = output.artifacts.get("homogeneity.png")
    image = _artifact("homogeneity.png", figure.mime, figure.data, "sample") if figure is not None else ""
    return f"<h3>Cross-model homogeneity</h3>{image}{homogeneity_html(data)}"


def _bounds_section(bounded: dict[str, dict[str, Any]]) -> str:
    """Per bounded model: its label, coverage interval and the top outcomes' mass intervals."""
    parts = []
    for model, result in bounded.items():
        low, high = _coverage_bounds(result)
        outcomes = sorted(result.get("outcomes", []), key=lambda o: -(o.get("mass") or 0.0))
        rows = "".join(
            f'<tr title="{_e(o["text"])}: absolute mass between {_e(_percent(o["mass"]))} and '
            f'{_e(_percent(o["mass_upper"]))}"><td>{_e(repr(o["text"]))}</td>'
            f"<td>{_e(_interval(o['mass'], o['mass_upper']))}</td></tr>"
            for o in outcomes[:SHOWN_BOUNDED_OUTCOMES]
            if o.get("mass") is not None and o.get("mass_upper") is not None
        )
        parts.append(
            f'<div class="bounds"><b>{_e(model)}</b>{_tag(result["bounds"], BOUNDS_HINT)} '
            f"coverage {_e(_interval(low, high))}; {_e(BOUNDS_HINT)} (error bars in the figure)."
            f"<table><tr><th>outcome</th><th>absolute mass [lower, upper]</th></tr>{rows}</table></div>"
        )
    return "".join(parts)


def _artifact(name: str, mime: str, data: bytes, kind: str) -> str:
    if mime.startswith("image/"):
        encoded = base64.b64encode(data).decode("ascii")
        return f'<img class="figure" alt="{_e(name)}" src="data:{_e(mime)};base64,{encoded}">'
    if mime == "text/html":
        height = FRAME_HEIGHT.get(name, FRAME_HEIGHT.get(kind, 640))
        # sandboxed: the page may run its own script but cannot reach the report or the network
        return framed(data.decode("utf-8"), name, height)
    return f"<p class='meta'>{_e(name)} ({_e(mime)}, {len(data)} bytes) is not shown</p>"


def _numbers(kind: str, output: ProbeOutput, bounded: dict[str, dict[str, Any]]) -> str:
    """The probe's numbers: a frontier's points, a prompt set's estimates, or one prompt's metrics."""
    if kind == "frontier":
        from modescope.viz.frontier_html import points_table

        count = len(output.payload.get("prompts", []))
        return f"<p class='meta'>over {count} prompts · 95% bootstrap intervals</p>{points_table(output.payload)}"
    if "per_model" in output.payload:
        return _prompt_set_table(output.payload)
    return _metrics_table(output, bounded)


def _probe_section(probe: dict[str, Any], output: ProbeOutput) -> str:
    params = dict(probe["params"])
    prompt = params.pop("rendered_prompt", "")
    title = params.get("title") or probe["name"]
    shown = {
        k: v
        for k, v in params.items()
        if k not in ("name", "title", "prompt", "prompt_file", "variables", "kind") and v not in (None, [], {}, "")
    }
    settings = ", ".join(f"{k} = {v}" for k, v in shown.items())
    badge = '<span class="kind cached">from cache</span>' if probe["from_cache"] else ""
    notes = "".join(f"<p class='notes'>{_e(n)}</p>" for n in output.notes)
    notes += precision_note(precision.recorded(output.payload))
    bounded = _bounded(probe["kind"], output.payload)
    similar = _homogeneity_section(output)
    artifacts = "".join(
        _artifact(name, a.mime, a.data, probe["kind"])
        for name, a in output.artifacts.items()
        if not (similar and name == "homogeneity.png")  # shown in its own section
    )
    return f"""
<section class="probe" id="probe-{_e(probe["name"])}">
<h2>{_e(title)} <span class="kind">{_e(probe["kind"])}</span>{badge}</h2>
<p class="meta">probe <code>{_e(probe["name"])}</code> · {probe["seconds"]:.1f} s · {_e(settings)}</p>
<div class="prompt">{_e(prompt)}</div>
{notes}
<h3>Metrics</h3>
{_numbers(probe["kind"], output, bounded)}
{similar}
{_bounds_section(bounded)}
<h3>Figures and views</h3>
{artifacts}
</section>"""


def _overview(probes: list[dict[str, Any]], outputs: dict[str, ProbeOutput], models: list[str]) -> str:
    """One row per probe, one column per model: the probe kind's headline numbers."""
    rows = []
    for probe in probes:
        output = outputs[probe["name"]]
        cell = {(m.model, m.name): m for m in output.metrics}
        heads = HEADLINES.get(probe["kind"], [])
        bounded = _bounded(probe["kind"], output.payload)
        columns = list(models)
        if probe["kind"] == "temperature":  # its numbers belong to model pairs
            columns = list(dict.fromkeys(m.model for m in output.metrics if m.name.startswith(("tau", "explained"))))
        cells = []
        for model in columns:
            parts = [f"{label} {_format(cell[(model, name)])}" for name, label in heads if (model, name) in cell]
            prefix = f"{model}: " if model not in models else ""
            if model in bounded and parts:  # numbers from the lower bounds; coverage as its interval
                parts = [
                    f"{label} {_interval(*_coverage_bounds(bounded[model]))}"
                    if name == "coverage"
                    else f"{label} {_format(cell[(model, name)])} (bounds)"
                    for name, label in heads
                    if (model, name) in cell
                ]
                cells.append(_e(prefix + " · ".join(parts)) + _tag(bounded[model]["bounds"], BOUNDS_HINT))
                continue
            cells.append(_e(prefix + " · ".join(parts)) if parts else "–")
        if probe["kind"] == "temperature":  # one cell across the model columns, a line per pair
            body = f'<td colspan="{len(models)}">{"<br>".join(cells) or "–"}</td>'
        else:
            found = precision.recorded(output.payload)
            body = "".join(f"<td>{c}{precision_tag(found.get(m))}</td>" for m, c in zip(columns, cells, strict=True))
        link = f'<a href="#probe-{_e(probe["name"])}">{_e(probe["params"].get("title") or probe["name"])}</a>'
        rows.append(f"<tr><td>{link}</td><td>{_e(probe['kind'])}</td>{body}</tr>")
    head = "".join(f"<th>{_e(m)}</th>" for m in models)
    return f'<table class="overview"><tr><th>probe</th><th>kind</th>{head}</tr>{"".join(rows)}</table>'


def _precision_cell(found: str | None) -> str:
    """The precision a model's stored results were computed in; runs stored before it was recorded say so."""
    return _e(found or "not recorded") + precision_tag(found)


def report_html(store: Store, run_id: int) -> str:
    run = store.run(run_id)
    probes = store.probes(run_id)
    if not probes:
        raise ModescopeError(f"run {run_id} has no finished probe yet; run it (or --resume it) first")
    outputs = {p["name"]: store.probe_output(run_id, p["name"]) for p in probes}
    models = [m["name"] for m in run.models]
    computed_in = precision.merged(output.payload for output in outputs.values())
    model_rows = "".join(
        f"<tr><td>{_e(m['name'])}</td><td>{_e(m.get('model') or m['name'])}</td><td>{'chat' if m.get('chat') else 'plain'}</td>"
        f"<td>{_precision_cell(computed_in.get(m['name']))}</td></tr>"
        for m in run.models
    )
    computed = sum(p["seconds"] for p in probes if not p["from_cache"])
    duration = (run.finished - run.started) if run.finished else None
    toc = "".join(
        f'<li><a href="#probe-{_e(p["name"])}">{_e(p["params"].get("title") or p["name"])}</a></li>' for p in probes
    )
    sections = "".join(_probe_section(p, outputs[p["name"]]) for p in probes)
    text_hash = hashlib.sha256(run.suite_text.encode()).hexdigest()[:12]
    timing = f"{duration:.0f} s wall" if duration is not None else "unfinished"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{offline_csp(scripts=True, images=True)}<title>modescope report: {_e(run.suite)} run {run.id}</title>
<style>{STYLE}</style></head>
<body>
<header id="run">
<h1>modescope report · suite “{_e(run.suite)}” · run {run.id}</h1>
<p class="meta">status {_e(run.status)} · started {utc_time(run.started)} · finished {utc_time(run.finished)} · {timing},
{computed:.0f} s of model time ({sum(p["from_cache"] for p in probes)} of {len(probes)} probes from the cache) ·
suite hash <code>{_e(run.suite_hash)}</code> (file {text_hash}) · modescope {_e(__version__)}</p>
<table><tr><th>model</th><th>loaded as</th><th>prompts</th><th>precision</th></tr>{model_rows}</table>
</header>
<nav><h3>Probes</h3><ol>{toc}</ol></nav>
<main>
<section class="probe" id="summary"><h2>Overview</h2>
<p class="meta">Headline numbers per probe and model; every metric is in the probe's own section.</p>
{_overview(probes, outputs, models)}
</section>
{sections}
</main>
</body></html>
"""


def write_report(store: Store, run_id: int, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(store, run_id), encoding="utf-8")
    return path


def write_pdf(html_path: Path, pdf_path: Path) -> Path:
    """Print the report to PDF with headless Chromium."""
    browser = find_chromium()
    if browser is None:
        raise ModescopeError("--pdf needs a headless Chromium (apt-get install chromium); the HTML report was written")
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser,
            "--headless",
            *HEADLESS_FLAGS,
            f"--user-data-dir={profile}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={pdf_path.resolve()}",
            html_path.resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if done.returncode != 0 or not pdf_path.is_file():
        raise ModescopeError(f"Chromium could not print the PDF: {done.stderr.strip()[-300:]}")
    return pdf_path
