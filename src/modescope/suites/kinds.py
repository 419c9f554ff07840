"""What each probe kind computes, summarizes and renders, for a suite run.

Every kind turns (models, prompt, parameters) into a `ProbeOutput`: summary metrics per model, the full
JSON result, and rendered artifacts (PNG figures, self-contained HTML pages). Rendering happens here, once,
so a report is pure assembly of stored pieces and a cached probe needs no model at all.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modescope import precision
from modescope.errors import ModescopeError
from modescope.models.base import Backend
from modescope.store import Artifact, Metric, ProbeOutput
from modescope.suites import schema

Progress = Callable[[str], None]


@dataclass
class ProbeContext:
    """One probe's models (with its chat settings applied), prompt and a progress callback."""

    backends: list[Backend]
    prompt: str
    progress: Progress

    def names(self) -> list[str]:
        return [b.name for b in self.backends]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _png(draw: Callable[[Path], Any]) -> Artifact:
    """Render a figure through a function that writes a file, and keep its bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "figure.png"
        draw(path)
        return Artifact("image/png", path.read_bytes())


def _html(page: str) -> Artifact:
    return Artifact("text/html", page.encode("utf-8"))


# --- kinds -------------------------------------------------------------------------------------------------


def run_distribution(ctx: ProbeContext, probe: schema.DistributionProbe) -> ProbeOutput:
    from modescope.probes.distribution import distribution

    candidates = probe.values() or []
    ctx.progress("exact probabilities of every candidate")
    result = distribution(
        ctx.backends,
        ctx.prompt,
        candidates,
        leading_space=probe.leading_space,
        tokenizations=probe.tokenizations,
        temperature=probe.temperature,
        progress=lambda model, done, total: ctx.progress(f"{model}: {done}/{total} tree nodes"),
    )
    return _distribution_output(result)


def _distribution_prompts(
    backend: Backend, probe: schema.DistributionProbe, prompts: list[str], progress: Progress
) -> list[ProbeOutput]:
    """The exact distribution on each prompt (`outcome_distributions`: on tree calls one prompt after another,
    else the answer trees of all the prompts level by level together); equal to one prompt at a time up to
    float rounding."""
    from modescope.probes.distribution import DistributionResult, outcome_distributions

    candidates = probe.values() or []
    found = outcome_distributions(
        backend,
        prompts,
        candidates,
        probe.leading_space,
        probe.tokenizations,
        progress=lambda done, total: progress(f"{backend.name}: {done}/{total} tree nodes"),
        temperature=probe.temperature,
    )
    return [
        _distribution_output(
            DistributionResult(
                prompt, list(candidates), probe.leading_space, probe.tokenizations, [r], [], probe.temperature
            )
        )
        for prompt, r in zip(prompts, found, strict=True)
    ]


def _distribution_output(result: Any) -> ProbeOutput:
    from modescope.viz.distribution_plot import plot_distribution

    metrics = []
    for r in result.results:
        for name in ("coverage", "entropy_bits", "normalized_entropy", "effective_outcomes", "top1_share"):
            metrics.append(Metric(r.model, name, _number(getattr(r, name))))
        metrics.append(Metric(r.model, "top1", None, r.top1))
    for c in result.comparisons:
        for name in ("js_bits", "tv", "kl_ab_bits", "spearman"):
            metrics.append(Metric(f"{c.a} vs {c.b}", name, _number(getattr(c, name))))
    figure = _png(lambda path: plot_distribution(result, path))
    return ProbeOutput(metrics, result.to_dict(), {"distribution.png": figure})


def _sampler_of(probe: schema.SampleProbe) -> Any:
    from modescope.engine.samplers import SamplerSettings

    chain = {"order": tuple(probe.sampler_order)} if probe.sampler_order else {}
    return SamplerSettings.make(
        temperature=probe.temperature,
        top_p=probe.top_p,
        top_k=probe.top_k,
        min_p=probe.min_p,
        typical_p=probe.typical_p,
        top_n_sigma=probe.top_n_sigma,
        xtc_threshold=probe.xtc_threshold,
        xtc_probability=probe.xtc_probability,
        **chain,
    )


def _sample_output(result: Any, remedies: Any = None) -> ProbeOutput:
    from modescope.viz.tokens_html import sampling_page

    metrics = [Metric(m.model, name, _number(value)) for m in result.models for name, value in m.metrics.items()]
    payload = result.to_dict()
    if remedies is not None and remedies.active:
        payload["remedies"] = remedies.describe()
    if remedies is not None and remedies.strategy == "verbalized":
        from modescope.remedies.options import verbalized_summary

        payload["verbalized"] = {}
        for m in result.models:
            cut = [c.finish_reason == "length" for c in m.completions]
            found = payload["verbalized"][m.model] = verbalized_summary(m.texts, remedies.k, cut)
            metrics.append(Metric(m.model, "vs_parse_rate", _number(found["parse_rate"])))
    return ProbeOutput(metrics, payload, {"samples.html": _html(sampling_page(result))})


def _remedies_of(probe: schema.SampleProbe, like: Backend) -> Any:
    """The probe's prompt strategy and guide (loaded, seen through `like`'s chat template)."""
    from modescope.remedies.options import Remedies

    guide = _extra_model(probe.guide, like) if probe.guide else None
    return Remedies(probe.strategy, probe.k, guide, probe.guide_alpha, probe.guide_mix)


def run_sample(ctx: ProbeContext, probe: schema.SampleProbe) -> ProbeOutput:
    from modescope.probes.sampling import sample_models

    remedies = _remedies_of(probe, ctx.backends[0])
    result = sample_models(
        [_remedies_of(probe, b).backend(b, keep_name=True) for b in ctx.backends],
        remedies.prompt(ctx.prompt),
        n=probe.n,
        max_tokens=probe.max_tokens,
        sampler=_sampler_of(probe),
        seed=probe.seed,
        stop=remedies.stop(probe.stop),
        progress=lambda model: ctx.progress(f"{model}: {probe.n} completions"),
    )
    return _sample_output(result, remedies)


def _sample_prompts(
    backend: Backend, probe: schema.SampleProbe, prompts: list[str], progress: Progress
) -> list[ProbeOutput]:
    """n completions of each prompt, every prompt decoded in one batch (same samples as one at a time)."""
    from modescope.probes.sampling import sample_prompts

    remedies = _remedies_of(probe, backend)
    results = sample_prompts(
        remedies.backend(backend, keep_name=True),
        [str(remedies.prompt(p)) for p in prompts],
        n=probe.n,
        max_tokens=probe.max_tokens,
        sampler=_sampler_of(probe),
        seed=probe.seed,
        stop=remedies.stop(probe.stop),
    )
    progress(f"{backend.name}: {len(prompts)} prompts x {probe.n} completions")
    return [_sample_output(r, remedies) for r in results]


def run_temperature(ctx: ProbeContext, probe: schema.TemperatureProbe) -> ProbeOutput:
    from modescope.probes import temperature as tp
    from modescope.viz.temperature_plot import plot_temperature

    sweep = tp.temperature_sweep(
        ctx.backends, ctx.prompt, probe.temperatures, probe.n, probe.max_tokens, probe.seed, ctx.progress
    )
    fits: list[tp.TemperatureFit] = []
    notes: list[str] = []
    # "is it just temperature?": at the token level for every pair that shares a tokenizer; at the outcome
    # level (any tokenizers) between the first model, the base, and each of the others
    for i, base in enumerate(ctx.backends):
        for tuned in ctx.backends[i + 1 :]:
            found, note = _temperature_fits(base, tuned, ctx.prompt, probe, i == 0, ctx.progress)
            fits += found
            notes += note
    metrics = []
    for point in sweep.points:
        for name in ("mean_entropy_bits", "distinct_2", "self_bleu"):
            metrics.append(Metric(point.model, f"{name} @T={point.temperature:g}", _number(point.metrics.get(name))))
    metrics += _fit_metrics(fits)
    figure = _png(lambda path: plot_temperature(sweep, fits, path))
    return ProbeOutput(metrics, tp.report_dict(sweep, fits), {"temperature.png": figure}, notes)


def _temperature_fits(
    base: Backend, tuned: Backend, prompt: str, probe: schema.TemperatureProbe, with_outcomes: bool, progress: Progress
) -> tuple[list[Any], list[str]]:
    """τ* between two models on one prompt: token level when they share a tokenizer, outcome level when the
    probe has candidates and `with_outcomes` (the base is the suite's first model)."""
    from modescope.probes import temperature as tp

    fits, notes = [], []
    if tp.same_tokenizer(base, tuned):
        progress(f"token-level τ*: {base.name} → {tuned.name}")
        length = max(16, probe.max_tokens)
        fits += tp.token_level_fits(base, tuned, prompt, n=probe.n, max_tokens=length, seed=probe.seed)
    else:
        notes.append(f"token-level test skipped for {base.name} / {tuned.name}: different tokenizers")
    candidates = probe.values()
    if candidates is not None and with_outcomes:
        progress(f"outcome-level τ*: {base.name} → {tuned.name}")
        fits += tp.outcome_level_fits(base, tuned, prompt, candidates, tokenizations=probe.tokenizations)
    return fits, notes


def _fit_metrics(fits: list[Any]) -> list[Metric]:
    metrics = []
    for fit in fits:
        pair = pair_label(fit.source, fit.target)
        metrics.append(Metric(pair, f"tau_star_{fit.form}", _number(fit.tau)))
        metrics.append(Metric(pair, f"explained_{fit.form}", _number(fit.explained)))
    return metrics


def pair_label(source: str, target: str) -> str:
    """How a comparison of two models is named among the metrics (and as a pair unit's model)."""
    return f"{source} → {target}"


def run_pair_prompts(
    base: Backend, tuned: Backend, probe: Any, prompts: list[str], with_outcomes: bool, progress: Progress
) -> list[ProbeOutput]:
    """What a prompt-set probe compares between two models, on each prompt: the temperature probe's τ* fits
    (both models must be loaded together, so these units run where both are)."""
    outputs = []
    for prompt in prompts:
        fits, notes = _temperature_fits(base, tuned, prompt, probe, with_outcomes, progress)
        payload = {"prompt": prompt, "fits": [f.to_dict() for f in fits]}
        outputs.append(ProbeOutput(_fit_metrics(fits), payload, {}, notes))
    return outputs


def compares_pairs(probe: Any) -> bool:
    """Whether a prompt-set probe of this kind also has units for pairs of models (see run_pair_prompts)."""
    return probe.kind == "temperature"


def run_attractor(ctx: ProbeContext, probe: schema.AttractorProbe) -> ProbeOutput:
    from modescope.probes.attractors import AttractorPlan, Edit, attractor_experiment
    from modescope.viz.attractor_html import attractor_page
    from modescope.viz.attractor_plot import plot_attractors

    plan = AttractorPlan(
        edits=[Edit.parse(e) for e in probe.edits],
        swap_positions=probe.swap_positions,
        alternatives=probe.alternatives,
        detour_positions=probe.detours,
        seed=probe.seed,
    )
    ctx.progress("greedy mainlines, then every perturbation in one batch per model")
    results = attractor_experiment(ctx.backends, ctx.prompt, plan, probe.max_tokens, probe.criterion, probe.threshold)
    metrics = []
    for r in results:
        for name in ("basin_share", "ending_share", "median_distance"):
            metrics.append(Metric(r.model, name, _number(getattr(r, name))))
    artifacts = {
        "attractors.png": _png(lambda path: plot_attractors(results, path)),
        "attractors.html": _html(attractor_page(results, ctx.prompt)),
    }
    return ProbeOutput(metrics, {"prompt": ctx.prompt, "models": [r.to_dict() for r in results]}, artifacts)


def run_forks(ctx: ProbeContext, probe: schema.ForksProbe) -> ProbeOutput:
    from modescope.probes.forks import forking_tokens
    from modescope.viz.forks_html import forks_page

    results = {}
    for backend in ctx.backends:
        ctx.progress(f"{backend.name}: sampling from every alternative along the mainline")
        results[backend.name] = forking_tokens(
            backend,
            backend.prompt_ids(ctx.prompt),
            max_tokens=probe.max_tokens,
            samples=probe.samples,
            threshold=probe.threshold,
            max_alternatives=probe.max_alternatives,
            seed=probe.seed,
            outcome_regex=probe.outcome_regex,
        )
    metrics = []
    for name, result in results.items():
        top = result.forks(1)
        metrics.append(Metric(name, "largest_shift", _number(top[0].change_score) if top else None))
        metrics.append(
            Metric(name, "fork_position", float(top[0].position) if top else None, top[0].token if top else None)
        )
    payload = {"prompt": ctx.prompt, "models": {k: v.to_dict() for k, v in results.items()}}
    return ProbeOutput(metrics, payload, {"forks.html": _html(forks_page(results, ctx.prompt))})


def run_multiverse(ctx: ProbeContext, probe: schema.MultiverseProbe) -> ProbeOutput:
    from modescope.probes.multiverse import multiverse
    from modescope.viz.multiverse_html import multiverse_html
    from modescope.viz.multiverse_plot import plot_multiverse

    done = [0]

    def report(count: int) -> None:
        done[0] += count
        ctx.progress(f"{done[0]} nodes expanded")

    tree = multiverse(
        ctx.backends,
        ctx.prompt,
        prefix=probe.prefix,
        depth=probe.depth,
        cutoff=probe.cutoff,
        max_nodes=probe.max_nodes,
        merge=probe.merge,
        progress=report,
    )
    metrics = []
    for m, name in enumerate(tree.models):
        metrics += _multiverse_metrics(tree, m, name)
    data = tree.to_dict()
    figure = _png(lambda path: plot_multiverse(tree, [path]))
    artifacts = {"multiverse.png": figure, "multiverse.html": _html(multiverse_html(data))}
    return ProbeOutput(metrics, data, artifacts, list(tree.notices))


def _multiverse_metrics(tree: Any, model: int, name: str) -> list[Metric]:
    """How far the model fans out: entropy of the first step, its most likely first step, and the blocks
    of its own tree (few blocks with thick beams is collapse)."""
    root = tree.root.values[model]
    own = [n for n in tree.nodes() if (n.joint(model) or 0.0) >= tree.cutoff]
    first = max(tree.root.children, key=lambda c: c.joint(model) or 0.0, default=None)
    first_prob = first.values[model].prob if first is not None and first.values[model] is not None else None
    return [
        Metric(name, "root_entropy_bits", _number(root.entropy_bits if root is not None else None)),
        Metric(name, "nodes", float(len(own))),
        Metric(name, "top_first_step", _number(first_prob), first.path_text(model) if first is not None else None),
    ]


def _extra_model(name: str, like: Backend) -> Backend:
    """A model a probe names besides its own (a guide, a reference), loaded once per process and seen
    through the same chat template as `like` when `like` chats and it has a template."""
    backend = _loaded_extra(name)
    if like.chat_style is not None and backend.has_chat_template:
        return backend.with_chat(like.chat_style.system, like.chat_style.prefill)
    return backend


@functools.cache
def _loaded_extra(name: str) -> Backend:
    from modescope.models import load

    return load(name)


def _frontier_settings(probe: schema.FrontierProbe) -> Any:
    from modescope.probes.frontier import FrontierSettings

    reward = None
    if probe.reward is not None:
        from modescope.lab.rewards import make_reward

        reward = make_reward(probe.reward)
    return FrontierSettings(
        probe.n,
        probe.max_tokens,
        probe.seed,
        probe.xtc_threshold,
        probe.guide_mix,
        reward=reward,
        stop=tuple(probe.stop),
    )


def _frontier_prompts(
    backend: Backend, probe: schema.FrontierProbe, prompts: list[str], progress: Progress
) -> list[ProbeOutput]:
    """Every point of the grid on each prompt with one model: per prompt, each point's numbers as metrics
    ("min_p=0.1: fluency") and its texts in the payload; the frontier itself is drawn over the prompts."""
    from modescope.probes.frontier import frontier_prompts
    from modescope.remedies.grid import parse_grid

    guide = _extra_model(probe.guide, backend) if probe.guide else None
    reference = _extra_model(probe.reference, backend) if probe.reference else None
    found = frontier_prompts(
        backend,
        prompts,
        parse_grid(probe.remedies),
        _frontier_settings(probe),
        guide=guide,
        reference=reference,
        progress=progress,
    )
    outputs = []
    for payload in found:
        metrics = [
            Metric(backend.name, f"{point['label']}: {name}", value)
            for point in payload["points"]
            for name, value in point["metrics"].items()
        ]
        outputs.append(ProbeOutput(metrics, payload, {}))
    return outputs


def run_frontier(ctx: ProbeContext, probe: schema.FrontierProbe) -> ProbeOutput:
    """The frontier on one prompt: each model's points, summarized as over a prompt set of one."""
    from modescope.probes.frontier import FrontierUnit

    units = [
        FrontierUnit(
            backend.name,
            "1",
            ctx.prompt,
            _frontier_prompts(backend, probe, [ctx.prompt], ctx.progress)[0].payload["points"],
        )
        for backend in ctx.backends
    ]
    return frontier_output(probe, ctx.names(), units, computed_in=precision.of_backends(ctx.backends))


def frontier_output(
    probe: Any, models: list[str], units: list[Any], failed: Any = (), computed_in: dict[str, str | None] | None = None
) -> ProbeOutput:
    """The frontier over the prompts (`modescope.probes.frontier.summarize`): its points as metrics
    ("min_p=0.1: fluency", the mean over the prompts), `frontier.png`, `frontier.html` and the payload, which
    records `computed_in` ({model: precision}) before the page is drawn, so the page labels reduced precision."""
    from modescope.probes.frontier import summarize
    from modescope.viz.frontier_html import frontier_page
    from modescope.viz.frontier_plot import plot_frontier

    diversity = getattr(probe, "diversity", "embedding_diversity")
    quality = getattr(probe, "quality", "fluency")
    payload = summarize(models, units, diversity, quality) | {"failed": [dict(f) for f in failed]}
    payload |= {precision.PAYLOAD_KEY: computed_in} if computed_in is not None else {}
    metrics = [
        Metric(p["model"], f"{p['label']}: {name}", _number((estimate or {}).get("mean")))
        for p in payload["points"]
        for name, estimate in p["metrics"].items()
    ]
    artifacts = {
        "frontier.png": _png(lambda path: plot_frontier(payload, path)),
        "frontier.html": _html(frontier_page(payload)),
    }
    notes = [f"{len(failed)} unit(s) failed and are left out of the frontier"] if failed else []
    return ProbeOutput(metrics, payload, artifacts, notes)


RUNNERS: dict[str, Callable[[ProbeContext, Any], ProbeOutput]] = {
    "distribution": run_distribution,
    "sample": run_sample,
    "temperature": run_temperature,
    "attractor": run_attractor,
    "forks": run_forks,
    "multiverse": run_multiverse,
    "frontier": run_frontier,
}


# Rows decoded at once when a kind batches several prompts (each prompt brings n rows).
BATCH_ROWS = 256
# Prompts of one batch of a prompt set (expanded one after another on tree calls, else level by level together)
DISTRIBUTION_PROMPTS = 8


def prompts_per_batch(probe: Any) -> int:
    """How many prompts of a prompt set one batch holds: sampling packs prompts into one decode batch of up
    to BATCH_ROWS rows, exact distributions expand several prompts' trees together; the other kinds run a
    prompt at a time (a batch of one is the finest resume grain), each already batched inside."""
    if probe.kind == "sample":
        return max(1, BATCH_ROWS // probe.n)
    if probe.kind == "distribution":
        return DISTRIBUTION_PROMPTS
    if probe.kind == "frontier":  # each point decodes the batch's prompts together, n rows (or fewer) each
        return max(1, BATCH_ROWS // probe.n)
    return 1


def run_prompts(backend: Backend, probe: Any, prompts: list[str], progress: Progress) -> list[ProbeOutput]:
    """The probe on each prompt with one model: one output per prompt, as `run_probe` gives for that
    prompt and model alone."""
    if probe.kind == "sample":
        return _sample_prompts(backend, probe, prompts, progress)
    if probe.kind == "frontier":
        return _frontier_prompts(backend, probe, prompts, progress)
    if probe.kind == "distribution" and len(prompts) > 1:
        return _distribution_prompts(backend, probe, prompts, progress)
    return [run_probe(ProbeContext([backend], prompt, progress), probe) for prompt in prompts]


def run_probe(ctx: ProbeContext, probe: Any) -> ProbeOutput:
    runner = RUNNERS.get(probe.kind)
    if runner is None:
        raise ModescopeError(f"unknown probe kind '{probe.kind}'; use one of {', '.join(RUNNERS)}")
    return precision.stamp(runner(ctx, probe), ctx.backends)
