"""A prompt-set probe's own output, aggregated from its units (one per prompt and model).

Each unit holds what the probe kind computes for one model on one prompt. Here every numeric metric the units
carry becomes, per model, a mean over prompts with a bootstrap confidence interval, and, per pair of models
(the first model is the base), a paired comparison over the prompts both answered: the mean difference with
its interval, the Wilcoxon signed-rank p-value and how many prompts each side is higher on. For distribution
probes the two models' distributions on each prompt are also compared directly (Jensen-Shannon divergence and
total variation). The output keeps metric names of the single-prompt probes (the mean under the plain name),
so the report's overview reads it like any probe.

Rendered here: `metrics.png` (every metric's spread over prompts, per model) and `prompts.html`, a
self-contained page with the paired table, the prompts where the models differ most, and every prompt, each
opening its units' own pages and figures (embedded gzip-compressed, inflated in the browser on click).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modescope import precision
from modescope.errors import ModescopeError
from modescope.jsonsafe import finite
from modescope.metrics.paired import bootstrap_means, paired_differences
from modescope.store import Artifact, Metric, ProbeOutput, StoredUnit
from modescope.viz.offline import offline_csp
from modescope.viz.precision_html import precision_note

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

    from modescope.metrics.homogeneity import HomogeneityResult

DIVERGENCES = ("js_bits", "tv")  # compared per prompt between two models' distributions (distribution kind)
MOST_DIFFERENT = 10  # prompts listed per pair where the models differ most
SHOWN_HEADLINES = 3  # per-model columns of the prompts table when the kind names no headline metrics
META_COLUMNS = 4  # metadata keys shown as columns of the prompts table
MAX_PANELS = 24  # metrics drawn in metrics.png
EXCERPT = 120  # characters of a prompt shown in tables
GZIP_WORTH = 0.9  # embed an artifact gzip-compressed only when that saves at least 10% (PNG is compressed already)


# --- the numbers -------------------------------------------------------------------------------------------


@dataclass
class PromptUnits:
    """One prompt of the set and its units by model."""

    id: str
    prompt: str
    meta: dict[str, Any]
    units: dict[str, StoredUnit]


@dataclass
class Table:
    """Every prompt's value of every metric per model (NaN where not measured), aligned with `prompts`."""

    kind: str
    models: list[str]
    prompts: list[PromptUnits]
    names: list[str]  # numeric per-model metrics, in the order the units report them
    values: dict[str, dict[str, np.ndarray]]  # model -> metric -> one value per prompt
    # (a, b) -> a per-prompt comparison of the two (JS divergence and TV of distributions, τ* of temperature
    # probes) -> one value per prompt
    comparisons: dict[tuple[str, str], dict[str, np.ndarray]]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for i, a in enumerate(self.models) for b in self.models[i + 1 :]]


def pair_label(a: str, b: str) -> str:
    return f"{a} vs {b}"


def _group(models: Sequence[str], units: Sequence[StoredUnit]) -> list[PromptUnits]:
    """Units of the listed models gathered by prompt, prompts in their set's order."""
    by_id: dict[str, PromptUnits] = {}
    for unit in sorted(units, key=lambda u: u.record.position):
        record = unit.record
        if record.model not in models:
            continue
        row = by_id.setdefault(record.prompt_id, PromptUnits(record.prompt_id, record.prompt, dict(record.meta), {}))
        row.units[record.model] = unit
    return list(by_id.values())


def _own_model(unit: StoredUnit) -> str:
    """The name the unit's output gives its model: the unit's, or else the only one it names (a backend
    that kept its own name rather than its suite entry's)."""
    named = {m.model for m in unit.output.metrics}
    return next(iter(named)) if len(named) == 1 and unit.record.model not in named else unit.record.model


def _own_numbers(unit: StoredUnit) -> dict[str, float]:
    """The unit's numeric metrics of its own model (a text-only metric such as top1 has no value)."""
    own = _own_model(unit)
    return {m.name: float(m.value) for m in unit.output.metrics if m.model == own and m.value is not None}


def _table(kind: str, models: Sequence[str], units: Sequence[StoredUnit]) -> Table:
    prompts = _group(models, units)
    numbers = [{model: _own_numbers(u) for model, u in p.units.items()} for p in prompts]
    names = list(dict.fromkeys(name for row in numbers for found in row.values() for name in found))
    values = {
        model: {name: np.array([row.get(model, {}).get(name, math.nan) for row in numbers]) for name in names}
        for model in models
    }
    table = Table(kind, list(models), prompts, names, values, {})
    if kind == "distribution":
        table.comparisons = {pair: _divergences(prompts, *pair) for pair in table.pairs}
    else:
        found = {pair: _pair_unit_values(prompts, units, *pair) for pair in table.pairs}
        table.comparisons = {pair: values for pair, values in found.items() if values}
    return table


def _pair_unit_values(
    prompts: Sequence[PromptUnits], units: Sequence[StoredUnit], a: str, b: str
) -> dict[str, np.ndarray]:
    """The numbers of the pair units "a → b" (what a kind compares between two models on each prompt, such
    as the temperature probe's τ*), one per prompt; a number about the reverse direction gets " (reverse)"."""
    from modescope.suites.kinds import pair_label

    label = pair_label(a, b)
    by_prompt = {u.record.prompt_id: u for u in units if u.record.model == label}
    rows: list[dict[str, float]] = []
    for prompt in prompts:
        unit = by_prompt.get(prompt.id)
        metrics = unit.output.metrics if unit is not None else []
        rows.append(
            {
                m.name if m.model == label else f"{m.name} (reverse)": float(m.value)
                for m in metrics
                if m.value is not None
            }
        )
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: np.array([row.get(name, math.nan) for row in rows], dtype=np.float64) for name in names}


