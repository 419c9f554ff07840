"""`base+adapter` models: a base model with a LoRA adapter (peft) on top, loaded as one backend.

`load("smollm2-135m-instruct+runs/lab/checkpoints/step-00060")` loads the base as usual and attaches the
adapter, so every probe can compare a model with its own tuned version (same tokenizer). The adapter part is
a folder saved by peft, or the name of an adapter shipped inside modescope (`models/adapters_data/`).

Adapters written by `modescope lab` carry `modescope_adapter.json`, which records the base model's name and
a fingerprint of it (architecture, sizes and a few embedding weights). Attaching an adapter to a different
base fails with a clear error rather than loading silently into a model it was not trained for (when the
shapes happen to match, peft would load it without complaint).
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modescope.errors import ModescopeError
from modescope.models.safety import LoadPolicy, check_adapter_folder, refused_by_torch

if TYPE_CHECKING:
    from modescope.models.base import Backend
    from modescope.models.hf import HFBackend

ADAPTER_META = "modescope_adapter.json"
PEFT_CONFIG = "adapter_config.json"
PROBE_ROWS = 8  # embedding rows sampled for the fingerprint
FINGERPRINT_TOLERANCE = 1e-2  # relative: the same base loaded in bfloat16 still matches, another base does not


def shipped_adapter(name: str) -> Path | None:
    """The folder of an adapter shipped inside the package, or None when there is none of that name."""
    folder = Path(str(resources.files("modescope.models") / "adapters_data" / name))
    return folder if (folder / PEFT_CONFIG).is_file() else None


def base_fingerprint(backend: HFBackend) -> dict[str, Any]:
    """What identifies a base model well enough to refuse another one: its architecture, sizes, and the mean
    of a few evenly spaced rows of its input embedding (cheap, and independent of the dtype it was loaded in)."""
    import torch

    config = backend.model.config.get_text_config()
    weight = backend.model.get_input_embeddings().weight
    rows = torch.linspace(0, weight.shape[0] - 1, PROBE_ROWS).long()
    with torch.no_grad():
        probe = weight[rows].double().mean(-1).tolist()
    return {
        "architecture": type(backend.model).__name__,
        "vocab_size": int(weight.shape[0]),
        "hidden_size": int(weight.shape[1]),
        "layers": int(getattr(config, "num_hidden_layers", 0)),
        "embedding_probe": [float(x) for x in probe],
    }


def _mismatch(expected: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """What differs between two fingerprints, or None when they describe the same base."""
    for key in ("architecture", "vocab_size", "hidden_size", "layers"):
        if expected.get(key) != actual.get(key):
            return f"{key} {expected.get(key)} vs {actual.get(key)}"
    want, have = expected.get("embedding_probe", []), actual.get("embedding_probe", [])
    if len(want) != len(have):
        return "embedding fingerprint"
    scale = max((abs(x) for x in want), default=0.0) or 1.0
    if any(
        not math.isclose(a, b, rel_tol=FINGERPRINT_TOLERANCE, abs_tol=FINGERPRINT_TOLERANCE * scale)
        for a, b in zip(want, have, strict=True)
    ):
        return "embedding weights"
    return None


def read_adapter_meta(folder: Path) -> dict[str, Any] | None:
    """The modescope metadata of an adapter folder, or None for an adapter made by other tools."""
    path = folder / ADAPTER_META
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModescopeError(f"cannot read '{path}': {exc}; the adapter folder is damaged") from exc
    if not isinstance(data, dict):
        raise ModescopeError(f"'{path}' does not hold a JSON object; the adapter folder is damaged")
    return data


def check_base(folder: Path, backend: HFBackend) -> None:
    """Refuse an adapter whose recorded base is not `backend`."""
    meta = read_adapter_meta(folder)
    if meta is None or "fingerprint" not in meta:
        return  # nothing recorded; peft still refuses weights of the wrong shape
    problem = _mismatch(meta["fingerprint"], base_fingerprint(backend))
    if problem is not None:
        raise ModescopeError(
            f"adapter '{folder}' was trained on base model '{meta.get('base', '?')}', not on '{backend.name}' "
            f"({problem} differ); load it as {meta.get('base', 'BASE')}+{folder}"
        )


def check_adapter(folder: Path, allow_pickle: bool = False) -> None:
    """Refuse what is not a peft adapter folder, and one whose weights are only pickle unless `allow_pickle`."""
    if not (folder / PEFT_CONFIG).is_file():
        raise ModescopeError(f"'{folder}' is not an adapter folder (no {PEFT_CONFIG}); give a folder saved by peft")
    check_adapter_folder(folder, LoadPolicy(allow_pickle=allow_pickle))


def attach_adapter(
    backend: HFBackend, folder: Path, name: str | None = None, *, allow_pickle: bool = False
) -> HFBackend:
    """A new backend: `backend`'s model with the LoRA adapter in `folder` attached (not merged, so its outputs
    are exactly those of the model that was saved). `backend` must not be used afterwards: peft injects the
    adapter layers into its model in place. An adapter saved as pickle (adapter_model.bin) needs
    `allow_pickle`; peft then reads it weights-only."""
    from peft import PeftModel

    from modescope.models.hf import HFBackend

    check_adapter(folder, allow_pickle)
    check_base(folder, backend)
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for a user to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = PeftModel.from_pretrained(backend.model, str(folder), is_trainable=False)
    except pickle.UnpicklingError as exc:
        raise refused_by_torch(f"adapter '{folder}'") from exc
    except (RuntimeError, ValueError, KeyError, OSError) as exc:  # size mismatches and unknown modules
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModescopeError(f"adapter '{folder}' does not fit base model '{backend.name}': {first}") from exc
    peft_model.eval()
    return HFBackend(
        name or f"{backend.name}+{folder}",
        peft_model.get_base_model(),  # the base model with the adapter layers injected
        backend.tokenizer,
        source=f"{backend.source}+{folder}",
        vocab=backend.vocab,
    )


def load_with_adapter(
    spec: str, device: str = "auto", dtype: str = "auto", policy: LoadPolicy | None = None
) -> Backend:
    """Load `BASE+ADAPTER`: BASE as `load` takes it, ADAPTER a folder or the name of a shipped adapter. The
    adapter folder is checked before the base loads, so a refused adapter costs no model time."""
    from modescope.models import load
    from modescope.models.hf import HFBackend

    base_name, _, adapter = spec.partition("+")
    if not base_name or not adapter:
        raise ModescopeError(f"model '{spec}' must be BASE+ADAPTER, both non-empty (e.g. smollm2-135m-instruct+DIR)")
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        shipped = shipped_adapter(adapter)
        if shipped is None:
            raise ModescopeError(f"adapter '{adapter}' is neither a folder nor a shipped adapter; give its folder")
        folder = shipped
    policy = policy or LoadPolicy()
    check_adapter(folder, policy.allow_pickle)
    base = load(base_name, device=device, dtype=dtype, **policy.for_load())
    if not isinstance(base, HFBackend):
        raise ModescopeError(f"model '{base_name}' cannot take an adapter; use a transformers model")
    return attach_adapter(base, folder, name=spec, allow_pickle=policy.allow_pickle)
