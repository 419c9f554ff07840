"""Model backends and the `load` entry point.

Heavy imports (torch, transformers) happen inside the functions that need them, so the CLI starts fast.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from modescope.errors import ModescopeError
from modescope.models.presets import DEFAULT_MODELS, PRESETS, Preset

if TYPE_CHECKING:
    from modescope.models.base import Backend

__all__ = ["DEFAULT_MODELS", "PRESETS", "Preset", "backends", "load", "preset_cached", "preset_folder"]

# models the Python API loaded by name, kept for the process: a notebook that names "smollm2-135m-instruct" in
# ten cells loads it once
_LOADED_BY_NAME: dict[str, Backend] = {}


def preset_cached(preset: Preset) -> bool:
    """Whether the preset's converted copy is in the cache (so it loads in about a second)."""
    from modescope.models.hf import cache_root

    if preset.base is not None:  # an adapter preset loads its base's converted copy
        return preset_cached(PRESETS[preset.base])
    return (cache_root() / "converted" / preset.cache_key() / "config.json").is_file() if preset.installed() else False


def preset_folder(preset: Preset) -> Path:
    """The preset's converted transformers folder, converting its GGUF the first time (5-20 s).
    An adapter preset has its base's folder."""
    from modescope.models.hf import cache_root, convert_gguf

    if preset.base is not None:
        return preset_folder(PRESETS[preset.base])
    if not preset.installed():
        raise ModescopeError(preset.missing_message())
    target = cache_root() / "converted" / preset.cache_key()
    if not (target / "config.json").is_file():
        scratch = cache_root() / "gguf" / preset.name  # where a preset assembled from chunks is written
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            convert_gguf(preset.locate(scratch), target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # the converted folder replaces any assembled copy
    return target


def _load_preset(preset: Preset, device: str, dtype: str) -> Backend:
    from modescope.models.hf import load_folder

    backend = load_folder(str(preset_folder(preset)), preset.name, device, dtype)
    backend.source = f"preset:{preset.name}"
    return backend


def load(
    name: str,
    device: str = "auto",
    dtype: str = "auto",
    *,
    tokenizer: str | None = None,
    max_concurrency: int = 8,
    max_logprobs: int | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Backend:
    """Load a model by preset name, local folder, GGUF file, or Hugging Face id (from the local cache), or
    BASE+ADAPTER: any of those with a LoRA adapter folder (or a shipped adapter's name) on top. `toy:NAME`
    is a closed-form model over a small vocabulary (no weights: for trying commands and for tests).

    `NAME@BASE_URL` is a model behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp, an API), NAME
    being the served model name, e.g. `smollm2-135m-instruct@http://127.0.0.1:8000/v1`. Its tokenizer is
    NAME's (a preset, folder or cached HF id) unless `tokenizer` names another; `max_concurrency` bounds
    the requests in flight; `max_logprobs` caps the alternatives asked for per position (0: sampling only).

    `device` is cpu, cuda, cuda:N or auto; `dtype` is auto (float32 on CPU, bfloat16 on CUDA), float32,
    bfloat16 or float16 (both are ignored for a served model).

    Loading never runs code from the model's files unless asked: `trust_remote_code=True` lets transformers
    import the Python modules a folder or hub repository ships (config `auto_map`; a served model's tokenizer
    too), and `allow_pickle=True` reads weights (and adapters) stored as pickle (.bin, .pt, .pth, .ckpt, .pkl)
    rather than safetensors, still through torch's weights-only loader. Without them such a model is refused
    with a ModescopeError that names the file and the option.
    """
    from modescope.models.hf import load_folder, load_gguf
    from modescope.models.remote import RemoteOptions, connect, is_remote
    from modescope.models.safety import LoadPolicy

    policy = LoadPolicy(trust_remote_code, allow_pickle)
    if is_remote(name):
        return connect(
            name, RemoteOptions(tokenizer, max_concurrency, max_logprobs, trust_remote_code=trust_remote_code)
        )
    if tokenizer is not None:
        raise ModescopeError(f"--tokenizer is for models behind a server (NAME@URL); '{name}' brings its own")
    if name.startswith("toy:"):
        from modescope.models.analytic import toy_model

        return toy_model(name)
    if name in PRESETS and PRESETS[name].adapter is not None:
        from modescope.models.adapters import load_with_adapter

        preset = PRESETS[name]
        backend = load_with_adapter(f"{preset.base}+{preset.adapter}", device, dtype, policy)
        backend.name, backend.source = name, f"preset:{name}"  # type: ignore[attr-defined]
        return backend
    if name in PRESETS:
        return _load_preset(PRESETS[name], device, dtype)
    if "+" in name and not Path(name).expanduser().exists():
        from modescope.models.adapters import load_with_adapter

        return load_with_adapter(name, device, dtype, policy)
    path = Path(name).expanduser()
    if name.lower().endswith(".gguf"):
        return load_gguf(path, path.name, device, dtype)
    if path.is_dir():
        return load_folder(str(path), name, device, dtype, policy)
    if path.suffix or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModescopeError(f"model path '{name}' does not exist; give a folder, a .gguf file, or a preset name")
    if "/" not in name:
        known = ", ".join(PRESETS)
        raise ModescopeError(f"unknown model '{name}'; use a preset ({known}), a folder, a .gguf file or an HF id")
    return load_folder(name, name, device, dtype, policy)


def backends(models: Backend | str | Sequence[Backend | str]) -> list[Backend]:
    """The models of a Python API call as loaded backends, in order.

    Each item is a loaded `Backend` (kept as is) or a name for `load` (preset, folder, GGUF file, HF id,
    NAME@URL), loaded with the default device and dtype the first time and reused after. Use `load` yourself
    for other options. Two entries with the same model name are refused.
    """
    from modescope.models.base import Backend

    items = [models] if isinstance(models, Backend | str) else list(models)
    if not items:
        raise ModescopeError("give at least one model: a loaded model or a name such as 'smollm2-135m-instruct'")
    loaded = []
    for item in items:
        if isinstance(item, str):
            if item not in _LOADED_BY_NAME:
                _LOADED_BY_NAME[item] = load(item)
            item = _LOADED_BY_NAME[item]
        elif not isinstance(item, Backend):
            raise ModescopeError(f"a model is a loaded model (ms.load) or a name, not {type(item).__name__}")
        loaded.append(item)
    names = [b.name for b in loaded]
    if len(set(names)) != len(names):
        raise ModescopeError(f"a model is listed twice ({', '.join(names)}); name each model once")
    return loaded