def _outcome_logprobs(unit: StoredUnit) -> tuple[list[str], np.ndarray] | None:
    """A distribution unit's candidates and log-probabilities within the set (from its stored result)."""
    from modescope.metrics import normalize_log

    results = unit.output.payload.get("results", [])
    if len(results) != 1:  # one model's unit: its one result, whatever name the backend gave it
        results = [r for r in results if r.get("model") == unit.record.model]
    if not results:
        return None
    outcomes = results[0].get("outcomes", [])
    probs = np.array([math.nan if o.get("prob") is None else o["prob"] for o in outcomes], dtype=np.float64)
    if len(probs) == 0 or not np.isfinite(probs).all() or probs.sum() <= 0:
        return None
    with np.errstate(divide="ignore"):  # an impossible outcome has log-probability -inf, as in the probe
        return [o.get("text") for o in outcomes], normalize_log(np.log(probs))


def _divergences(prompts: Sequence[PromptUnits], a: str, b: str) -> dict[str, np.ndarray]:
    """JS divergence (bits) and total variation between the two models' distributions on each prompt; NaN
    where a unit is missing or the candidate sets differ."""
    found = [_prompt_divergences(prompt.units.get(a), prompt.units.get(b)) for prompt in prompts]
    return {name: np.array([row[k] for row in found], dtype=np.float64) for k, name in enumerate(DIVERGENCES)}


def _prompt_divergences(first: StoredUnit | None, second: StoredUnit | None) -> tuple[float, float]:
    from modescope.metrics import js_bits, total_variation

    p = _outcome_logprobs(first) if first is not None else None
    q = _outcome_logprobs(second) if second is not None else None
    if p is None or q is None or p[0] != q[0]:
        return math.nan, math.nan
    return js_bits(p[1], q[1]), total_variation(p[1], q[1])


def headlines(kind: str, names: Sequence[str]) -> list[str]:
    """The metrics the prompts table shows per model: the kind's overview metrics the units carry, else the
    first few; the first one ranks where two models differ most."""
    from modescope.viz.report_html import HEADLINES

    chosen = [name for name, _ in HEADLINES.get(kind, []) if name in names]
    return chosen or list(names[:SHOWN_HEADLINES])


def aggregate(
    kind: str,
    models: list[str],
    units: list[StoredUnit],
    failed: Sequence[dict[str, Any]] = (),
    probe: Any = None,
) -> ProbeOutput:
    """The prompt-set probe's output from its units (of the listed models; the first is the base of every
    pair): metrics (see `_metrics`), `metrics.png`, `prompts.html` and the payload

        {"kind", "models", "metric_names", "headlines",
         "prompts": [{"id", "prompt", "meta", "metrics": {model: {M: value}}, "comparisons": {"a vs b": {D: value}}}],
         "per_model": {model: {M: {"mean", "low", "high", "n"}}},
         "pairs": [{"a", "b", "metrics": {M: {"mean", "low", "high", "n", "wilcoxon_p", "a_higher", "b_higher",
                    "ties"}}, "comparisons": {D: {"mean", "low", "high", "n"}}}],
         "most_different": [{"a", "b", "metric", "by", "prompts": [{"id", "a", "b", "diff", "score"}]}],
         "failed": failed,
         "homogeneity": HomogeneityResult.to_dict()}

    with None for what was not measured (strict JSON); "comparisons" (D: js_bits, tv) only for distribution
    probes; "homogeneity" (with `homogeneity.png` and the metrics of `homogeneity_metrics`) only for sample
    probes where two models or more stored completions: intra- and inter-model similarity of the texts
    (modescope.metrics.homogeneity). `failed` lists the units given up on (as `Store.failures` gives them);
    they are left out of the statistics, kept in the payload and listed on the page."""
    if kind == "frontier":  # a frontier is summarized per remedy point, not per metric (`probe` names its axes)
        return _frontier(probe, models, units, failed)
    table = _table(kind, models, units)
    payload = _payload(table, failed) | {precision.PAYLOAD_KEY: precision.merged(u.output.payload for u in units)}
    similar, notes = _homogeneity(table) if kind == "sample" else (None, [])
    if similar is not None:
        payload["homogeneity"] = similar.to_dict()
    artifacts = {"prompts.html": Artifact("text/html", prompts_page(payload, _views(table)).encode("utf-8"))}
    if table.names:
        artifacts = {"metrics.png": _png(table), **artifacts}
    if similar is not None:
        artifacts["homogeneity.png"] = _homogeneity_png(similar)
    notes += [f"{len(failed)} unit(s) failed and are left out of the statistics"] if failed else []
    return ProbeOutput(_metrics(payload) + homogeneity_metrics(payload), payload, artifacts, notes)


