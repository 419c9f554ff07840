"""modescope: observe, measure and visualize mode collapse and attractors in language models.

    import modescope as ms
    base, tuned = ms.load("gemma-3-270m"), ms.load("smollm2-135m-instruct")
    result = ms.distribution([base, tuned], prompt, ms.integers(0, 100))
    result.to_pandas()

Names are imported on first use, so `import modescope` (and the CLI) stays fast until torch is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
    "DistributionResult": "modescope.probes.distribution",
    "ModelDistribution": "modescope.probes.distribution",
    "distribution": "modescope.probes.distribution",
    "Multiverse": "modescope.probes.multiverse",
    "multiverse": "modescope.probes.multiverse",
    "PromptSetResult": "modescope.probes.prompt_set",
    "over_prompts": "modescope.probes.prompt_set",
    "prompt_set": "modescope.probes.prompt_set",
    "sample_models": "modescope.probes.sampling",
    "FrontierResult": "modescope.probes.frontier",
    "frontier": "modescope.probes.frontier",
    "Remedies": "modescope.remedies.options",
    "guided": "modescope.remedies.guided",
    "render_strategy": "modescope.remedies.strategies",
    "parse_verbalized": "modescope.remedies.verbalized",
    "stated_vs_real": "modescope.remedies.stated",
    "homogeneity": "modescope.metrics.homogeneity",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from modescope.errors import ModescopeError
    from modescope.metrics.homogeneity import homogeneity
    from modescope.models import DEFAULT_MODELS, PRESETS, load
    from modescope.models.base import Backend, ChatPrompt
    from modescope.probes.candidates import choices, choices_from_file, integers
    from modescope.probes.distribution import DistributionResult, ModelDistribution, distribution
    from modescope.probes.frontier import FrontierResult, frontier
    from modescope.probes.multiverse import Multiverse, multiverse
    from modescope.probes.prompt_set import PromptSetResult, over_prompts, prompt_set
    from modescope.probes.sampling import sample_models
    from modescope.remedies.guided import guided
    from modescope.remedies.options import Remedies
    from modescope.remedies.stated import stated_vs_real
    from modescope.remedies.strategies import render_strategy
    from modescope.remedies.verbalized import parse_verbalized


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modescope' has no attribute {name!r}")
