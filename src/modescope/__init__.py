"""modescope: observe, measure and visualize mode collapse and attractors in language models.

    import modescope as ms
    models = ["gemma-3-270m", "smollm2-135m-instruct"]  # a base model and a tuned one (or ms.load(...) each)
    result = ms.distribution(models, "A random number between 0 and 100:", ms.integers(0, 100))
    result               # in Jupyter: the bars, the summaries and the divergences, inline
    result.to_pandas()   # one row per (model, answer)

Every probe is one function (`distribution`, `sample`, `temperature_sweep`, `temperature_fit`, `attractor`,
`forks`, `multiverse`, `run_suite`, ...) whose result has `to_dict()` / `to_json()`, `to_pandas()`, `plot()`
where a figure exists, and renders inline in a notebook. Names are imported on first use, so
`import modescope` (and the CLI) stays fast until torch is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modescope.version import __version__

_EXPORTS = {
    "ModescopeError": "modescope.errors",
    "DEFAULT_MODELS": "modescope.models",
    "PRESETS": "modescope.models",
    "load": "modescope.models",
    "Backend": "modescope.models.base",
    "ChatPrompt": "modescope.models.base",
    "choices": "modescope.probes.candidates",
    "choices_from_file": "modescope.probes.candidates",
    "integers": "modescope.probes.candidates",
    "backends": "modescope.models",
    "DistributionResult": "modescope.probes.distribution",
    "ModelDistribution": "modescope.probes.distribution",
    "distribution": "modescope.probes.distribution",
    "Multiverse": "modescope.probes.multiverse",
    "multiverse": "modescope.probes.multiverse",
    "PromptSetResult": "modescope.probes.prompt_set",
    "over_prompts": "modescope.probes.prompt_set",
    "prompt_set": "modescope.probes.prompt_set",
    "sample_models": "modescope.probes.sampling",
    "sample": "modescope.probes.sampling",
    "SamplingResult": "modescope.probes.sampling",
    "SamplerSettings": "modescope.engine.samplers",
    "temperature_sweep": "modescope.probes.temperature",
    "TemperatureSweep": "modescope.probes.temperature",
    "temperature_fit": "modescope.probes.temperature",
    "TemperatureFits": "modescope.probes.temperature",
    "TemperatureFit": "modescope.probes.temperature",
    "FrontierResult": "modescope.probes.frontier",
    "frontier": "modescope.probes.frontier",
    "Remedies": "modescope.remedies.options",
    "guided": "modescope.remedies.guided",
    "render_strategy": "modescope.remedies.strategies",
    "parse_verbalized": "modescope.remedies.verbalized",
    "stated_vs_real": "modescope.remedies.stated",
    "homogeneity": "modescope.metrics.homogeneity",
    "AttractorResults": "modescope.probes.attractors",
    "attractor": "modescope.probes.attractors",
    "ForksResult": "modescope.probes.forks",
    "forks": "modescope.probes.forks",
    "Store": "modescope.store",
    "SuiteRun": "modescope.suites.api",
    "run_suite": "modescope.suites.api",
    "stored_run": "modescope.suites.api",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from modescope.engine.samplers import SamplerSettings
    from modescope.errors import ModescopeError
    from modescope.metrics.homogeneity import homogeneity
    from modescope.models import DEFAULT_MODELS, PRESETS, backends, load
    from modescope.models.base import Backend, ChatPrompt
    from modescope.probes.attractors import AttractorResults, attractor
    from modescope.probes.candidates import choices, choices_from_file, integers
    from modescope.probes.distribution import DistributionResult, ModelDistribution, distribution
    from modescope.probes.forks import ForksResult, forks
    from modescope.probes.frontier import FrontierResult, frontier
    from modescope.probes.multiverse import Multiverse, multiverse
    from modescope.probes.prompt_set import PromptSetResult, over_prompts, prompt_set
    from modescope.probes.sampling import SamplingResult, sample, sample_models
    from modescope.probes.temperature import (
        TemperatureFit,
        TemperatureFits,
        TemperatureSweep,
        temperature_fit,
        temperature_sweep,
    )
    from modescope.remedies.guided import guided
    from modescope.remedies.options import Remedies
    from modescope.remedies.stated import stated_vs_real
    from modescope.remedies.strategies import render_strategy
    from modescope.remedies.verbalized import parse_verbalized
    from modescope.store import Store
    from modescope.suites.api import SuiteRun, run_suite, stored_run


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modescope' has no attribute {name!r}")