def _frontier(probe: Any, models: list[str], units: list[StoredUnit], failed: Sequence[dict[str, Any]]) -> ProbeOutput:
    """A frontier probe's output over the prompts: its units' points summarized (see `kinds.frontier_output`)."""
    from modescope.probes.frontier import FrontierUnit
    from modescope.suites.kinds import frontier_output

    found = [
        FrontierUnit(u.record.model, u.record.prompt_id, u.record.prompt, u.output.payload["points"], u.record.meta)
        for u in units
        if u.record.model in models
    ]
    return frontier_output(probe, models, found, failed, precision.merged(u.output.payload for u in units))


def _statistics(table: Table) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Per model, each metric's estimate; per pair, each metric's paired difference and each divergence's
    estimate. Every kind of column goes in one call: columns measured on the same prompts share resamples."""
    columns = [(model, name) for model in table.models for name in table.names]
    per_model: dict[str, dict[str, Any]] = {model: {} for model in table.models}
    for (model, name), estimate in zip(columns, bootstrap_means([table.values[m][n] for m, n in columns]), strict=True):
        per_model[model][name] = estimate.to_dict()
    compared = [(a, b, name) for a, b in table.pairs for name in table.names]
    differences = paired_differences([(table.values[a][name], table.values[b][name]) for a, b, name in compared])
    by_pair: dict[tuple[str, str], dict[str, Any]] = {p: {} for p in table.pairs}
    for (a, b, name), difference in zip(compared, differences, strict=True):
        by_pair[(a, b)][name] = difference.to_dict()
    found = [(pair, name, v) for pair, by_name in table.comparisons.items() for name, v in by_name.items()]
    comparisons: dict[tuple[str, str], dict[str, Any]] = {p: {} for p in table.pairs}
    for (pair, name, _), estimate in zip(found, bootstrap_means([v for _, _, v in found]), strict=True):
        comparisons[pair][name] = estimate.to_dict()
    pairs = [{"a": a, "b": b, "metrics": by_pair[(a, b)], "comparisons": comparisons[(a, b)]} for a, b in table.pairs]
    return per_model, pairs


def _payload(table: Table, failed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    per_model, pairs = _statistics(table)
    heads = headlines(table.kind, table.names)
    payload = {
        "kind": table.kind,
        "models": table.models,
        "metric_names": table.names,
        "headlines": heads,
        "prompts": [_prompt_entry(table, k) for k in range(len(table.prompts))],
        "per_model": per_model,
        "pairs": pairs,
        "most_different": [_most_different(table, a, b, heads[0] if heads else None) for a, b in table.pairs],
        "failed": [dict(f) for f in failed],
    }
    return dict(finite(payload))


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _prompt_entry(table: Table, k: int) -> dict[str, Any]:
    prompt = table.prompts[k]
    entry: dict[str, Any] = {
        "id": prompt.id,
        "prompt": prompt.prompt,
        "meta": prompt.meta,
        "metrics": {
            model: {name: _number(table.values[model][name][k]) for name in table.names}
            for model in table.models
            if model in prompt.units
        },
    }
    if table.comparisons:
        entry["comparisons"] = {
            pair_label(a, b): {name: _number(values[k]) for name, values in found.items()}
            for (a, b), found in table.comparisons.items()
        }
    return entry


def _most_different(table: Table, a: str, b: str, headline: str | None) -> dict[str, Any]:
    """The prompts where b and a differ most: by JS divergence for distributions (two distributions can
    differ while a summary number agrees), else by |b - a| of the headline metric. Prompts that do not
    differ at all are not listed."""
    by = "js_bits" if "js_bits" in table.comparisons.get((a, b), {}) else headline
    entry: dict[str, Any] = {"a": a, "b": b, "metric": headline, "by": by, "prompts": []}
    if by is None:
        return entry
    empty = np.full(len(table.prompts), math.nan)
    first, second = (table.values[m][headline] if headline else empty for m in (a, b))
    scores = table.comparisons[(a, b)]["js_bits"] if by == "js_bits" else np.abs(second - first)
    ranked = np.argsort(-np.nan_to_num(scores, nan=-1.0), kind="stable")  # stable: ties keep the set's order
    for k in [int(k) for k in ranked if scores[k] > 0][:MOST_DIFFERENT]:
        entry["prompts"].append(
            {
                "id": table.prompts[k].id,
                "a": _number(first[k]),
                "b": _number(second[k]),
                "diff": _number(second[k] - first[k]),
                "score": float(scores[k]),
            }
        )
    return entry


def _metrics(payload: dict[str, Any]) -> list[Metric]:
    """Per model: each metric's mean (its plain name), `.ci_low`, `.ci_high`, and `prompts`; per pair
    ("a vs b"): `.diff`, `.diff_ci_low`, `.diff_ci_high`, `.wilcoxon_p`, `.b_higher`, `.a_higher`, and the
    per-prompt divergences' means with their intervals."""
    found: list[Metric] = []
    for model, estimates in payload["per_model"].items():
        for name, e in estimates.items():
            found += [Metric(model, name, e["mean"]), Metric(model, f"{name}.ci_low", e["low"])]
            found.append(Metric(model, f"{name}.ci_high", e["high"]))
        answered = sum(model in p["metrics"] for p in payload["prompts"])
        found.append(Metric(model, "prompts", float(answered)))
    for pair in payload["pairs"]:
        label = pair_label(pair["a"], pair["b"])
        for name, d in pair["metrics"].items():
            for suffix, key in PAIR_METRICS:
                found.append(Metric(label, f"{name}.{suffix}", None if d[key] is None else float(d[key])))
        for name, e in pair["comparisons"].items():
            found += [Metric(label, name, e["mean"]), Metric(label, f"{name}.ci_low", e["low"])]
            found.append(Metric(label, f"{name}.ci_high", e["high"]))
    return found


