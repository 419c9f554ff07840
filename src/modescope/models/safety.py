"""What loading a model may run on this machine, and the checks made before transformers or peft touch it.

Two things in a model's files can run code when the model loads: Python modules the folder (or hub
repository) ships, which transformers imports when the config names them in `auto_map` and the caller passes
`trust_remote_code=True`; and weights stored as pickle (`pytorch_model.bin`, `.pt`, `.pth`, `.ckpt`, `.pkl`),
whose unpickling can call any function. Both are off unless the user opts in (`--trust-remote-code`,
`--allow-pickle`; `trust_remote_code=True`, `allow_pickle=True` in Python). Without the opt-in a folder that
needs either is refused here, with one line that names the file and the option, before any of its files is
imported or unpickled; safetensors weights hold tensors only and load as before.

Only the standard library is imported at the top: the CLI builds a `LoadPolicy` without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modescope.errors import ModescopeError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MODEL_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
ADAPTER_SAFETENSORS = ("adapter_model.safetensors",)
TRUST_HINT = "pass --trust-remote-code (trust_remote_code=True in Python) only if you trust its source"
PICKLE_HINT = (
    "pass --allow-pickle (allow_pickle=True in Python) only if you trust its source, or convert the weights to "
    "safetensors"
)


class RefusedModel(ModescopeError):
    """A model or adapter refused because loading it would run code the user did not allow."""


@dataclass(frozen=True)
class LoadPolicy:
    """What the user allows a model's files to do when they load: both off unless asked for."""

    trust_remote_code: bool = False  # import the Python modules a model's config names in auto_map
    allow_pickle: bool = False  # read weights stored as pickle (torch still loads them weights-only)

    def for_load(self) -> dict[str, Any]:
        """The opt-ins given, as keyword arguments of `modescope.models.load`; none when nothing is allowed,
        so stand-in loaders (tests, plugins) that predate these options keep working."""
        return {key: value for key, value in asdict(self).items() if value}


def local_files(folder: str) -> Path | None:
    """The local folder of a model: the folder itself, or the cached snapshot of a Hugging Face id; None when
    neither is on this machine yet (transformers then fetches it, still under trust_remote_code=False and
    safetensors only)."""
    path = Path(folder).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(folder, "config.json")
    except Exception:  # not a valid repo id for the hub either: transformers reports it
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModescopeError(f"cannot read '{path}': {exc}; the model folder is damaged") from exc
    return data if isinstance(data, dict) else {}


def _first_class(auto_map: Any) -> str:
    """One class reference of an auto_map, to name in the message (`modeling_x.MyModel`)."""
    values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    for value in values:
        for ref in value if isinstance(value, list) else [value]:
            if isinstance(ref, str):
                return ref
    return "auto_map"


def _native_tokenizer(class_name: Any) -> bool:
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    if not isinstance(class_name, str):
        return False
    return any(tokenizer_class_from_name(name) is not None for name in (class_name, class_name.removesuffix("Fast")))


def remote_code_needed(folder: Path) -> str | None:
    """Where a model folder asks for its own Python code that transformers has no built-in counterpart for:
    `config.json (modeling_x.MyModel)`, say; None when everything it needs is built into transformers.

    This mirrors transformers' own rule: a config whose `model_type` transformers knows (a stale auto_map is
    common on the hub) loads with the built-in classes under trust_remote_code=False and runs nothing."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_path = folder / "config.json"
    if config_path.is_file():
        config = _read_json(config_path)
        if config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
            return f"config.json names {_first_class(config['auto_map'])}"
    tokenizer_path = folder / "tokenizer_config.json"
    if tokenizer_path.is_file():
        tokenizer = _read_json(tokenizer_path)
        if tokenizer.get("auto_map") and not _native_tokenizer(tokenizer.get("tokenizer_class")):
            return f"tokenizer_config.json names {_first_class(tokenizer['auto_map'])}"
    return None


def check_remote_code(folder: Path, name: str, policy: LoadPolicy) -> None:
    """Refuse a model whose folder needs its own Python code, unless the user trusts remote code."""
    if policy.trust_remote_code:
        return
    needed = remote_code_needed(folder)
    if needed is not None:
        raise RefusedModel(
            f"model '{name}' needs Python code shipped with its files to load ({needed}), which would run on "
            f"this machine; {TRUST_HINT}"
        )


def pickle_weights(folder: Path, safetensors_names: tuple[str, ...]) -> Path | None:
    """The first pickle file of a folder that has no safetensors weights (the file loading would unpickle),
    or None. A folder with safetensors weights is loaded from them alone, whatever pickles sit beside them."""
    if any((folder / name).is_file() for name in safetensors_names):
        return None
    pickles = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(PICKLE_SUFFIXES))
    return pickles[0] if pickles else None


def check_pickle(folder: Path, what: str, policy: LoadPolicy, safetensors_names: tuple[str, ...]) -> None:
    """Refuse a folder whose weights exist only as pickle, unless the user allows pickle."""
    if policy.allow_pickle:
        return
    found = pickle_weights(folder, safetensors_names)
    if found is not None:
        raise RefusedModel(
            f"{what} has no safetensors weights, only pickle ('{found}'), which can run code when read; {PICKLE_HINT}"
        )


def check_model_folder(folder: str, name: str, policy: LoadPolicy) -> None:
    """Both checks on a model folder or cached Hugging Face id, before transformers reads any of it."""
    local = local_files(folder)
    if local is None:
        return
    check_remote_code(local, name, policy)
    check_pickle(local, f"model '{name}'", policy, MODEL_SAFETENSORS)


def check_adapter_folder(folder: Path, policy: LoadPolicy) -> None:
    """The pickle check on a peft adapter folder (peft reads adapter_model.safetensors first when present)."""
    check_pickle(folder, f"adapter '{folder}'", policy, ADAPTER_SAFETENSORS)


def refused_by_torch(what: str) -> RefusedModel:
    """The error for pickle weights that torch's weights-only unpickler refused: they hold more than tensors,
    which is how a pickle runs code. The opt-in never lifts this: modescope never unpickles arbitrary objects."""
    # torch's own message is a paragraph suggesting weights_only=False, the one thing not to do: not repeated
    return RefusedModel(
        f"{what}: its pickle weights hold more than tensors, so torch's weights-only loader refused them "
        "(nothing in them ran); get safetensors weights from a source you trust"
    )


def remote_code_refused(name: str, exc: Exception) -> RefusedModel | None:
    """transformers' own refusal of remote code (a case the checks above could not see, e.g. a hub id not
    cached yet), as our one-line error; None for other errors."""
    if "trust_remote_code" not in str(exc):
        return None
    return RefusedModel(f"model '{name}' needs Python code shipped with its files to load; {TRUST_HINT}")
