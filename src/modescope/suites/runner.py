"""Run a suite against the store: every probe once, cached by content, resumable after a crash.

A probe's cache key is a hash of everything that decides its result: its kind and parameters, the rendered
prompt, each model's identity (preset and package version, or path and modification time) with its chat
settings, and the modescope version. A probe whose key is in the store is copied from there without
loading any model, so rerunning an unchanged suite is instant. Each finished probe is saved in one
transaction, so a killed run loses at most the probe it was computing; `resume=True` continues the latest
unfinished run of the same suite.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modescope import precision
from modescope.errors import ModescopeError
from modescope.models.safety import LoadPolicy
from modescope.store import ProbeOutput, UnitRecord
from modescope.suites import schema
from modescope.suites.kinds import ProbeContext, compares_pairs, pair_label, run_probe
from modescope.suites.prompt_sets import PromptItem
from modescope.suites.units import (
    Batch,
    Executor,
    ExecutorEvents,
    LocalExecutor,
    UnitFailure,
    UnitResult,
    split_batches,
)
from modescope.version import __version__

if TYPE_CHECKING:
    from modescope.models.base import Backend
    from modescope.store import Store


def model_identity(name: str, tokenizer: str | None = None, max_logprobs: int | None = None) -> str:
    """What a model name stands for, without loading it: a preset and its package version, or a path and
    the modification time of its files, or (for a hub id) the name. A model behind a server (NAME@URL) is
    its spec with the tokenizer and the cap on alternatives (which decides its tier): the server is not asked,
    so a rerun trusts that the server still serves the same model under that name."""
    from modescope.models import PRESETS
    from modescope.models.remote import is_remote

    if is_remote(name):
        capped = "" if max_logprobs is None else f"|max_logprobs:{max_logprobs}"
        return f"remote:{name}|tokenizer:{tokenizer or ''}{capped}"
    if name in PRESETS:
        preset = PRESETS[name]
        if not preset.installed():
            raise ModescopeError(preset.missing_message())
        return f"preset:{preset.cache_key()}:{preset.adapter}"
    identity = name
    for part in name.split("+"):
        path = Path(part).expanduser()
        if path.exists():
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            identity += "|" + ",".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files[:200])
    return identity


@dataclass
class PlannedProbe:
    probe: Any  # a schema probe
    prompt: str  # the prompt; for a prompt set, a one-line summary of it
    models: list[schema.ModelEntry]
    cache_key: str = ""
    # a prompt-set probe: its prompts, and its units (one per prompt and model, prompt by prompt)
    prompts: list[PromptItem] | None = None
    units: list[UnitRecord] = field(default_factory=list)


@dataclass
class SuitePlan:
    suite: schema.Suite
    text: str
    models: list[schema.ModelEntry]
    probes: list[PlannedProbe]
    hash: str


def plan_suite(
    name_or_path: str,
    models: Sequence[str] | None = None,
    *,
    tokenizer: Sequence[str] | None = None,
    max_concurrency: int | None = None,
    max_logprobs: int | None = None,
) -> SuitePlan:
    """Validate a suite, render its prompts, pick its models (`models` overrides the suite's) and key every
    probe for the cache. `tokenizer`, `max_concurrency` and `max_logprobs` are the command line's settings
    for the models behind a server (see `ServerOptions`); given, they override the suite's keys. Fails
    before any model is loaded."""
    suite, path, text = schema.load_suite(name_or_path)
    entries = [schema.ModelEntry(name=m) for m in models] if models else list(suite.models)
    return plan_entries(suite, path.parent, text, entries, tokenizer, max_concurrency, max_logprobs)


def plan_entries(
    suite: schema.Suite,
    folder: Path,
    text: str,
    entries: list[schema.ModelEntry],
    tokenizer: Sequence[str] | None = None,
    max_concurrency: int | None = None,
    max_logprobs: int | None = None,
    min_models: int = 2,
) -> SuitePlan:
    """The plan of a validated suite (its files relative to `folder`) on these model entries."""
    from modescope.server_options import ServerOptions

    server = ServerOptions.resolve(tokenizer, max_concurrency, max_logprobs, [e.load_name for e in entries])
    entries = [e.model_copy(update=server.for_model(e.load_name)) for e in entries]
    _check_server_keys(entries)
    if len(entries) < min_models:  # a suite compares models (a base and its tuned sibling, typically)
        given = ", ".join(e.name for e in entries) or "none"
        raise ModescopeError(
            f"suite '{suite.name}' needs at least two models to compare (got {given}); "
            "add [[models]] entries or pass --model for each"
        )
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModescopeError(f"model '{twice[0]}' is listed twice; name each model once")
    identities = {e.name: model_identity(e.load_name, e.tokenizer, e.max_logprobs) for e in entries}
    planned = []
    for probe in suite.probes:
        chosen = [e for e in entries if probe.models is None or e.name in probe.models]
        if not chosen:
            raise ModescopeError(f"probe '{probe.name}' has none of the run's models ({', '.join(names)})")
        if probe.is_prompt_set:
            item = _plan_prompt_set(suite, probe, folder, chosen, identities)
        else:
            item = PlannedProbe(probe, schema.render_prompt(suite, probe, folder), chosen)
            item.cache_key = _cache_key(item, identities)
        planned.append(item)
    prompts = {p.probe.name: p.prompt if p.prompts is None else _set_text(p.prompts) for p in planned}
    suite_hash = schema.suite_hash(suite, prompts | {"\x00models": json.dumps(names)})
    return SuitePlan(suite, text, entries, planned, suite_hash)


def _plan_prompt_set(
    suite: schema.Suite, probe: Any, folder: Path, models: list[schema.ModelEntry], identities: dict[str, str]
) -> PlannedProbe:
    """A prompt-set probe and its units, one per prompt and model, and for a kind that compares models (the
    temperature probe's τ*) one per prompt and pair of models too, named "A → B". Each unit is keyed like a
    one-prompt probe on its model(s), and the probe's own key (for its aggregate) covers every unit's."""
    prompts = schema.render_prompt_set(suite, probe, folder)
    item = PlannedProbe(probe, f"{len(prompts)} prompts", models, prompts=prompts)
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]] if compares_pairs(probe) else []
    for position, prompt in enumerate(prompts):
        for group in [[entry] for entry in models] + [[a, b] for a, b in pairs]:
            key = _cache_key(PlannedProbe(probe, prompt.text, group), identities)
            model = pair_label(group[0].name, group[1].name) if len(group) == 2 else group[0].name
            item.units.append(UnitRecord(probe.name, prompt.id, model, position, prompt.text, prompt.meta, key))
    keys = json.dumps([[u.prompt_id, u.model, u.cache_key] for u in item.units])
    item.cache_key = hashlib.sha256(f"prompt-set|{[e.name for e in models]}|{keys}".encode()).hexdigest()
    return item


def _set_text(prompts: Sequence[PromptItem]) -> str:
    return json.dumps([[p.id, p.text] for p in prompts])


def _check_server_keys(entries: Sequence[schema.ModelEntry]) -> None:
    from modescope.models.remote import is_remote

    for entry in entries:
        keys = entry.server_options()
        if keys and not is_remote(entry.load_name):
            raise ModescopeError(
                f"model '{entry.name}': {', '.join(keys)} {'is' if len(keys) == 1 else 'are'} for models behind a "
                f"server (NAME@URL), and '{entry.load_name}' is not one; drop {'it' if len(keys) == 1 else 'them'}"
            )


def _chat_settings(probe: Any, entry: schema.ModelEntry) -> dict[str, Any]:
    chat = probe.chat if probe.chat is not None else entry.chat
    return {"chat": chat, "system": probe.system or entry.system, "prefill": probe.prefill} if chat else {"chat": False}


PROMPT_KEYS = {"name", "title", "prompt", "prompt_file", "variables", "prompts_file", "prompts", "template"}


def _cache_key(item: PlannedProbe, identities: dict[str, str]) -> str:
    # the prompt keys are left out: the rendered prompt is in the key instead; so is `models`, a probe's models
    parameters = item.probe.model_dump(mode="json", exclude=PROMPT_KEYS)
    models = [[e.name, identities[e.name], _chat_settings(item.probe, e)] for e in item.models]
    payload = json.dumps([__version__, parameters, item.prompt, models], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class ModelPool:
    """Models loaded on first use, once per run. `policy` holds the run's --trust-remote-code and
    --allow-pickle: the person running the suite decides, never the suite file (which may come from anyone)."""

    device: str = "auto"
    dtype: str = "auto"
    on_load: Callable[[str], None] | None = None
    loaded: dict[str, Backend] = field(default_factory=dict)
    policy: LoadPolicy = field(default_factory=LoadPolicy)

    def get(self, entry: schema.ModelEntry) -> Backend:
        if entry.name not in self.loaded:
            if self.on_load:
                self.on_load(entry.name)
            from modescope.models import load

            backend = load(
                entry.load_name,
                device=self.device,
                dtype=self.dtype,
                **entry.server_options(),
                **self.policy.for_load(),
            )
            backend.name = entry.name
            self.loaded[entry.name] = backend
        return self.loaded[entry.name]

    def view(self, probe: Any, entry: schema.ModelEntry) -> Backend:
        """The model as this probe sees it: through its chat template when the probe (or the model entry)
        asks for chat and the model has one; plain otherwise (a base model has no template)."""
        backend = self.get(entry)
        settings = _chat_settings(probe, entry)
        if settings["chat"] and backend.has_chat_template:
            return backend.with_chat(settings["system"], settings["prefill"])
        return backend


@dataclass
class RunEvents:
    """What the runner tells its caller (the CLI draws progress bars from these)."""

    probe_started: Callable[[str, int, int], None] = lambda name, index, total: None
    probe_progress: Callable[[str], None] = lambda message: None
    probe_finished: Callable[[str, float, bool], None] = lambda name, seconds, cached: None
    model_loading: Callable[[str], None] = lambda name: None
    # a prompt-set probe: units stored so far (computed or from the cache) of all its units
    units_done: Callable[[str, int, int], None] = lambda name, done, total: None
    unit_failed: Callable[[UnitFailure], None] = lambda failure: None


def run_suite(
    plan: SuitePlan,
    store: Store,
    *,
    resume: bool = False,
    only: Sequence[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    events: RunEvents | None = None,
    executor: Executor | None = None,
    policy: LoadPolicy | None = None,
) -> int:
    """Run every probe of the plan (or only the named ones, recomputed) and return the run id.

    Prompt-set probes go to `executor` unit by unit (default: this process); one-prompt probes, which compare
    their models inside one process, always run here. A unit the executor gives up on is recorded as failed:
    the run goes on, ends with status "failed" and `resume=True` computes only what is missing."""
    events = events or RunEvents()
    names = [p.probe.name for p in plan.probes]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise ModescopeError(f"no probe '{unknown[0]}' in suite '{plan.suite.name}'; its probes: {', '.join(names)}")
    from modescope.resources import check_suite

    plan = precision.keyed_plan(plan, precision.requested_precision(device, dtype))  # no cache across precisions
    # before a run is recorded or a model loads: refuse probes still to compute that cannot fit in memory
    pending = [p for p in plan.probes if p.probe.name in only] if only else plan.probes
    check_suite([p for p in pending if only or store.cached(p.cache_key) is None], device, dtype, executor is not None)
    run_id = _pick_run(plan, store, resume, bool(only))
    if resume:
        store.finish_run(run_id, "running")
    done = set(store.finished_probes(run_id))
    if only:
        todo = [p for p in plan.probes if p.probe.name in only]
    else:
        todo = [p for p in plan.probes if p.probe.name not in done]
    pool = ModelPool(device, dtype, events.model_loading, policy=policy or LoadPolicy())
    local = LocalExecutor(pool)
    executor = executor or local
    failed = False
    for index, item in enumerate(todo):
        events.probe_started(item.probe.name, index, len(todo))
        started = time.perf_counter()
        if item.prompts is not None:
            output, cached = _run_prompt_set(item, run_id, store, executor, local, bool(only), events)
            if output is None:
                failed = True
                continue
        else:
            output = None if only else store.cached(item.cache_key)
            cached = output is not None
            if output is None:
                context = ProbeContext(
                    [pool.view(item.probe, e) for e in item.models], item.prompt, events.probe_progress
                )
                output = run_probe(context, item.probe)
        seconds = time.perf_counter() - started
        params = item.probe.model_dump(mode="json") | {"rendered_prompt": item.prompt}
        params["models"] = [e.name for e in item.models]
        store.save_probe(run_id, item.probe.name, item.probe.kind, params, item.cache_key, seconds, output, cached)
        events.probe_finished(item.probe.name, seconds, cached)
    store.finish_run(run_id, "failed" if failed else "finished")
    return run_id


def _run_prompt_set(
    item: PlannedProbe,
    run_id: int,
    store: Store,
    executor: Executor,
    local: Executor,
    recompute: bool,
    events: RunEvents,
) -> tuple[ProbeOutput | None, bool]:
    """Store every missing unit of a prompt-set probe, then its aggregate over the prompts: (aggregate,
    whether it came from the cache), or (None, False) when units failed (they stay missing for --resume)."""
    name, total = item.probe.name, len(item.units)
    cached = None if recompute else store.cached(item.cache_key)
    if cached is not None:
        return cached, True
    stored = set() if recompute else store.finished_units(run_id, name)
    todo: dict[str, list[UnitRecord]] = {}
    reused = 0
    for unit in item.units:
        if (unit.prompt_id, unit.model) in stored:
            continue
        output = None if recompute else store.cached_unit(unit.cache_key)
        if output is not None:
            store.save_unit(run_id, unit, output, 0.0, from_cache=True)
            reused += 1
        else:
            todo.setdefault(unit.model, []).append(unit)
    count = [total - sum(len(u) for u in todo.values())]
    events.units_done(name, count[0], total)
    failures: list[UnitFailure] = []

    def deliver(result: UnitResult) -> None:
        store.save_unit(run_id, result.unit, result.output, result.seconds)
        count[0] += 1
        events.units_done(name, count[0], total)

    def fail(failure: UnitFailure) -> None:
        unit = failure.unit
        store.record_failure(run_id, unit.probe, unit.prompt_id, unit.model, failure.error, failure.attempts)
        failures.append(failure)
        events.unit_failed(failure)

    entries = {e.name: e for e in item.models}
    pairs = {pair_label(a.name, b.name): (a, b) for i, a in enumerate(item.models) for b in item.models[i + 1 :]}
    first = item.models[0].name
    batches = [
        b for model, units in todo.items() if model in entries for b in split_batches(item.probe, entries[model], units)
    ]
    together = [
        Batch(item.probe, pairs[label][0], units, partner=pairs[label][1], first=pairs[label][0].name == first)
        for label, units in todo.items()
        if label in pairs
    ]
    with_both = ExecutorEvents(deliver, fail, events.probe_progress)
    executor.run(batches, with_both)
    local.run(together, with_both)  # pair units need both models in one process: this one
    if failures:
        return None, False
    from modescope.suites.aggregate import aggregate

    units = store.units(run_id, name, with_artifacts=True)
    return aggregate(item.probe.kind, [e.name for e in item.models], units, probe=item.probe), reused == total


def _pick_run(plan: SuitePlan, store: Store, resume: bool, only: bool) -> int:
    """--resume continues the latest unfinished run of this suite; --only reruns probes of the latest run of
    this suite; otherwise a new run."""
    models = [e.model_dump(mode="json") for e in plan.models]
    if resume:
        run_id = store.resumable_run(plan.hash)
        if run_id is None:
            raise ModescopeError(
                f"no unfinished run of suite '{plan.suite.name}' (with these models and prompts) to resume; "
                "drop --resume to start a new run"
            )
        return run_id
    if only:
        runs = store.runs()
        same = runs[runs["suite_hash"] == plan.hash] if len(runs) else runs
        if len(same):
            return int(same["id"].max())
    return store.create_run(plan.suite.name, plan.hash, plan.text, models)
