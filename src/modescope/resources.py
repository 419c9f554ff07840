"""Memory a request will need, estimated before any model loads, and the refusal of requests that cannot fit.

A request that outgrows the machine does not fail cleanly: the kernel kills the process (or the whole session)
minutes into loading and decoding. So the commands estimate, from the model's sizes (read from its config or
GGUF header, never its weights) and the request's options, what the engine will hold at its peak, and refuse
with one line that names the estimate, what it is made of, what the machine has and the option to lower.

What the engine holds, from reading it (engine/decode.py, engine/tree.py, probes/multiverse.py):
- every decoded row holds a float64 [vocabulary] distribution per step, and the sampler chain, the entropy
  and the model's own logits make transient copies of it: peak RSS measured on a tiny transformers model
  with a 65k-131k vocabulary was 5.5 copies of rows x vocabulary x 8 bytes with temperature alone and 9.3
  with five samplers on (top-k, typical-p, min-p, XTC, temperature); counted as 6 and 10;
- every row holds its KV cache: 2 (keys, values) x layers x KV heads x head dim x dtype bytes per token, for
  its tokens and the room a decode keeps after them (models/kv_growth.py: a quarter more, 64 at least);
- every generated token leaves a record (the token, its probability, its top alternatives) that the
  commands also turn into dicts and JSON: measured 1.1 KB per token and 0.48 KB per alternative (records do
  not hold whole-vocabulary rows);
- a block multiverse keeps a KV cache row for every forwarded spelling until its children are forwarded,
  and forwards 64 nodes a batch (6.0 copies of the batch's [rows, vocabulary] float64 measured; counted
  as 7). Nodes reaching the cutoff number at most models / cutoff per depth, and merged nodes had 1.0-1.2
  spellings each on SmolLM2 (counted as 2);
- exact answer-set trees forward --batch-size nodes a batch (3.9 copies of its [rows, vocabulary] float32
  measured on Gemma 3 at 256 rows before tree calls kept only the columns they read, counted as 4: the level
  path's figure, and an upper bound for tree calls, which hold one [rows, 8192] chunk; float64 models, tests'
  tiny ones, are not checked) and keep about 512 rows of KV cache per level (one prompt's tree, with tree
  calls, keeps far less).
Estimates are in bytes and err high (sliding-window layers are counted as full ones, prompts as one token
per byte); weights count as parameters x dtype bytes. Checked against a real run: `sample -n 256 --max-tokens
48` on SmolLM2 (CPU, float32) peaked at 2.22 GiB RSS; the estimate was 2.39 GiB (of which the process already
held about 0.45 GiB when it checked). MODESCOPE_MEMORY_CHECK=off skips the check.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from modescope.errors import ModescopeError
from modescope.models.dtypes import auto_dtype
from modescope.models.safety import local_files

FLOAT64 = 8
FLOAT32 = 4
DECODE_COPIES = 6  # [rows, vocabulary] float64 copies at a decode step's peak, temperature alone
FILTERED_DECODE_COPIES = 10  # ... with truncation samplers (sorts, masks, XTC's coin flips)
GUIDE_COPIES = 3  # base-guided decoding: the guide's distributions and their mixture
TREE_COPIES = 7  # a multiverse batch: logprobs, their copy, joint masses, per-node slices
DIST_COPIES = 4  # an answer-set tree batch, float32 (3.9 measured at 256 rows): log-probabilities, their exp, sums
RECORD_BYTES = 1280  # a generated token's record, its dict and its JSON, alternatives aside
ALTERNATIVE_BYTES = 512  # one recorded alternative, likewise
SPELLINGS_PER_NODE = 2  # token paths forwarded per merged multiverse node
MULTIVERSE_BATCH = 64  # nodes per multiverse forward pass (probes/multiverse.py)
TREE_MAX_ROWS = 512  # rows of one level an answer-set tree keeps together (engine/tree.py)
CHAT_TOKENS = 64  # a chat template's own tokens around the prompt
REMEDY_TOKENS = 256  # a prompt strategy's instruction or examples
TEMPERATURE_FIT_ROWS = (1 + 8) * 32  # token-level τ* fit: 9 trajectories of 32 tokens (probes/temperature.py)
TEMPERATURE_FIT_BYTES = 48  # per row and token: two float32 snapshots, their float64 stacks, the KL work
# Besides weights: transformers, the tokenizer, the diversity metrics' embedding model (a toy-model `sample`
# peaked at 0.71 GB RSS, SmolLM2's 1.25 GB with its 0.54 GB of weights; torch is already in this process)
RUNTIME_BYTES = 512 * 2**20
SKIP_VARIABLE = "MODESCOPE_MEMORY_CHECK"


# --- what a model's memory depends on --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a model that decide its memory, read without loading weights."""

    name: str
    vocab: int
    layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    parameters: int = 0
    in_process: bool = True  # False: a server holds the weights and the KV cache

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Keys and values of one token over every layer (0 when a server keeps them)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes if self.in_process else 0

    def weight_bytes(self, dtype_bytes: int) -> int:
        return self.parameters * dtype_bytes if self.in_process else 0


