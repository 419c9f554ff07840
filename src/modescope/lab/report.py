"""Collapse curves of lab runs (a PNG) and a page of sample completions per checkpoint (HTML).

The plot has one row per metric and two columns: the metric against the optimization step, and against
the KL divergence from the start model measured at each checkpoint (`kl_nats`, see `modescope.lab.probe`).
Several runs (a KL-penalized one and its degenerate KL-off contrast, say) share the axes.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modescope.errors import ModescopeError
from modescope.viz.offline import offline_csp

# (key in the checkpoint metrics, axis label)
CURVE_METRICS = [
    ("reward", "mean reward (held prompts)"),
    ("entropy_bits", "per-token entropy (bits)"),
    ("distinct_2", "distinct-2 within a prompt"),
    ("embedding_diversity", "embedding diversity (all prompts)"),
    ("basin_share", "basin share"),
    ("ppl_ratio", "start-model perplexity ratio"),
    ("number_entropy_bits", "0..100 outcome entropy (bits)"),
]


@dataclass
class LabRunData:
    folder: Path
    label: str
    run: dict[str, Any]  # run.json, or {} for a run still going
    steps: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]


def read_run(folder: Path) -> LabRunData:
    """A lab run folder's curves (and run.json when the run has finished)."""
    curves = folder / "curves.jsonl"
    if not curves.is_file():
        raise ModescopeError(
            f"'{folder}' holds no lab run (no curves.jsonl); give the --out folder of `modescope lab run`"
        )
    steps: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    for number, line in enumerate(curves.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ModescopeError(f"{curves}, line {number}: not JSON ({exc})") from exc
        (checkpoints if record.get("kind") == "checkpoint" else steps).append(record)
    if not checkpoints:
        raise ModescopeError(f"'{curves}' has no checkpoint yet; wait for the first probe")
    run_file = folder / "run.json"
    run = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
    config = run.get("config", {})
    label = (
        folder.name
        if not config
        else f"{folder.name} (KL coef {config.get('kl_coef')}, lr {config.get('learning_rate')})"
    )
    return LabRunData(folder, label, run, steps, checkpoints)


def _value(record: dict[str, Any], key: str) -> float:
    value = record["metrics"].get(key)
    return float(value) if isinstance(value, int | float) else float("nan")


def render_plot(runs: list[LabRunData], path: Path) -> None:
    """Each metric against step (left) and against KL from the start model (right), every run on one axis."""
    from modescope.viz.figures import pyplot

    plt = pyplot()  # Agg, but a notebook kernel keeps its inline backend

    rows = len(CURVE_METRICS)
    figure, axes = plt.subplots(rows, 2, figsize=(10, 2.1 * rows), squeeze=False)
    for index, run in enumerate(runs):
        color = f"C{index}"
        steps = [c["step"] for c in run.checkpoints]
        kl = [_value(c, "kl_nats") for c in run.checkpoints]
        for row, (key, label) in enumerate(CURVE_METRICS):
            values = [_value(c, key) for c in run.checkpoints]
            left, right = axes[row]
            if key == "reward":  # the noisy per-step training reward behind the held-prompt checkpoints
                trained = [s for s in run.steps if s.get("kind") == "step"]
                left.plot([s["step"] for s in trained], [s["reward"] for s in trained], color=color, alpha=0.25, lw=0.8)
            left.plot(steps, values, "o-", color=color, label=run.label, ms=4)
            right.plot(kl, values, "o-", color=color, ms=4)
            left.set_ylabel(label, fontsize=8)
            if key == "ppl_ratio":
                for ax in (left, right):
                    ax.axhline(2.0, color="grey", ls=":", lw=0.8)  # the fluency limit
    axes[-1][0].set_xlabel("optimization step")
    axes[-1][1].set_xlabel("KL from the start model (nats per completion)")
    axes[0][0].legend(fontsize=7, loc="best")
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    figure.suptitle("Collapse curves: held prompts, every checkpoint", fontsize=10)
    figure.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    except OSError as exc:
        raise ModescopeError(f"cannot write the plot '{path}': {exc.strerror or exc}") from exc
    finally:
        plt.close(figure)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _figure(png: Path) -> str:
    """The plot embedded as a data: URL: the page stays self-contained, and its policy allows no file loads."""
    try:
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
    except OSError as exc:
        raise ModescopeError(f"cannot read the plot '{png}': {exc.strerror or exc}") from exc
    return f"<img src='data:image/png;base64,{encoded}' alt='curves' style='max-width:100%'>"


def render_html(runs: list[LabRunData], path: Path, png: Path | None = None) -> None:
    """A page with, per run and checkpoint, the metrics and every sample completion (model text escaped)."""
    parts = [
        f"<!doctype html><meta charset='utf-8'>{offline_csp(images=True)}<title>modescope lab report</title>",
        "<style>body{font:14px sans-serif;max-width:1100px;margin:2em auto}td{vertical-align:top;padding:2px 8px}"
        ".basin{background:#fde2c8}.metrics td{font-family:monospace}</style>",
        "<h1>modescope lab report</h1>",
    ]
    if png is not None:
        parts.append(_figure(png))
    parts.append("<p>Shaded completions are in the attractor basin (the most popular embedding cluster).</p>")
    for run in runs:
        parts.append(f"<h2>{html.escape(run.label)}</h2>")
        if run.run.get("command"):
            parts.append(f"<pre>{html.escape(run.run['command'])}</pre>")
        skipped = [s["step"] for s in run.steps if s.get("kind") == "skipped"]
        if skipped:
            parts.append(f"<p>Skipped steps (the reward failed): {html.escape(str(skipped))}</p>")
        for checkpoint in run.checkpoints:
            parts.append(f"<h3>step {checkpoint['step']}</h3><table class='metrics'><tr>")
            parts += [f"<td>{html.escape(k)}<br>{_format(v)}</td>" for k, v in checkpoint["metrics"].items()]
            parts.append("</tr></table><table>")
            for sample in checkpoint["samples"]:
                shade = " class='basin'" if sample.get("in_basin") else ""
                parts.append(
                    f"<tr{shade}><td>{_format(sample.get('reward'))}</td><td><i>{html.escape(sample['prompt'])}</i>"
                    f"{html.escape(sample['text'])}</td></tr>"
                )
            parts.append("</table>")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ModescopeError(f"cannot write the report '{path}': {exc.strerror or exc}") from exc
