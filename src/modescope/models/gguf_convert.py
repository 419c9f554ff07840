"""GGUF to safetensors in one pass, writing the very folder transformers' own GGUF loading would save.

Loading a GGUF through `AutoTokenizer` and `AutoModelForCausalLM` parses its metadata with gguf's
`GGUFReader` three times (the config for the tokenizer, the config for the model, the weights), and that
reader walks every vocabulary entry through numpy memmap views: seconds per parse for a 262k-token
vocabulary. It then maps tensor names by rebuilding gguf's name table once per submodule (~400 times) and
initializes a full model only to overwrite it. Here the header is read once with `struct`, the config
comes from transformers' own GGUF key mapping, tensors are de-quantized by gguf's numpy routines (the
ones transformers calls) and passed through transformers' tensor processors (llama's q/k un-permute,
Gemma's norm offset), the tokenizer is transformers' GGUF tokenizer, built while the tensors are
de-quantized, and the model exists only on the meta device, for its parameter names and `save_pretrained`.

Only architectures whose output has been checked file by file and tensor by tensor against transformers'
path are taken (`FAST_ARCHITECTURES`); `convert` raises UnsupportedGGUF for the others, before writing
anything, and the caller keeps transformers' path.
"""

from __future__ import annotations

import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

# Checked against transformers by tests/unit/test_gguf_convert.py (tiny files) and
# tests/integration/test_gguf_convert_real.py (SmolLM2); transformers special-cases many others on load.
FAST_ARCHITECTURES = frozenset({"llama", "gemma3"})
GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # v1 counted in 32 bits and is no longer written
DEFAULT_ALIGNMENT = 32  # llama.cpp's, when the file does not say
# Kept as their length: nothing here reads them, and walking 262k strings in Python costs a fraction of a
# second each time. transformers' tokenizer reads them itself.
VOCABULARY_ARRAYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.merges"})
# metadata value types: fixed-size scalars by struct format; 8 is a string and 9 an array
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# files converted from a folder holding these would have them read by transformers' Auto classes
_FOLDER_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")


class UnsupportedGGUF(Exception):
    """A readable file outside what this module converts; transformers' path takes it."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file: its GGUF name, shape in numpy order, ggml type and offset in the data section."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int


@dataclass(frozen=True)
class Header:
    """A GGUF file's metadata and tensor table. The VOCABULARY_ARRAYS hold their length only."""

    metadata: dict[str, Any]
    tensors: tuple[TensorEntry, ...]
    data_start: int

    @property
    def architecture(self) -> str:
        return str(self.metadata["general.architecture"])


class _Cursor:
    """Little-endian reads from a buffer at a moving position."""

    def __init__(self, buffer: mmap.mmap, position: int = 0) -> None:
        self.buffer = buffer
        self.position = position

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.buffer, self.position)
        self.position += struct.calcsize("<" + fmt)
        return values

    def string(self) -> str:
        (length,) = self.unpack("Q")
        start, self.position = self.position, self.position + length
        return self.buffer[start : self.position].decode("utf-8")

    def value(self, kind: int, keep_strings: bool = True) -> Any:
        if kind in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[kind])[0]
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"metadata value of unknown type {kind}")
        item_kind, count = self.unpack("IQ")
        if item_kind in _SCALAR_FORMATS:
            return list(self.unpack(f"{count}{_SCALAR_FORMATS[item_kind]}"))
        if item_kind != _STRING:
            raise UnsupportedGGUF(f"a metadata array of type {item_kind}")
        if keep_strings:
            return [self.string() for _ in range(count)]
        for _ in range(count):
            (length,) = self.unpack("Q")
            self.position += length
        return count