# Presets whose converted copy is not cached yet: sizes from their GGUF headers (gemma-3-270m Q4_K_M,
# SmolLM2-135M-Instruct Q4_1), so the check need not assemble or convert anything.
KNOWN_SHAPES = {
    "gemma-3-270m": ModelShape("gemma-3-270m", 262_144, 18, 1, 256, 268_098_176),
    "smollm2-135m-instruct": ModelShape("smollm2-135m-instruct", 49_152, 30, 3, 64, 134_515_008),
}


def _size(config: dict[str, Any], *keys: str) -> int:
    """The first of `keys` that holds a positive integer; 0 when none does."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def shape_from_config(name: str, config: dict[str, Any], parameters: int = 0) -> ModelShape | None:
    """Sizes from a transformers config.json (a multimodal model's text part); None when they are not there."""
    text = config.get("text_config") or config
    hidden = _size(text, "hidden_size", "n_embd", "d_model")
    layers = _size(text, "num_hidden_layers", "n_layer")
    heads = _size(text, "num_attention_heads", "n_head")
    vocab = _size(text, "vocab_size") or _size(config, "vocab_size")
    if not (hidden and layers and heads and vocab):
        return None
    kv_heads = _size(text, "num_key_value_heads") or heads
    head_dim = _size(text, "head_dim") or hidden // heads
    if not parameters:  # attention, MLP and embeddings, for a folder without safetensors headers
        intermediate = _size(text, "intermediate_size") or 4 * hidden
        attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
        embeddings = 1 if config.get("tie_word_embeddings", True) else 2
        parameters = layers * (attention + 3 * hidden * intermediate) + embeddings * vocab * hidden
    return ModelShape(name, vocab, layers, kv_heads, head_dim, parameters)


def safetensors_parameters(folder: Path) -> int:
    """Parameters counted from the safetensors headers of a folder (a few KB read per file; 0 if none)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > 100_000_000:  # not a real header: count nothing rather than read it
                return 0
            header = json.loads(file.read(length))
        total += sum(math.prod(t["shape"]) for key, t in header.items() if key != "__metadata__")
    return total


def shape_from_folder(name: str, folder: Path) -> ModelShape | None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
        return shape_from_config(name, config, safetensors_parameters(folder))
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None  # an unreadable folder: the loader says what is wrong with it


# --- GGUF headers ------------------------------------------------------------------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _read(file: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = file.read(size)
    if len(data) != size:
        raise ValueError("the GGUF header ends early")
    return struct.unpack(fmt, data)[0]


def _string(file: BinaryIO) -> str:
    return file.read(_read(file, "<Q")).decode("utf-8", errors="replace")


def _value(file: BinaryIO, kind: int) -> Any:
    """One metadata value; an array of strings or numbers is skipped and stands for its length, except
    short numeric arrays (per-layer head counts), kept as lists."""
    if kind == _STRING:
        return _string(file)
    if kind in _SCALARS:
        return _read(file, _SCALARS[kind])
    if kind != _ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    inner, count = _read(file, "<I"), _read(file, "<Q")
    if inner == _STRING:
        for _ in range(count):
            file.seek(_read(file, "<Q"), os.SEEK_CUR)
        return count
    if inner in _SCALARS and count <= 1024:
        return [_read(file, _SCALARS[inner]) for _ in range(count)]
    file.seek(count * struct.calcsize(_SCALARS.get(inner, "<Q")), os.SEEK_CUR)
    return count


def gguf_metadata(path: Path) -> tuple[dict[str, Any], int]:
    """A GGUF file's metadata (arrays as their lengths) and its parameter count, from the header alone.

    The gguf package's reader parses every token string of the vocabulary (about 30 s for a 262k one on a
    busy CPU); this reads the lengths and seeks past the strings."""
    with path.open("rb") as file:
        if file.read(4) != b"GGUF" or _read(file, "<I") < 2:
            raise ValueError("not a GGUF file of version 2 or later")
        tensors, keys = _read(file, "<Q"), _read(file, "<Q")
        metadata = {}
        for _ in range(keys):
            key = _string(file)
            metadata[key] = _value(file, _read(file, "<I"))
        parameters = 0
        for _ in range(tensors):
            _string(file)
            dims = [_read(file, "<Q") for _ in range(_read(file, "<I"))]
            _read(file, "<I"), _read(file, "<Q")  # type and offset
            parameters += math.prod(dims)
    return metadata, parameters


def shape_from_gguf(name: str, path: Path) -> ModelShape | None:
    try:
        metadata, parameters = gguf_metadata(path)
    except (OSError, ValueError, struct.error):
        return None  # the loader reports an unreadable file
    arch = metadata.get("general.architecture", "")

    def number(key: str, default: int = 0) -> int:
        value = metadata.get(f"{arch}.{key}", default)
        return int(max(value)) if isinstance(value, list) and value else int(value or default)

    heads = number("attention.head_count")
    vocab = metadata.get("tokenizer.ggml.tokens")
    if not heads or not isinstance(vocab, int):
        return None
    head_dim = number("attention.key_length", number("embedding_length") // heads)
    layers, kv_heads = number("block_count"), number("attention.head_count_kv", heads)
    return ModelShape(name, vocab, layers, kv_heads, head_dim, parameters)


# --- which model a name stands for -------------------------------------------------------------------------


def model_shape(name: str, tokenizer: str | None = None) -> ModelShape | None:
    """The sizes of the model `modescope.models.load(name)` would load, without loading it; None when they
    cannot be known beforehand (an HF id not in the local cache, an unreadable file): the check then leaves
    that model out and the loader speaks for itself."""
    from modescope.models.remote import is_remote, split_remote

    if is_remote(name):  # the server holds weights and KV cache; only its vocabulary reaches this process
        served = model_shape(tokenizer or split_remote(name)[0])
        return ModelShape(name, served.vocab, in_process=False) if served is not None else None
    if name.startswith("toy:"):
        from modescope.models.analytic import TOY_TOKENS

        return ModelShape(name, len(TOY_TOKENS) + 1)
    found = _local_shape(name)
    return replace(found, name=name) if found else None


def _local_shape(name: str) -> ModelShape | None:
    from modescope.models import PRESETS

    if name in PRESETS:
        return _preset_shape(name)
    path = Path(name).expanduser()
    if "+" in name and not path.exists():  # BASE+ADAPTER: a LoRA adapter adds little to its base
        return _local_shape(name.split("+", 1)[0])
    if name.lower().endswith(".gguf"):
        return _gguf_shape(name, path)
    if not (path.is_dir() or (name.count("/") == 1 and not path.suffix)):
        return None
    local = local_files(name)  # the folder, or a Hugging Face id's snapshot in the local cache
    return shape_from_folder(name, local) if local is not None else None


def _preset_shape(name: str) -> ModelShape | None:
    from modescope.models import PRESETS
    from modescope.models.hf import cache_root

    preset = PRESETS[name]
    if preset.base is not None:  # an adapter preset: its base's sizes
        return _preset_shape(preset.base)
    if not preset.installed():
        return None  # the loader says which package to install
    converted = shape_from_folder(name, cache_root() / "converted" / preset.cache_key())
    return converted or KNOWN_SHAPES.get(name)


def _gguf_shape(name: str, path: Path) -> ModelShape | None:
    from modescope.models.hf import gguf_cache_dir

    if not path.is_file():
        return None
    converted = shape_from_folder(name, gguf_cache_dir(path))
    return converted or shape_from_gguf(name, path)


# --- what the machine has ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # where the figure comes from, for the message


def meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in bytes: what the kernel can give without swapping (free plus reclaimable cache)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What the process's cgroup still allows (its limit less its usage); None without a limit."""
    for limit_file, usage_file in (
        (root / "memory.max", root / "memory.current"),  # cgroup v2
        (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes"),  # v1
    ):
        try:
            limit = limit_file.read_text().strip()
            usage = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # v1 writes "no limit" as a huge number, v2 as "max"
            return max(0, int(limit) - usage)
    return None


def available_memory() -> Available | None:
    """Memory this process can still take: MemAvailable, bounded by the cgroup's room when it has a limit;
    psutil where /proc is missing (if installed); None when nothing says."""
    available = meminfo_available()
    source = "MemAvailable"
    if available is None:
        try:
            import psutil
        except ImportError:
            return None
        available, source = int(psutil.virtual_memory().available), "psutil"
    room = cgroup_room()
    if room is not None and room < available:
        return Available(room, "the cgroup's memory limit")
    return Available(available, source)


def accelerator_memory(device: str) -> Available | None:
    """Free memory of the CUDA device the models will run on; None when they run on the CPU."""
    if device == "cpu":
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
    except (ImportError, ValueError, RuntimeError, AssertionError):
        return None  # a bad device name: the loader says what to use
    return Available(int(free), f"free on cuda:{index}")


def dtype_bytes(dtype: str, on_accelerator: bool) -> int:
    """Bytes per weight and KV entry of `dtype` (auto as `precision.auto_dtype` decides it)."""
    if dtype == "auto":
        dtype = auto_dtype(on_accelerator)
    return 2 if dtype in ("bfloat16", "float16") else 4


# --- the estimate ------------------------------------------------------------------------------------------

Flag = Callable[[str], str]  # a setting's key ("max_tokens") as the user writes it ("--max-tokens")


def as_flag(key: str) -> str:
    """A setting as the command line spells it."""
    return "--" + key.replace("_", "-")


@dataclass(frozen=True)
class Part:
    """One thing the request keeps in memory: its bytes, how they come about, and what shrinks them."""

    what: str
    bytes: int
    formula: str
    remedies: tuple[str, ...] = ()  # "lower --n", "raise --cutoff"
    on_accelerator: bool = False  # weights and KV cache live where the model runs
    note: str = ""  # how a count in the formula comes about, shown once: "12 rows: --swap-positions 4 x ..."

    def text(self) -> str:
        return f"{self.what}: {self.formula} = {size_text(self.bytes)}"


@dataclass
class Estimate:
    """What a command (or a suite's probe) will hold at its peak."""

    what: str  # "sample", "probe 'bugs' (sample)"
    parts: list[Part] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.bytes for p in self.parts)


