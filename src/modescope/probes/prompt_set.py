"""Any probe over a prompt set from Python, with the aggregates a suite stores:

    import modescope as ms
    models = [ms.load("gemma-3-270m"), ms.load("smollm2-135m-instruct")]
    result = ms.over_prompts("sample", models, ms.prompt_set("open-ended"), n=8, max_tokens=32)
    result.aggregate["pairs"]    # paired differences of every metric over the prompts
    result.to_pandas()           # one row per prompt, model and metric

`distribution` and `sample_models` also take a list of prompts where one prompt goes, and then return this
result. Each prompt's output is exactly what the probe gives for that prompt and model alone; sampling packs
many prompts into one decode batch (the same samples as one prompt at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from modescope.errors import ModescopeError
from modescope.models.base import Backend
from modescope.results import NotebookResult
from modescope.store import ProbeOutput, StoredUnit, UnitRecord
from modescope.suites.prompt_sets import PromptItem, from_list, load_prompts_file

if TYPE_CHECKING:
    import pandas as pd

    from modescope.metrics.embeddings import Embedder
    from modescope.metrics.homogeneity import HomogeneityResult

PromptsLike = Sequence[str | dict[str, Any] | PromptItem]


@dataclass
class PromptSetResult(NotebookResult):
    """A probe over a prompt set: each (prompt, model) output, and the aggregate over the prompts.

    In a notebook it shows the prompt-set page: paired statistics, where the models differ most, and every
    prompt (sortable, filterable; a click opens its units' pages)."""

    frame_height = 1100

    kind: str
    models: list[str]
    prompts: list[PromptItem]
    units: list[StoredUnit]  # prompt by prompt, the models in order
    output: ProbeOutput  # the aggregate: metrics, payload (per model, pairs, most different), figures

    @property
    def aggregate(self) -> dict[str, Any]:
        return self.output.payload

    def unit(self, prompt_id: str, model: str) -> ProbeOutput:
        """One prompt's output for one model."""
        for unit in self.units:
            if unit.record.prompt_id == prompt_id and unit.record.model == model:
                return unit.output
        raise ModescopeError(f"no prompt {prompt_id!r} with model {model!r} in this result")

    def samples(self) -> dict[str, dict[str, list[str]]]:
        """A sample probe's completions: per prompt id, per model, the texts."""
        if self.kind != "sample":
            raise ModescopeError(f"a {self.kind} probe keeps no sampled texts; run the `sample` probe")
        from modescope.suites.aggregate import sample_texts

        return sample_texts(self.models, self.units)

    def homogeneity(self, embedder: Embedder | None = None, threshold: float = 0.8) -> HomogeneityResult:
        """Cross-model homogeneity of a sample probe's completions (intra- and inter-model embedding
        similarity, see modescope.metrics.homogeneity), with any embedder and threshold. With two models or
        more the aggregate already holds it for the defaults: `aggregate["homogeneity"]`."""
        from modescope.metrics.homogeneity import homogeneity

        return homogeneity(self.samples(), embedder=embedder, threshold=threshold, models=self.models)

    def to_dict(self) -> dict[str, Any]:
        """The kind, models and prompts, and the aggregate (per model, pairs, most different)."""
        prompts = [{"id": p.id, "text": p.text, "meta": p.meta} for p in self.prompts]
        return {"kind": self.kind, "models": self.models, "prompts": prompts, "aggregate": self.aggregate}

    def to_html(self) -> str:
        """The self-contained prompt-set page (the one a suite run stores as `prompts.html`)."""
        return self.output.artifacts["prompts.html"].data.decode("utf-8")

    def to_pandas(self) -> pd.DataFrame:
        """Every per-prompt metric: prompt, model, metric, value."""
        import pandas as pd

        rows = [
            (u.record.prompt_id, m.model, m.name, m.value)
            for u in self.units
            for m in u.output.metrics
            if m.value is not None
        ]
        return pd.DataFrame.from_records(rows, columns=["prompt", "model", "metric", "value"])


def prompt_set(name_or_path: str | Path) -> list[PromptItem]:
    """A prompt set from a .jsonl/.txt file or a built-in set's name (`open-ended`)."""
    return load_prompts_file(name_or_path)


def over_prompts(
    kind: str,
    models: Backend | Sequence[Backend],
    prompts: PromptsLike,
    **settings: Any,
) -> PromptSetResult:
    """The probe `kind` (distribution, sample, temperature, attractor, forks, multiverse, frontier) with the settings a
    suite probe of that kind takes (e.g. n=8, max_tokens=32; integers=(0, 100)) on every prompt and model."""
    from modescope.suites import schema
    from modescope.suites.aggregate import aggregate
    from modescope.suites.units import compute_batch, split_batches

    backends = [models] if isinstance(models, Backend) else list(models)
    names = [b.name for b in backends]
    if not backends or len(set(names)) != len(names):
        raise ModescopeError("give one or more models, each once")
    items = from_list(prompts)
    try:
        probe = schema.Suite.model_validate(
            {"name": "python", "probes": [{"name": kind, "kind": kind, "prompts": ["-"], **settings}]}
        ).probes[0]
    except ValidationError as exc:
        raise ModescopeError(f"{kind}: {exc.errors()[0]['loc'][-1]}: {exc.errors()[0]['msg']}") from None
    found: dict[tuple[str, str], StoredUnit] = {}
    for backend in backends:
        records = [UnitRecord(kind, p.id, backend.name, k, p.text, p.meta, "") for k, p in enumerate(items)]
        for batch in split_batches(probe, schema.ModelEntry(name=backend.name), records):
            for result in compute_batch(backend, batch, lambda message: None):
                found[(result.unit.prompt_id, backend.name)] = StoredUnit(result.unit, result.output, 0.0, False)
    units = [found[(p.id, name)] for p in items for name in names]  # prompt by prompt, models in order
    return PromptSetResult(kind, names, items, units, aggregate(kind, names, units, probe=probe))