PAIR_METRICS = [
    ("diff", "mean"),
    ("diff_ci_low", "low"),
    ("diff_ci_high", "high"),
    ("wilcoxon_p", "wilcoxon_p"),
    ("b_higher", "b_higher"),
    ("a_higher", "a_higher"),
]


# --- cross-model homogeneity (sample probes) ----------------------------------------------------------------


def _unit_texts(unit: StoredUnit) -> list[str] | None:
    """The completions' texts a sample unit stored (its one model's result); None when it holds none."""
    results = unit.output.payload.get("models", [])
    if len(results) != 1:  # one model's unit: its one result, whatever name the backend gave it
        results = [r for r in results if isinstance(r, dict) and r.get("model") == unit.record.model]
    if not results or not isinstance(results[0], dict) or "completions" not in results[0]:
        return None
    return [c["text"] for c in results[0]["completions"] if isinstance(c, dict) and isinstance(c.get("text"), str)]


def sample_texts(models: Sequence[str], units: Sequence[StoredUnit]) -> dict[str, dict[str, list[str]]]:
    """Per prompt id (in the set's order), per model (of the listed ones): the texts of the completions its
    sample unit stored. A unit without completions (another kind, a failed unit) is left out, so its model
    counts as missing on that prompt."""
    found: dict[str, dict[str, list[str]]] = {}
    for prompt in _group(models, units):
        row = found.setdefault(prompt.id, {})
        for model in models:
            texts = _unit_texts(prompt.units[model]) if model in prompt.units else None
            if texts is not None:
                row[model] = texts
    return found


def _homogeneity(table: Table) -> tuple[HomogeneityResult | None, list[str]]:
    """Cross-model homogeneity of a sample probe's completions, when two models or more stored texts (one
    model alone has no one to be alike: its units' embedding_diversity is 1 - its intra similarity); and a
    note when the embedder could not be loaded (the rest of the aggregate stands)."""
    from modescope.metrics.homogeneity import homogeneity

    units = [u for p in table.prompts for u in p.units.values()]
    samples = sample_texts(table.models, units)
    answered = {m for row in samples.values() for m, texts in row.items() if texts}
    if len(answered) < 2:
        return None, []
    try:
        return homogeneity(samples, models=[m for m in table.models if m in answered]), []
    except ModescopeError as exc:
        return None, [f"cross-model homogeneity skipped: {exc}"]


def _homogeneity_png(result: HomogeneityResult) -> Artifact:
    import tempfile
    from pathlib import Path

    from modescope.viz.homogeneity_plot import plot_homogeneity

    with tempfile.TemporaryDirectory() as folder:
        path = plot_homogeneity(result, Path(folder) / "homogeneity.png")
        return Artifact("image/png", path.read_bytes())


def homogeneity_metrics(payload: dict[str, Any]) -> list[Metric]:
    """From payload["homogeneity"], if any: per model `intra_similarity` (with `.ci_low`, `.ci_high`) and
    `intra_share_above` (the share of prompts whose intra similarity exceeds the payload's threshold, 0.8, with
    its interval); per pair ("a vs b") `inter_similarity` with its interval."""
    found: list[Metric] = []
    data = payload.get("homogeneity")
    if not data:
        return found

    def three(model: str, name: str, e: dict[str, Any]) -> list[Metric]:
        return [
            Metric(model, name, e["mean"]),
            Metric(model, f"{name}.ci_low", e["low"]),
            Metric(model, f"{name}.ci_high", e["high"]),
        ]

    for model in data["models"]:
        found += three(model, "intra_similarity", data["intra"][model])
        found += three(model, "intra_share_above", data["share_above"][model])
    for pair in data["inter"]:
        found += three(pair_label(pair["a"], pair["b"]), "inter_similarity", pair)
    return found


# --- the figure --------------------------------------------------------------------------------------------


def metrics_figure(table: Table) -> Figure:
    """One panel per metric: a box per model over prompts, each prompt a jittered point."""
    from modescope.viz.figures import pyplot

    plt = pyplot()  # Agg, but a notebook kernel keeps its inline backend

    names = table.names[:MAX_PANELS]
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    height = 3.1 * rows + 0.5
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns + 0.4, height), squeeze=False)
    rng = np.random.default_rng(0)  # the jitter only spreads points; fixed so the figure is reproducible
    labels = [m.replace("$", r"\$") for m in table.models]  # no mathtext
    for ax, name in zip(axes.flat, names, strict=False):
        for k, model in enumerate(table.models):
            values = table.values[model][name]
            values = values[np.isfinite(values)]
            if len(values) == 0:
                continue
            line = {"color": f"C{k}"}
            ax.boxplot(
                [values],
                positions=[k],
                widths=0.6,
                showfliers=False,  # every prompt is drawn as a point anyway
                showmeans=True,  # the statistics are about means: a black diamond
                meanprops={"marker": "D", "markerfacecolor": "black", "markeredgecolor": "white", "markersize": 5},
                boxprops=line,
                whiskerprops=line,
                capprops=line,
                medianprops=line,
            )
            jitter = rng.uniform(-0.22, 0.22, len(values))
            size = 16 if len(values) <= 100 else 6
            ax.scatter(k + jitter, values, s=size, alpha=0.5, color=f"C{k}", linewidths=0, zorder=3)
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=20 if max(map(len, labels)) > 12 else 0)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_title(name.replace("$", r"\$"), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    shown = f" (first {MAX_PANELS} of {len(table.names)} metrics)" if len(table.names) > MAX_PANELS else ""
    fig.suptitle(f"{table.kind} over {len(table.prompts)} prompts: one point per prompt, ◆ mean{shown}", fontsize=10)
    # one pass (constrained layout takes seconds for many panels), leaving 0.3 inch above for the title
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.3 / height))
    return fig