def size_text(count: float) -> str:
    """Bytes in binary units, three significant digits (all digits from 1,000 up): 4.1 TiB, 21 GiB, 1,022 MiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("bytes", 1)):
        if count >= scale or unit == "bytes":
            value = count / scale
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:,.0f} {unit}"
    raise AssertionError("unreachable")


def check_memory(estimate: Estimate, host: Available | None = None, accelerator: Available | None = None) -> None:
    """Refuse, with one line, an estimate larger than what the machine has: the CPU's memory (`host`, by
    default what available_memory says) holds everything when the models run there; when they run on a CUDA
    device (`accelerator`: its free memory), their weights and KV cache are checked against that instead."""
    if os.environ.get(SKIP_VARIABLE, "").lower() in ("off", "0", "no", "false"):
        return
    host = host or available_memory()
    pools = [(host, [p for p in estimate.parts if accelerator is None or not p.on_accelerator])]
    if accelerator is not None:
        pools.append((accelerator, [p for p in estimate.parts if p.on_accelerator]))
    for room, parts in pools:
        needed = sum(p.bytes for p in parts)
        if room is not None and needed > room.bytes:
            raise ModescopeError(_refusal(estimate.what, parts, needed, room))


def _refusal(what: str, parts: list[Part], needed: int, room: Available) -> str:
    ranked = sorted((p for p in parts if p.bytes > 0), key=lambda p: -p.bytes)
    shown = "; ".join(p.text() for p in ranked)
    notes = "".join(f"{note}; " for note in dict.fromkeys(p.note for p in ranked if p.note))
    return (
        f"{what} needs about {size_text(needed)}, more than the {size_text(room.bytes)} available ({room.source}): "
        f"{notes}{shown}; {_advice(ranked)} (or set {SKIP_VARIABLE}=off to run anyway)"
    )


def _advice(ranked: list[Part]) -> str:
    """What to change, from the largest part down: "lower --n or --max-tokens, or raise --cutoff"."""
    if not ranked or not ranked[0].remedies:
        return "use a smaller model, --dtype bfloat16, or a GPU (--device cuda)"
    remedies = list(dict.fromkeys(r for p in ranked for r in p.remedies))[:3]
    by_verb: dict[str, list[str]] = {}
    for remedy in remedies:
        verb, _, flag = remedy.partition(" ")
        by_verb.setdefault(verb, []).append(flag)
    return ", or ".join(f"{verb} {' or '.join(flags)}" for verb, flags in by_verb.items())


# --- per command ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """The models of a request and what every estimate of it shares."""

    shapes: list[ModelShape]
    dtype_bytes: int
    prompt_tokens: int  # the longest prompt's tokens, at most
    flag: Flag = as_flag

    def option(self, key: str, value: float) -> str:
        shown = f"{value:g}" if isinstance(value, float) else f"{value:,}"
        return f"{self.flag(key)} {shown}"

    def lower(self, *keys: str) -> tuple[str, ...]:
        return tuple(f"lower {self.flag(key)}" for key in keys)

    @property
    def in_process(self) -> list[ModelShape]:
        return [s for s in self.shapes if s.in_process]


def prompt_tokens(*texts: str, chat: bool = False) -> int:
    """At most the prompt's UTF-8 bytes (byte-level and byte-fallback tokens each spell one byte or more),
    plus BOS, or the chat template's own tokens."""
    return sum(len(t.encode("utf-8")) for t in texts) + (CHAT_TOKENS if chat else 1)


