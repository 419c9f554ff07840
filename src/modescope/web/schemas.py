"""Request bodies of the playground API, and the documented caps that bound them.

Caps are checked in code against `Limits` (not baked into the pydantic fields) so that an app can be
created with other caps, e.g. tiny ones in tests; every cap is answered with a 4xx JSON error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (documented in the README and served by GET /api/models)."""

    max_body_bytes: int = 256 * 1024  # request body size (413 beyond)
    max_prompt_chars: int = 16_000  # prompt, system message, prefill and edit text, each
    max_models: int = 4  # models per request
    max_n: int = 16  # completions per model and request
    max_tokens: int = 256  # new tokens per completion
    max_top_k: int = 50  # alternatives recorded per position
    max_prefix_tokens: int = 4096  # token ids of a branch prefix
    max_stop: int = 8  # stop strings
    max_candidates: int = 1000  # answers of a distribution probe
    max_depth: int = 8  # multiverse depth
    max_nodes: int = 3000  # multiverse tree size
    max_attractor_tokens: int = 128  # mainline length of an attractor experiment
    max_perturbations: int = 64  # swap positions x alternatives + edits + detours
    max_branch_nodes: int = 2000  # nodes of the browser's branch tree (checked by the page on growth and import)
    queue_size: int = 8  # model calls waiting for the worker (503 beyond)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptIn(_Strict):
    text: str = Field(description="The prompt text (plain), or the user message when `chat` is true.")
    chat: bool = Field(default=False, description="Render through the model's chat template.")
    system: str | None = Field(default=None, description="System message (chat only).")
    prefill: str = Field(default="", description="Start of the assistant's reply (chat only).")


class SamplerIn(_Strict):
    """The sampler chain (see `modescope.engine.samplers`); every default is off, temperature 0 is greedy."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    top_n_sigma: float | None = None
    xtc_threshold: float = 0.1
    xtc_probability: float = 0.0


class Decoding(_Strict):
    n: int = Field(default=1, description="Completions per model (cap: max_n).")
    max_tokens: int = Field(default=48, description="New tokens per completion (cap: max_tokens).")
    sampler: SamplerIn = Field(default_factory=SamplerIn)
    seed: int | None = Field(default=0, description="The same seed gives the same samples; null draws afresh.")
    top_k: int = Field(default=10, description="Alternatives recorded per position (cap: max_top_k).")
    stop: list[str] = Field(default_factory=list, description="Stop strings (kept in the text).")


class RemedyIn(_Strict):
    """A remedy for mode collapse applied to the sampling (see `modescope.remedies` and `web/remedy.py`)."""

    strategy: str = Field(default="direct", description="Prompt strategy: direct, vary, few-shot or verbalized.")
    k: int = Field(default=5, description="Responses the verbalized strategy asks for (2 to 20).")
    guide: str | None = Field(default=None, description="Another served model (same tokenizer) to guide with.")
    guide_alpha: float = Field(default=0.5, description="The guide's weight: 0 the model alone, 1 the guide alone.")
    guide_mix: str = Field(default="geometric", description="geometric (p^(1-a) q^a, renormalized) or arithmetic.")


class GenerateIn(Decoding):
    models: list[str] = Field(description="Served model names; one column each.")
    prompt: PromptIn
    remedy: RemedyIn | None = Field(default=None, description="A remedy for mode collapse; null samples as is.")


class RegenerateIn(Decoding):
    model: str
    prompt: PromptIn
    prefix_ids: list[int] = Field(default_factory=list, description="Continuation tokens kept (this model's ids).")
    edit: str = Field(default="", description="Text appended after prefix_ids (encoded without special tokens).")
    remedy: RemedyIn | None = Field(default=None, description="The remedy of the run branched (null: none).")


class NextIn(_Strict):
    model: str
    prompt: PromptIn
    prefix_ids: list[int] = Field(default_factory=list)
    top_k: int = Field(default=20, description="Most likely next tokens returned (cap: max_top_k).")


class TokenizeIn(_Strict):
    model: str
    prompt: PromptIn | None = Field(default=None, description="Tokenize as a prompt (BOS, chat template).")
    text: str | None = Field(default=None, description="Tokenize as continuation text (no special tokens).")


class DistributionIn(_Strict):
    models: list[str]
    prompt: PromptIn
    integers: tuple[int, int] | None = Field(default=None, description="Every integer LO..HI inclusive.")
    choices: list[str] | None = Field(default=None, description="An explicit list of answers.")
    leading_space: Literal["optional", "required", "none"] = "optional"
    tokenizations: Literal["all", "canonical"] = "all"
    temperature: float = 1.0


class MultiverseIn(_Strict):
    models: list[str]
    prompt: PromptIn
    prefix: str = Field(default="", description="The branch the tree starts from (text after the prompt).")
    prefix_paths: list[list[int]] | None = Field(default=None, description="The branch as token ids, per model.")
    depth: int = 4
    cutoff: float = 0.01
    max_nodes: int = Field(default=500, description="Most nodes in the tree (cap: max_nodes).")
    merge: bool = True


class EditIn(_Strict):
    start: int
    end: int
    text: str


class AttractorIn(_Strict):
    models: list[str]
    prompt: PromptIn
    max_tokens: int = 32
    swap_positions: int = 3
    alternatives: int = 2
    edits: list[EditIn] = Field(default_factory=list)
    detours: list[int] = Field(default_factory=list, description="Mainline positions of sampled detours.")
    detour_tokens: int = 3
    criterion: Literal["sentence", "edit"] = "sentence"
    threshold: float = 0.9