def _png(table: Table) -> Artifact:
    import io

    from modescope.viz.figures import detached

    buffer = io.BytesIO()
    fig = metrics_figure(table)
    fig.savefig(buffer, format="png", dpi=110)
    detached(fig)
    return Artifact("image/png", buffer.getvalue())


# --- the page ----------------------------------------------------------------------------------------------


def _views(table: Table) -> list[dict[str, list[dict[str, Any]]]]:
    """Per prompt, per model: the unit's artifacts, base64 (gzip-compressed where that pays)."""
    found = []
    for prompt in table.prompts:
        views: dict[str, list[dict[str, Any]]] = {}
        for model in table.models:
            unit = prompt.units.get(model)
            if unit is not None:
                views[model] = [_embedded(name, a) for name, a in unit.output.artifacts.items()]
        found.append(views)
    return found


def _embedded(name: str, artifact: Artifact) -> dict[str, Any]:
    packed = gzip.compress(artifact.data, mtime=0)  # mtime=0: the same artifact gives the same page
    gz = len(packed) < GZIP_WORTH * len(artifact.data)
    data = base64.b64encode(packed if gz else artifact.data).decode("ascii")
    return {"name": name, "mime": artifact.mime, "gz": gz, "data": data}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1e}" if 0 < value < 1e-4 else f"{value:.3g}"


def _interval(estimate: dict[str, Any]) -> str:
    if estimate.get("mean") is None:
        return "–"
    return f"{_fmt(estimate['mean'])} [{_fmt(estimate['low'])}, {_fmt(estimate['high'])}]"


def verdict(a: str, b: str, d: dict[str, Any]) -> str:
    """The phrase "b higher than a on k of n prompts", or lower: the side the mean difference is on (when it
    is 0, the side more prompts are on)."""
    n, ties = d.get("n") or 0, d.get("ties") or 0
    if n == 0:
        return "no prompt with both measured"
    if ties == n:
        return f"{b} equal to {a} on all {n} prompts"
    mean = d.get("mean") or 0.0
    lower = mean < 0 or (mean == 0 and d["a_higher"] > d["b_higher"])
    count = d["a_higher"] if lower else d["b_higher"]
    tied = f" ({ties} tied)" if ties else ""
    return f"{b} {'lower' if lower else 'higher'} than {a} on {count} of {n} prompts{tied}"


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def _paired_tables(payload: dict[str, Any]) -> str:
    parts = []
    models = payload["models"]
    for pair in payload["pairs"] or [None]:
        shown = [pair["a"], pair["b"]] if pair else models
        head = "".join(f"<th>{_e(m)} mean [95% CI]</th>" for m in shown)
        if pair:
            head += f"<th>{_e(pair['b'])} − {_e(pair['a'])} [95% CI]</th><th>Wilcoxon p</th><th>prompts</th>"
        rows = []
        for name in payload["metric_names"]:
            cells = "".join(f"<td>{_e(_interval(payload['per_model'][m][name]))}</td>" for m in shown)
            if pair:
                d = pair["metrics"][name]
                cells += f"<td>{_e(_interval(d))}</td><td>{_e(_p(d['wilcoxon_p']))}</td>"
                cells += f"<td>{_e(verdict(pair['a'], pair['b'], d))}</td>"
            rows.append(f"<tr><td>{_e(name)}</td>{cells}</tr>")
        for name, e in (pair or {}).get("comparisons", {}).items():
            span = len(shown) + 3
            text = f"{name} between the two distributions, mean over prompts [95% CI]: {_interval(e)}"
            rows.append(f'<tr><td>{_e(name)}</td><td colspan="{span}">{_e(text)}</td></tr>')
        title = f"<h3>{_e(pair_label(pair['a'], pair['b']))}</h3>" if pair else ""
        parts.append(f'{title}<table class="paired"><tr><th>metric</th>{head}</tr>{"".join(rows)}</table>')
    return "".join(parts)


def _different_section(payload: dict[str, Any]) -> str:
    index = {p["id"]: k for k, p in enumerate(payload["prompts"])}
    parts = []
    for entry in payload["most_different"]:
        a, b, metric = entry["a"], entry["b"], entry["metric"]
        by = "JS divergence (bits)" if entry["by"] == "js_bits" else f"|{b} − {a}| of {metric}"
        items = []
        for item in entry["prompts"]:
            k = index[item["id"]]
            values = f"{metric}: {a} {_fmt(item['a'])}, {b} {_fmt(item['b'])}" if metric else ""
            score = f"JS {_fmt(item['score'])} bits · " if entry["by"] == "js_bits" else ""
            items.append(
                f'<li><a href="#detail" class="open" data-index="{k}">{_e(item["id"])}</a> '
                f'<span class="meta">{_e(score + values)}</span> {_e(_excerpt(payload["prompts"][k]["prompt"]))}</li>'
            )
        body = f"<ol>{''.join(items)}</ol>" if items else "<p class='meta'>no prompt differs</p>"
        parts.append(f"<h3>{_e(pair_label(a, b))}, by {_e(by)}</h3>{body}")
    return "".join(parts)