def runtime_part() -> Part:
    return Part("runtime", RUNTIME_BYTES, "transformers, tokenizers and the metrics' embedding model")


def weight_parts(request: Request, shapes: Sequence[ModelShape] | None = None) -> list[Part]:
    size = request.dtype_bytes
    return [
        Part(f"weights of {s.name}", s.weight_bytes(size), f"{s.parameters:,} parameters x {size} bytes", (), True)
        for s in (request.in_process if shapes is None else [s for s in shapes if s.in_process])
    ]


@dataclass(frozen=True)
class Rows:
    """Rows decoded together, their tokens (prompt included), how both come about and the settings behind them."""

    count: int
    text: str  # "--n 16", or "12 rows" with `note` saying where they come from
    tokens: int
    tokens_text: str
    keys: tuple[str, ...]  # settings that shrink them
    note: str = ""


KV_MIN_ROOM = 64  # a decode's KV cache keeps room for a quarter more positions, 64 at least (models/kv_growth.py)


def kv_positions(tokens: int) -> int:
    """Positions a decoded row's KV cache holds room for when it holds `tokens`."""
    return tokens + max(KV_MIN_ROOM, tokens // 4)


def decode_parts(request: Request, shape: ModelShape, rows: Rows, copies: int) -> list[Part]:
    """One model decoding its rows in one batch: its float64 work buffers and its KV cache (with the room it
    grows into). A server decodes by itself: nothing here."""
    if not shape.in_process:
        return []
    per_token = shape.kv_bytes_per_token(request.dtype_bytes)
    remedies = request.lower(*rows.keys)
    positions = kv_positions(rows.tokens)
    return [
        Part(
            f"decode buffers of {shape.name}",
            rows.count * shape.vocab * FLOAT64 * copies,
            f"{rows.text} x vocabulary {shape.vocab:,} x {FLOAT64} bytes x {copies} copies",
            remedies,
            note=rows.note,
        ),
        Part(
            f"KV cache of {shape.name}",
            rows.count * positions * per_token,
            f"{rows.text} x ({rows.tokens_text} + room {positions - rows.tokens}) x {size_text(per_token)} per token",
            remedies,
            True,
            rows.note,
        ),
    ]


def record_part(request: Request, rows: Rows, tokens: int, alternatives: int, alternatives_key: str = "") -> Part:
    """The records of every generated token of every model, kept until the command writes them."""
    count = len(request.shapes)
    per_token = RECORD_BYTES + alternatives * ALTERNATIVE_BYTES
    plural = "alternative" if alternatives == 1 else "alternatives"
    shown = request.option(alternatives_key, alternatives) if alternatives_key else f"{alternatives} {plural}"
    formula = (
        f"{count} model{'s' if count > 1 else ''} x {rows.text} x {request.option('max_tokens', tokens)} x "
        f"({RECORD_BYTES:,} + {shown} x {ALTERNATIVE_BYTES}) bytes"
    )
    keys = dict.fromkeys((*rows.keys, "max_tokens", *([alternatives_key] if alternatives_key else [])))
    bytes_ = count * rows.count * tokens * per_token
    return Part("token records", bytes_, formula, request.lower(*keys), note=rows.note)


def _worst(per_model: Sequence[list[Part]]) -> list[Part]:
    """Models run one after another: the peak is the largest model's."""
    return max(per_model, key=lambda parts: sum(p.bytes for p in parts), default=[])


def _decoding(request: Request, rows: Rows, copies: int) -> list[Part]:
    return _worst([decode_parts(request, s, rows, copies) for s in request.shapes])


def sample_parts(
    request: Request,
    n: int,
    max_tokens: int,
    top_alternatives: int = 10,
    filtered: bool = False,
    guide: ModelShape | None = None,
    prompts: int = 1,
) -> list[Part]:
    """`sample`: n rows per model and prompt decoded together, one model at a time, every record kept; with
    a guide, its weights and its rows too."""
    rows_text = request.option("n", n) if prompts == 1 else f"{prompts} prompts x {request.option('n', n)}"
    tokens_text = f"(prompt {request.prompt_tokens:,} + {request.option('max_tokens', max_tokens)}) tokens"
    rows = Rows(prompts * n, rows_text, request.prompt_tokens + max_tokens, tokens_text, ("n", "max_tokens"))
    copies = FILTERED_DECODE_COPIES if filtered else DECODE_COPIES
    parts = [record_part(request, rows, max_tokens, top_alternatives, "top_alternatives")]
    parts += _decoding(request, rows, copies)
    if guide is not None and guide.in_process:  # the guide decodes every row beside each model
        parts += weight_parts(request, [guide]) + decode_parts(request, guide, rows, GUIDE_COPIES)
    return parts


def temperature_parts(request: Request, n: int, max_tokens: int) -> list[Part]:
    """`temperature`: a sampling run per temperature (one at a time), and with two models of one vocabulary
    the token-level τ* fit, which keeps both models' distributions along 9 trajectories of 32 tokens."""
    parts = sample_parts(request, n, max_tokens)
    if len(request.shapes) >= 2 and request.shapes[0].vocab == request.shapes[1].vocab:
        vocab = request.shapes[0].vocab
        formula = f"{TEMPERATURE_FIT_ROWS} positions x vocabulary {vocab:,} x {TEMPERATURE_FIT_BYTES} bytes"
        parts.append(Part("token-level temperature fit", TEMPERATURE_FIT_ROWS * vocab * TEMPERATURE_FIT_BYTES, formula))
    return parts


def attractor_parts(
    request: Request,
    max_tokens: int,
    swap_positions: int,
    alternatives: int,
    positions: int | None = None,
    edits: int = 0,
    detours: int = 0,
    inserted: int = 0,
) -> list[Part]:
    """`attractor`: every perturbation regenerated greedily in one batch per model, each run to the longest
    budget (so rows hold the prompt, up to two mainline lengths and the inserted tokens)."""
    swaps = positions if positions is not None else min(swap_positions, max(max_tokens - 1, 0))
    where = f"{positions} positions" if positions is not None else request.option("swap_positions", swap_positions)
    count = edits + swaps * max(alternatives - 1, 0) + detours
    others = f" + {edits + detours} edits and detours" if edits + detours else ""
    note = f"{count:,} rows: {where} x ({request.option('alternatives', alternatives)} - 1){others} perturbations"
    tokens_text = f"(prompt {request.prompt_tokens:,} + 2 x {request.option('max_tokens', max_tokens)}) tokens"
    keys = ("alternatives", "swap_positions", "max_tokens") if positions is None else ("alternatives", "max_tokens")
    tokens = request.prompt_tokens + 2 * max_tokens + inserted
    rows = Rows(max(count, 1), f"{count:,} rows", tokens, tokens_text, keys, note)
    return [record_part(request, rows, max_tokens, 1), *_decoding(request, rows, DECODE_COPIES)]


def forks_parts(request: Request, max_tokens: int, samples: int, threshold: float, max_alternatives: int) -> list[Part]:
    """`forks`: every kept alternative at every mainline position continued `samples` times, in one batch."""
    kept = max(1, min(max_alternatives, math.floor(1 / threshold) if threshold > 0 else max_alternatives))
    count = max_tokens * kept * samples
    note = (
        f"{count:,} rows: {request.option('max_tokens', max_tokens)} positions x {kept} alternatives (at most "
        f"{request.option('max_alternatives', max_alternatives)} and 1 / {request.option('threshold', threshold)}) x "
        f"{request.option('samples', samples)}"
    )
    tokens_text = f"(prompt {request.prompt_tokens:,} + 2 x {request.option('max_tokens', max_tokens)}) tokens"
    keys = ("samples", "max_alternatives", "max_tokens")
    rows = Rows(count, f"{count:,} rows", request.prompt_tokens + 2 * max_tokens, tokens_text, keys, note)
    return [record_part(request, rows, max_tokens, 10), *_decoding(request, rows, DECODE_COPIES)]


def multiverse_parts(request: Request, depth: int, cutoff: float, max_nodes: int) -> list[Part]:
    """`multiverse`: a KV cache row per forwarded spelling in every model at once (rows live until their
    children are forwarded, and best-first expansion keeps many alive), and a batch's float64 buffers."""
    count = len(request.shapes)
    # forwarded: the root and listed nodes above the last depth; per depth, at most count / cutoff reach it
    nodes = 1 + min(max_nodes, math.ceil((depth - 1) * count / cutoff))
    rows = nodes * SPELLINGS_PER_NODE
    note = (
        f"{rows:,} rows: {nodes:,} nodes forwarded (the root and at most {request.option('max_nodes', max_nodes)}, "
        f"and ({request.option('depth', depth)} - 1) x {count} model{'s' if count > 1 else ''} / "
        f"{request.option('cutoff', cutoff)}) x {SPELLINGS_PER_NODE} spellings"
    )
    tokens = request.prompt_tokens + depth
    tokens_text = f"(prompt {request.prompt_tokens:,} + {request.option('depth', depth)}) tokens"
    remedies = (*request.lower("max_nodes", "depth"), f"raise {request.flag('cutoff')}")
    parts = []
    for shape in request.in_process:
        per_token = shape.kv_bytes_per_token(request.dtype_bytes)
        formula = f"{rows:,} rows x {tokens_text} x {size_text(per_token)} per token"
        parts.append(Part(f"KV cache of {shape.name}", rows * tokens * per_token, formula, remedies, True, note))
    vocab = sum(s.vocab for s in request.shapes)
    batch = MULTIVERSE_BATCH * SPELLINGS_PER_NODE
    formula = f"{batch} rows a batch x vocabulary {vocab:,} x {FLOAT64} bytes x {TREE_COPIES} copies"
    return [*parts, Part("expansion buffers", batch * vocab * FLOAT64 * TREE_COPIES, formula)]


def distribution_parts(
    request: Request, candidates: Sequence[str], batch_size: int, leading_space: str = "optional", prompts: int = 1
) -> list[Part]:
    """`dist`: --batch-size tree nodes forwarded at once, and the KV cache rows the tree keeps: about 512
    per level, and no more than its nodes (counted as the candidates' bytes x 2 spellings)."""
    space = int(leading_space != "none")
    variants = 2 if leading_space == "optional" else 1
    lengths = [len(c.encode("utf-8")) + space for c in candidates] or [1]
    levels = max(lengths)
    rows = min(sum(lengths) * variants * SPELLINGS_PER_NODE * prompts, TREE_MAX_ROWS * levels)
    per_model = []
    for shape in request.shapes:
        work = Part(
            f"tree buffers of {shape.name}",
            batch_size * shape.vocab * FLOAT32 * DIST_COPIES,
            f"{request.option('batch_size', batch_size)} x vocabulary {shape.vocab:,} x {FLOAT32} bytes x "
            f"{DIST_COPIES} copies",
            request.lower("batch_size"),
        )
        per_token = shape.kv_bytes_per_token(request.dtype_bytes)
        formula = f"{rows:,} tree rows x (prompt {request.prompt_tokens:,} + {levels}) tokens x {size_text(per_token)}"
        kv = Part(f"KV cache of {shape.name}", rows * (request.prompt_tokens + levels) * per_token, formula, (), True)
        per_model.append([work, kv] if shape.in_process else [work])
    return _worst(per_model)


# --- the checks the commands run before loading models ---------------------------------------------------


def _prompt_texts(prompt: Any) -> tuple[list[str], bool]:
    """The texts of a plain prompt or a ChatPrompt (user, system, prefill), and whether it is a chat one."""
    if isinstance(prompt, str):
        return [prompt], False
    return [prompt.user, prompt.system or "", prompt.prefill], True


def _shapes(models: Sequence[str], tokenizer: Sequence[str] | None) -> list[ModelShape]:
    from modescope.server_options import ServerOptions

    try:
        server = ServerOptions.resolve(tokenizer, None, None, models)
    except ModescopeError:  # the loader refuses these options with the command's whole set of them
        server = ServerOptions()
    found = [model_shape(name, server.for_model(name).get("tokenizer")) for name in models]
    return [shape for shape in found if shape is not None]


def check_command(
    command: str,
    models: Sequence[str],
    prompt: Any,
    device: str,
    dtype: str,
    parts: Callable[[Request], list[Part]],
    tokenizer: Sequence[str] | None = None,
    extra_text: str = "",
) -> None:
    """The check a command runs before it loads its models: the weights of every model plus what `parts`
    says the request holds, against what the machine has; refuses with one line (ModescopeError). Models
    whose sizes cannot be known beforehand are left out. `extra_text` is text the prompt grows by (a branch
    prefix, a strategy's instructions)."""
    shapes = _shapes(models, tokenizer)
    if not shapes:
        return
    texts, chat = _prompt_texts(prompt)
    accelerator = accelerator_memory(device)
    request = Request(shapes, dtype_bytes(dtype, accelerator is not None), prompt_tokens(*texts, extra_text, chat=chat))
    estimate = Estimate(command, [runtime_part(), *weight_parts(request), *parts(request)])
    check_memory(estimate, accelerator=accelerator)


def probe_parts(request: Request, probe: Any, prompts: int) -> list[Part]:
    """What a suite's probe holds (its keys as in the suite), `prompts` of a prompt set computed together."""
    if probe.kind in ("sample", "frontier"):
        together = min(prompts, max(1, BATCH_ROWS // probe.n))
        guide = model_shape(probe.guide) if probe.guide else None
        return sample_parts(request, probe.n, probe.max_tokens, 10, _filtered(probe), guide, together)
    if probe.kind == "temperature":
        return temperature_parts(request, probe.n, probe.max_tokens)
    if probe.kind == "attractor":
        inserted = max((len(edit.encode("utf-8")) for edit in probe.edits), default=0)
        return attractor_parts(
            request,
            probe.max_tokens,
            probe.swap_positions,
            probe.alternatives,
            None,
            len(probe.edits),
            len(probe.detours),
            inserted,
        )
    if probe.kind == "forks":
        return forks_parts(request, probe.max_tokens, probe.samples, probe.threshold, probe.max_alternatives)
    if probe.kind == "multiverse":
        return multiverse_parts(request, probe.depth, probe.cutoff, probe.max_nodes)
    if probe.kind == "distribution":
        together = min(prompts, DISTRIBUTION_PROMPTS)
        return distribution_parts(request, probe.values() or [], 256, probe.leading_space, together)
    return []


BATCH_ROWS = 256  # rows a prompt-set sampling batch holds (suites/kinds.py)
DISTRIBUTION_PROMPTS = 8  # prompts whose answer trees a prompt-set batch expands together (suites/kinds.py)


def _filtered(probe: Any) -> bool:
    """Whether a probe's sampler chain has a truncation sampler on (more buffers than temperature alone);
    a frontier's grid has them."""
    if probe.kind == "frontier":
        return True
    on = (probe.top_k > 0, probe.top_p < 1, probe.min_p > 0, probe.typical_p < 1, probe.xtc_probability > 0)
    return any(on) or probe.top_n_sigma is not None


def check_suite(probes: Sequence[Any], device: str, dtype: str, executor: bool = False) -> None:
    """The check of a suite run before its first model loads: the weights of every model it loads (a run
    keeps them all) plus its largest probe still to compute. `probes` are the runner's PlannedProbes;
    prompt-set probes that an executor (`executor`: Ray) computes elsewhere are left out."""
    accelerator = accelerator_memory(device)
    size = dtype_bytes(dtype, accelerator is not None)
    shapes: dict[str, ModelShape] = {}
    worst = Estimate("")
    for item in probes:
        if item.prompts is not None and executor:
            continue
        found = {e.name: model_shape(e.load_name, e.tokenizer) for e in item.models}
        request = _suite_request([s for s in found.values() if s is not None], item, size)
        shapes |= {name: shape for name, shape in found.items() if shape is not None}
        count = len(item.prompts) if item.prompts is not None else 1
        estimate = Estimate(f"probe '{item.probe.name}' ({item.probe.kind})", probe_parts(request, item.probe, count))
        if request.shapes and estimate.total > worst.total:
            worst = estimate
    if shapes:
        request = Request(list(shapes.values()), size, 0, str)
        estimate = Estimate(worst.what or "the run", [runtime_part(), *weight_parts(request), *worst.parts])
        check_memory(estimate, accelerator=accelerator)


def _suite_request(shapes: list[ModelShape], item: Any, size: int) -> Request:
    probe = item.probe
    texts = [p.text for p in item.prompts] if item.prompts is not None else [item.prompt]
    chat = probe.chat if probe.chat is not None else any(e.chat for e in item.models)
    extra = [probe.system or "", probe.prefill, getattr(probe, "prefix", "")] + [e.system or "" for e in item.models]
    longest = max(prompt_tokens(text, *extra, chat=chat) for text in texts)
    return Request(shapes, size, longest, str)