def read_header(path: Path) -> Header:
    """Parse a GGUF file's metadata and tensor table, and check that every tensor's data lies in the file.

    Raises ValueError (or struct.error) for a file that is not a readable GGUF, UnsupportedGGUF for one this
    reader does not handle (a big-endian file, say) but gguf's own reader might."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        if buffer[:4] != GGUF_MAGIC:
            raise ValueError("it does not start with the GGUF magic bytes")
        cursor = _Cursor(buffer, 4)
        version, tensor_count, metadata_count = cursor.unpack("IQQ")
        if version not in GGUF_VERSIONS:  # a big-endian file reads as a huge version too
            raise UnsupportedGGUF(f"GGUF version {version}")
        metadata = {}
        for _ in range(metadata_count):
            key = cursor.string()
            (kind,) = cursor.unpack("I")
            metadata[key] = cursor.value(kind, keep_strings=key not in VOCABULARY_ARRAYS)
        tensors = []
        for _ in range(tensor_count):
            name = cursor.string()
            (dimensions,) = cursor.unpack("I")
            shape = cursor.unpack(f"{dimensions}Q")
            ggml_type, offset = cursor.unpack("IQ")
            # ggml lists the fastest-moving dimension first, numpy last
            tensors.append(TensorEntry(name, tuple(reversed(shape)), ggml_type, offset))
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        header = Header(metadata, tuple(tensors), -(-cursor.position // alignment) * alignment)
        file_size = len(buffer)
    if "general.architecture" not in metadata:
        raise ValueError("its metadata has no general.architecture")
    for entry in header.tensors:
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(entry.ggml_type)]
        end = header.data_start + entry.offset + int(np.prod(entry.shape)) * type_size // block_size
        if end > file_size:
            raise ValueError(f"tensor {entry.name} runs past the end of the file (truncated?)")
    return header


def check_supported(path: Path, header: Header) -> None:
    """Raise UnsupportedGGUF unless every step below is known to match transformers for this file."""
    if header.architecture not in FAST_ARCHITECTURES:
        raise UnsupportedGGUF(f"architecture {header.architecture}")
    # transformers loads some llama files as Mistral models
    if "mistral" in str(header.metadata.get("general.name", "")).lower():
        raise UnsupportedGGUF("a Mistral model")
    if "tokenizer.ggml.tokens" not in header.metadata:
        raise UnsupportedGGUF("no vocabulary")
    beside = [name for name in _FOLDER_FILES if (path.parent / name).exists()]
    if beside:
        raise UnsupportedGGUF(f"{', '.join(beside)} beside the file")


def config_dict(header: Header) -> dict[str, Any]:
    """The config transformers builds from this file's metadata: the generic part of its
    `load_gguf_checkpoint`, which is all of it for FAST_ARCHITECTURES."""
    from transformers.integrations.ggml import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    renames = cast(dict[str, dict[str, Any]], GGUF_CONFIG_MAPPING)
    config: dict[str, Any] = {"tie_word_embeddings": all(t.name != "output.weight" for t in header.tensors)}
    config.update(GGUF_CONFIG_DEFAULTS_MAPPING.get(header.architecture, {}))
    for key, value in header.metadata.items():
        prefix, _, rest = key.partition(".")
        renamed = renames.get(prefix, {}).get(rest)
        if renamed is None or renamed == -1:  # known but unused, or not a config key
            continue
        # transformers unwraps one-element arrays
        config[renamed] = value[0] if isinstance(value, list) and len(value) == 1 else value
    if config["model_type"] == "gemma3":  # the file holds only the text model
        config["model_type"] = "gemma3_text"
    config.setdefault("vocab_size", header.metadata["tokenizer.ggml.tokens"])
    return config


def weights_map(model: Any, architecture: str, processor: Any) -> dict[str, str]:
    """GGUF tensor name -> transformers parameter name, as transformers' `get_gguf_hf_weights_map` finds
    it (the same walk over submodules, a parent's names first), with gguf's name table built once."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next(key for key, value in MODEL_ARCH_NAMES.items() if value == architecture)
    table = get_tensor_name_map(arch, model.config.num_hidden_layers)
    return _map_module(model, table, processor, "")


def _map_module(module: Any, table: Any, processor: Any, prefix: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for key in module.state_dict():
        key = processor.preprocess_name(key)
        stem, suffix = key, ""
        if key.endswith((".weight", ".bias")):
            stem, suffix = key.rsplit(".", 1)
            suffix = "." + suffix
        gguf_name = table.get_name(stem)
        if gguf_name is None:
            processor.perform_fallback_tensor_mapping(mapping, suffix, prefix, key)
        else:
            mapping[gguf_name + suffix] = prefix + key
    for name, child in module.named_children():
        for gguf_name, hf_name in _map_module(child, table, processor, f"{prefix}{name}.").items():
            mapping.setdefault(gguf_name, hf_name)
    return mapping


def _stored(blob: np.ndarray, header: Header, entry: TensorEntry) -> np.ndarray:
    """A tensor's data as stored, typed and shaped as gguf's GGUFReader hands it to `dequantize`."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape

    ggml_type = GGMLQuantizationType(entry.ggml_type)
    values = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    start = header.data_start + entry.offset
    data = blob[start : start + int(np.prod(entry.shape)) * type_size // block_size]
    if ggml_type in values:
        return data.view(values[ggml_type]).reshape(entry.shape)
    return data.reshape(quant_shape_to_byte_shape(entry.shape, ggml_type))


def _owned_float32(weights: np.ndarray, blob: np.ndarray) -> np.ndarray:
    """float32, contiguous and detached from the read-only file mapping (an F32 tensor is a view of it);
    de-quantized tensors are fresh arrays already, and copying 700 MB of them would cost a second."""
    if np.may_share_memory(weights, blob):
        return np.array(weights, dtype=np.float32)
    return np.ascontiguousarray(weights, dtype=np.float32)


def tensor_processor(header: Header, config: dict[str, Any]) -> Any:
    """transformers' processor for this architecture: the permutes and offsets it applies while loading."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    return TENSOR_PROCESSORS.get(header.architecture, TensorProcessor)(config=config)


def load_tensors(path: Path, header: Header, model: Any, processor: Any) -> dict[str, Any]:
    """Every tensor transformers would load, de-quantized to float32 torch tensors keyed by parameter name.

    The tensors are independent and gguf's numpy routines release the GIL for much of their work, so they
    are de-quantized on a few threads."""
    import torch
    from gguf import GGMLQuantizationType, dequantize

    names = weights_map(model, header.architecture, processor)
    blob = np.memmap(path, dtype=np.uint8, mode="r")

    def one(entry: TensorEntry) -> tuple[str, np.ndarray]:
        weights = dequantize(_stored(blob, header, entry), GGMLQuantizationType(entry.ggml_type))
        result = processor.process(weights=weights, name=entry.name, tensor_key_mapping=names, parsed_parameters={})
        return result.name, _owned_float32(result.weights, blob)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        processed = list(pool.map(one, header.tensors))
    # transformers skips what the model has no parameter for
    tensors = {names[name]: torch.from_numpy(weights) for name, weights in processed if name in names}
    _check_complete(model, tensors)
    return tensors


def _check_complete(model: Any, tensors: dict[str, Any]) -> None:
    """Every parameter must come from the file (a tied one from its twin): transformers would initialize a
    missing one at random, and the two paths would differ."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = [name for name in model.state_dict() if name not in tensors and name not in tied]
    if missing:
        raise UnsupportedGGUF(f"parameters missing from the file: {', '.join(missing[:5])}")


def tokenizer_class(config: Any) -> Any:
    """The class AutoTokenizer picks for a GGUF of this config when no tokenizer file sits beside it."""
    from transformers import TokenizersBackend
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    return TOKENIZER_MAPPING.get(type(config), None) or TokenizersBackend


def meta_model(config: Any) -> Any:
    """The model's skeleton on the meta device: its parameter names and save_pretrained, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # only while building: tensors made later must not land on the meta device
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def convert(path: Path, folder: Path, header: Header | None = None) -> None:
    """Write the converted model (config, float32 safetensors, tokenizer) of a GGUF file into `folder`.

    Raises UnsupportedGGUF, before writing anything, for a file this module does not take."""
    from transformers import AutoConfig

    header = header or read_header(path)
    check_supported(path, header)
    parsed = config_dict(header)
    config = AutoConfig.for_model(**parsed)
    # Everything transformers imports lazily is imported on this thread before the tokenizer's starts:
    # its lazy modules are best not raced.
    processor = tensor_processor(header, parsed)
    tokenizer_type = tokenizer_class(config)
    model = meta_model(config)
    with ThreadPoolExecutor(max_workers=1) as background:
        # the tokenizer is mostly Python (merges recovered from a vocabulary): it overlaps the numpy work
        tokenizer = background.submit(
            tokenizer_type.from_pretrained, str(path.parent), gguf_file=path.name, _from_auto=True
        )
        tensors = load_tensors(path, header, model, processor)
        model.save_pretrained(folder, state_dict=tensors)
        tokenizer.result().save_pretrained(folder)


def folder_differences(expected: Path, actual: Path) -> list[str]:
    """How two converted folders differ: file names, the bytes of every file but the weights, and the
    weights tensor by tensor (names, dtypes, exact values). Empty when they hold the same model."""
    names = {p.name for p in expected.iterdir()}
    if names != {p.name for p in actual.iterdir()}:
        return [f"files {sorted(names)} != {sorted(p.name for p in actual.iterdir())}"]
    differences = []
    for name in sorted(names):
        if name.endswith(".safetensors"):
            differences += _weights_differences(expected / name, actual / name)
        elif (expected / name).read_bytes() != (actual / name).read_bytes():
            differences.append(f"{name} differs")
    return differences


def _weights_differences(expected: Path, actual: Path) -> list[str]:
    import torch
    from safetensors import safe_open

    with safe_open(expected, "pt") as a, safe_open(actual, "pt") as b:
        if set(a.keys()) != set(b.keys()):
            return [f"{expected.name}: tensors {sorted(set(a.keys()) ^ set(b.keys()))[:5]} are in one file only"]
        differences = [f"{expected.name}: metadata differs"] if a.metadata() != b.metadata() else []
        for key in sorted(a.keys()):
            x, y = a.get_tensor(key), b.get_tensor(key)
            if x.dtype != y.dtype or not torch.equal(x, y):
                differences.append(f"{expected.name}: {key} differs ({x.dtype} {list(x.shape)} vs {y.dtype})")
    return differences