def _meta_keys(prompts: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for p in prompts for k in p["meta"]))[:META_COLUMNS]


def _meta_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _number_cell(value: float | None) -> str:
    # data-v carries the exact number for sorting; a missing value has none and sorts last
    sort = f' data-v="{value!r}"' if value is not None else ""
    return f'<td class="num"{sort}>{_e(_fmt(value))}</td>'


def _prompts_table(payload: dict[str, Any]) -> str:
    prompts, models, heads = payload["prompts"], payload["models"], payload["headlines"]
    keys = _meta_keys(prompts)
    pairs = [(p["a"], p["b"]) for p in payload["pairs"]]
    head = ["id", *keys, "prompt", *(f"{m}: {h}" for h in heads for m in models)]
    head += [f"{b} − {a}: {heads[0]}" for a, b in pairs] if heads else []
    compared = [(a, b) for a, b in pairs if "comparisons" in prompts[0]] if prompts else []
    head += [f"{pair_label(a, b)}: {d}" for a, b in compared for d in DIVERGENCES]
    similar = _similarity_columns(payload)
    head += list(similar)
    rows = []
    for k, p in enumerate(prompts):
        cells = [f"<td>{_e(p['id'])}</td>"]
        cells += [f"<td>{_e(_meta_text(p['meta'][key])) if key in p['meta'] else ''}</td>" for key in keys]
        cells.append(f'<td class="text" title="{_e(p["prompt"])}">{_e(_excerpt(p["prompt"]))}</td>')
        value = {m: p["metrics"].get(m, {}) for m in models}
        cells += [_number_cell(value[m].get(h)) for h in heads for m in models]
        for a, b in pairs if heads else []:
            first, second = value[a].get(heads[0]), value[b].get(heads[0])
            cells.append(_number_cell(second - first if first is not None and second is not None else None))
        for a, b in compared:
            found = p.get("comparisons", {}).get(pair_label(a, b), {})
            cells += [_number_cell(found.get(d)) for d in DIVERGENCES]
        cells += [_number_cell(column.get(p["id"])) for column in similar.values()]
        rows.append(f'<tr data-index="{k}" tabindex="0">{"".join(cells)}</tr>')
    header = "".join(f'<th title="sort">{_e(h)}</th>' for h in head)
    return f'<table id="prompts"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _similarity_columns(payload: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Columns of the prompts table from payload["homogeneity"]: each model's intra similarity, and the mean
    inter similarity over the pairs measured, by prompt id."""
    data = payload.get("homogeneity")
    if not data:
        return {}
    columns: dict[str, dict[str, float | None]] = {}
    for model in data["models"]:
        columns[f"{model}: intra sim."] = {p["id"]: p["intra"].get(model) for p in data["prompts"]}
    inter: dict[str, float | None] = {}
    for p in data["prompts"]:
        found = [v for v in p["inter"].values() if v is not None]
        inter[p["id"]] = float(np.mean(found)) if found else None
    columns["inter sim. (mean of pairs)" if len(data["models"]) > 2 else "inter sim."] = inter
    return columns


def _homogeneity_section(payload: dict[str, Any]) -> str:
    from modescope.viz.homogeneity_plot import homogeneity_html

    data = payload.get("homogeneity")
    return f"<h2>Cross-model homogeneity</h2>{homogeneity_html(data)}" if data else ""


def _failed_section(failed: Sequence[dict[str, Any]]) -> str:
    if not failed:
        return ""
    rows = "".join(
        f"<tr><td>{_e(f.get('prompt_id'))}</td><td>{_e(f.get('model'))}</td><td>{_e(f.get('attempts'))}</td>"
        f"<td class='text'>{_e(_excerpt(str(f.get('error', ''))))}</td></tr>"
        for f in failed
    )
    return (
        f"<h2>Failed units ({len(failed)})</h2><p class='meta'>left out of every statistic</p>"
        f"<table><tr><th>prompt</th><th>model</th><th>attempts</th><th>error</th></tr>{rows}</table>"
    )


def _script_json(data: Any) -> str:
    """JSON for a <script type="application/json"> block: "<" only occurs inside JSON strings, where \\u003c
    reads back the same, so model text cannot close the block."""
    return json.dumps(finite(data), ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2rem; color: #1b1b1b; background: #fafafa; }
h1 { font-size: 1.2rem; margin: 0 0 0.3rem; } h2 { font-size: 1.05rem; margin: 1.2rem 0 0.4rem; }
h3 { font-size: 0.92rem; margin: 0.8rem 0 0.3rem; color: #444; }
.meta { color: #555; font-size: 0.85rem; }
table { border-collapse: collapse; font-size: 0.82rem; background: #fff; }
th, td { border: 1px solid #e0e0dc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #efefeb; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 36rem; }
#prompts th { cursor: pointer; user-select: none; position: sticky; top: 0; }
#prompts th[data-dir="asc"]::after { content: " ▲"; } #prompts th[data-dir="desc"]::after { content: " ▼"; }
#prompts tbody tr { cursor: pointer; } #prompts tbody tr:hover { background: #f1f5f9; }
#prompts tbody tr.selected { background: #dbeafe; }
#filter { font-size: 0.9rem; padding: 0.25rem 0.4rem; width: 24rem; margin: 0.3rem 0.6rem 0.5rem 0; }
ol li { margin: 0.15rem 0; font-size: 0.88rem; }
#detail { background: #fff; border: 1px solid #d6d6d0; border-radius: 6px; padding: 0.6rem 0.9rem; margin: 1rem 0; }
#detail .prompt { white-space: pre-wrap; font-family: ui-monospace, monospace; background: #fafaf7;
  border: 1px solid #e4e4de; padding: 0.4rem 0.6rem; font-size: 0.82rem; }
.views { display: grid; grid-template-columns: repeat(var(--models), minmax(20rem, 1fr)); gap: 0.8rem; }
.views iframe { width: 100%; height: 560px; border: 1px solid #ddd; border-radius: 4px; background: #fafafa; }
.views img { max-width: 100%; border: 1px solid #eee; }
"""

# Builds the detail view with DOM calls and textContent only, so model text never becomes markup; each
# unit page goes into a sandboxed iframe of its own (scripts run, nothing reaches this page).
PAGE_SCRIPT = r"""
const DATA = JSON.parse(document.getElementById('units').textContent);
const table = document.getElementById('prompts');
const rows = [...table.tBodies[0].rows];
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}
async function bytesOf(view) {
  const raw = Uint8Array.from(atob(view.data), c => c.charCodeAt(0));
  if (!view.gz) return raw;
  const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
function dataUrl(bytes, mime) {
  return new Promise(resolve => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.readAsDataURL(new Blob([bytes], {type: mime}));
  });
}
async function show(view, holder) {
  if (view.mime === 'text/html') {
    const frame = el('iframe');
    frame.setAttribute('sandbox', 'allow-scripts');
    frame.title = view.name;
    frame.srcdoc = new TextDecoder().decode(await bytesOf(view));
    holder.replaceChildren(frame);
  } else if (view.mime.startsWith('image/')) {
    const img = el('img');
    img.alt = view.name;
    img.src = view.gz ? await dataUrl(await bytesOf(view), view.mime) : 'data:' + view.mime + ';base64,' + view.data;
    holder.replaceChildren(img);
  } else {
    holder.replaceChildren(el('p', view.name + ' (' + view.mime + ') is not shown', 'meta'));
  }
}
function metricTable(prompt) {
  const models = Object.keys(prompt.metrics);
  const names = [...new Set(models.flatMap(m => Object.keys(prompt.metrics[m])))];
  const out = el('table');
  const head = el('tr');
  head.append(el('th', 'metric'), ...models.map(m => el('th', m)));
  out.append(head);
  for (const name of names) {
    const row = el('tr');
    row.append(el('td', name));
    for (const m of models) {
      const v = prompt.metrics[m][name];
      row.append(el('td', v === null || v === undefined ? '–' : Number(v.toPrecision(4)).toString(), 'num'));
    }
    out.append(row);
  }
  return out;
}
function open(index) {
  const prompt = DATA.prompts[index];
  const views = DATA.views[index];
  rows.forEach(r => r.classList.toggle('selected', Number(r.dataset.index) === index));
  const box = document.getElementById('detail');
  const meta = Object.entries(prompt.meta).map(([k, v]) => k + ': ' + (typeof v === 'string' ? v : JSON.stringify(v)));
  box.replaceChildren(el('h2', 'Prompt ' + prompt.id), el('p', meta.join(' · '), 'meta'),
                      el('div', prompt.prompt, 'prompt'), metricTable(prompt));
  const grid = el('div', null, 'views');
  grid.style.setProperty('--models', Math.max(1, Object.keys(views).length));
  for (const [model, list] of Object.entries(views)) {
    const column = el('section');
    column.append(el('h3', model));
    for (const view of list) {
      const holder = el('div', 'opening ' + view.name + '…', 'view meta');
      column.append(holder);
      show(view, holder).catch(error => holder.replaceChildren(el('p', 'cannot open ' + view.name + ': ' + error, 'meta')));
    }
    grid.append(column);
  }
  box.append(grid);
  box.hidden = false;
  box.scrollIntoView({block: 'start'});
}
function sortKey(row, column) {
  const cell = row.cells[column];
  if (cell.classList.contains('num')) return cell.dataset.v === undefined ? null : Number(cell.dataset.v);
  return cell.textContent;
}
function sortBy(column, th) {
  const dir = th.dataset.dir === 'asc' ? -1 : 1;
  table.querySelectorAll('th').forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir === 1 ? 'asc' : 'desc';
  const sorted = [...rows].sort((x, y) => {
    const a = sortKey(x, column), b = sortKey(y, column);
    if (a === null || b === null) return (a === null) - (b === null);  // missing values last either way
    if (typeof a === 'number') return dir * (a - b);
    return dir * a.localeCompare(b, undefined, {numeric: true});
  });
  table.tBodies[0].append(...sorted);
}
table.querySelectorAll('th').forEach((th, column) => th.addEventListener('click', () => sortBy(column, th)));
rows.forEach(row => {
  row.addEventListener('click', () => open(Number(row.dataset.index)));
  row.addEventListener('keydown', event => { if (event.key === 'Enter') open(Number(row.dataset.index)); });
});
document.querySelectorAll('a.open').forEach(a => a.addEventListener('click', event => {
  event.preventDefault();
  open(Number(a.dataset.index));
}));
const filter = document.getElementById('filter');
const count = document.getElementById('shown');
filter.addEventListener('input', () => {
  const query = filter.value.trim().toLowerCase();
  let shown = 0;
  for (const row of rows) {
    row.hidden = query !== '' && !row.textContent.toLowerCase().includes(query);
    shown += !row.hidden;
  }
  count.textContent = shown + ' of ' + rows.length + ' prompts shown';
});
"""


def prompts_page(payload: dict[str, Any], views: Sequence[dict[str, list[dict[str, Any]]]]) -> str:
    """The self-contained page of a prompt-set probe: paired statistics, where the models differ most, and
    every prompt (sortable, filterable); clicking one opens its units' pages and figures. `views[k]` holds
    prompt k's embedded unit artifacts by model (see `_embedded`)."""
    prompts, models = payload["prompts"], payload["models"]
    data = {"prompts": prompts, "views": list(views)}
    title = f"{payload['kind']} over {len(prompts)} prompts · {', '.join(models)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{offline_csp(scripts=True, images=True)}<title>modescope prompt set: {_e(title)}</title>
<style>{PAGE_STYLE}</style></head>
<body>
<h1>{_e(title)}</h1>
{precision_note(precision.recorded(payload))}
<p class="meta">Means over prompts with 95% bootstrap intervals (prompts resampled); differences are paired by
prompt, with the two-sided Wilcoxon signed-rank test. Click a prompt to open each model's own views.</p>
<h2>Paired comparison</h2>
{_paired_tables(payload)}
<h2>Where the models differ most</h2>
{_different_section(payload) or "<p class='meta'>one model: nothing to compare</p>"}
{_homogeneity_section(payload)}
<section id="detail" hidden></section>
<h2>Every prompt</h2>
<input id="filter" type="search" placeholder="filter by id, category or text" aria-label="filter prompts">
<span id="shown" class="meta">{len(prompts)} prompts</span>
{_prompts_table(payload)}
{_failed_section(payload["failed"])}
<script type="application/json" id="units">{_script_json(data)}</script>
<script>{PAGE_SCRIPT}</script>
</body></html>
"""


# --- the terminal ------------------------------------------------------------------------------------------


def print_aggregate(payload: dict[str, Any], console: Console) -> None:
    """The prompt-set probe in the terminal: each metric's mean [95% CI] per model, then per pair of models
    the paired difference, its Wilcoxon p and on how many prompts the second model is higher or lower."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    models = payload["models"]
    console.print(f"[bold]{escape(payload['kind'])}[/] over {len(payload['prompts'])} prompts", highlight=False)
    per_model = RichTable(title="mean over prompts [95% CI]", title_justify="left")
    per_model.add_column("metric")
    for model in models:
        per_model.add_column(escape(model), justify="right")
    for name in payload["metric_names"]:
        per_model.add_row(escape(name), *(escape(_interval(payload["per_model"][m][name])) for m in models))
    console.print(per_model)
    for pair in payload["pairs"]:
        a, b = pair["a"], pair["b"]
        paired = RichTable(title=escape(f"{b} − {a}, paired by prompt"), title_justify="left")
        for column in ("metric", "difference [95% CI]", "Wilcoxon p", "prompts"):
            paired.add_column(escape(column), justify="left" if column in ("metric", "prompts") else "right")
        for name, d in pair["metrics"].items():
            paired.add_row(*map(escape, (name, _interval(d), _p(d["wilcoxon_p"]), verdict(a, b, d))))
        for name, e in pair["comparisons"].items():
            paired.add_row(escape(name), escape(_interval(e)), "", "between the two distributions, mean over prompts")
        console.print(paired)
    if payload.get("homogeneity"):
        print_homogeneity(payload["homogeneity"], console)
    if payload["failed"]:
        console.print(f"[yellow]{len(payload['failed'])} unit(s) failed and are left out[/]", highlight=False)


def print_homogeneity(data: dict[str, Any], console: Console) -> None:
    """The cross-model homogeneity of a payload in the terminal: the models x models similarity matrix (intra
    on the diagonal) and each model's share of prompts above the threshold."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    models = data["models"]
    title = (
        f"cross-model homogeneity: mean embedding cosine over {data['n_prompts']} prompts (diagonal: within a model)"
    )
    matrix = RichTable(title=escape(title), title_justify="left")
    matrix.add_column("")
    for model in models:
        matrix.add_column(escape(model), justify="right")
    for model, row in zip(models, data["matrix"], strict=True):
        matrix.add_row(escape(model), *(escape(_fmt(v)) for v in row))
    above = f"prompts above {data['threshold']:g} [95% CI]"
    matrix.add_section()
    matrix.add_row(escape(above), *(escape(_share(data["share_above"][m])) for m in models))
    console.print(matrix)


def _share(estimate: dict[str, Any]) -> str:
    if estimate.get("mean") is None:
        return "–"
    return f"{estimate['mean']:.0%} [{estimate['low']:.0%}, {estimate['high']:.0%}]"
