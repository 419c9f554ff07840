"""Transformers backend: a Hugging Face id, a local folder, or a GGUF file, on CPU or CUDA.

GGUF files are de-quantized once (5-20 s for the default models, see `gguf_convert`) and kept as safetensors
in the converted-model cache, so later loads take about a second.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modescope.errors import ModescopeError
from modescope.models.base import Backend, Capabilities, ChatPrompt, Rows, TreeStep
from modescope.models.dtypes import auto_dtype
from modescope.models.gguf_convert import Header
from modescope.models.lm_head import head_logprobs, plain_head
from modescope.models.safety import (
    PICKLE_HINT,
    LoadPolicy,
    RefusedModel,
    check_model_folder,
    check_remote_code,
    local_files,
    refused_by_torch,
    remote_code_refused,
)
from modescope.models.tree_attention import TreeState, made_mask, tree_configs
from modescope.models.vocab import Vocabulary, load_vocabulary, save_vocabulary, vocabulary_from_tokenizer

logger = logging.getLogger(__name__)

# prompts up to this many tokens go in the first tree call with the first nodes (each prompt token attends to
# those before it as a node does to its ancestors); longer ones get a pass of their own (tree_attention.py)
FOLDED_PROMPT = 64
BYTE_TABLE_PROBE = "Q: 42, 7.5 or 100?\nA:  café – naïve 日本 🙂 {x}"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root() -> Path:
    """Where converted models live: $MODESCOPE_CACHE, else ~/.cache/modescope."""
    return Path(os.environ.get("MODESCOPE_CACHE") or Path.home() / ".cache" / "modescope")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModescopeError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModescopeError(f"unknown device '{device}'; use cpu, cuda, cuda:N or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        dtype = auto_dtype(device.type == "cuda")
    if dtype not in DTYPES:
        raise ModescopeError(f"unknown dtype '{dtype}'; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def tokenizer_encode(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    """Token ids of `text` by a Hugging Face tokenizer (with its BOS where it adds one, if asked)."""
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def special_name(tokenizer: Any, vocab: Vocabulary, token_id: int) -> str | None:
    """A special token's name (`<|im_end|>`), shown instead of its empty text; None for other tokens."""
    if token_id in vocab.special_ids:
        return str(tokenizer.convert_ids_to_tokens(token_id))
    return None


def chat_messages(prompt: ChatPrompt) -> list[dict[str, str]]:
    """The OpenAI-style messages of a chat prompt (its prefill is not a message)."""
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    messages.append({"role": "user", "content": prompt.user})
    return messages


def render_chat_template(tokenizer: Any, prompt: ChatPrompt) -> str:
    """The tokenizer's chat template applied to a prompt, ready for the assistant's reply, then the prefill."""
    text = tokenizer.apply_chat_template(chat_messages(prompt), tokenize=False, add_generation_prompt=True)
    return str(text) + prompt.prefill


def log_softmax_f32(logits: torch.Tensor) -> torch.Tensor:
    """A float32 log-softmax whose normalizer is summed by torch's cascade summation.

    torch's own float32 log-softmax accumulates the exponentials along the row, which over a 50k-260k
    vocabulary leaves errors up to ~3e-5 nats per token (6e-5 relative on a three-token answer's mass,
    measured). `Tensor.sum` sums in a cascade (relative error ~3e-7 over 262k terms, measured against float64)
    for the same passes (max, exp-sum, subtract), leaving ~1e-6 nats for logits of magnitude 30."""
    top = logits.amax(dim=-1, keepdim=True)  # amax: the max without its indices
    return logits - (top + (logits - top).exp().sum(dim=-1, keepdim=True).log())


@dataclass
class CacheRows(Rows):
    """Rows backed by a transformers KV cache, one cache row per prefix."""

    cache: Any
    rows: int
    prefix_length: int  # cache positions per row, left padding included
    # [rows, prefix_length] attention mask (1 = real token) when rows were left-padded to one length
    padding: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return self.rows

    @property
    def length(self) -> int:
        return self.prefix_length


def _rebuild_cache(template: Any, keys_values: Callable[[int], tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A new cache shaped like `template` whose layer i holds keys_values(i); `template` is left untouched."""
    from modescope.models.kv_growth import release_room  # imports transformers, as loading a model does

    new = copy.copy(template)
    new.layers = []
    for i, layer in enumerate(template.layers):
        clone = copy.copy(layer)
        if layer.is_initialized and layer.keys is not None:
            clone.keys, clone.values = keys_values(i)
            release_room(clone)  # its keys are its own: the room it was copied with is not
        new.layers.append(clone)
    return new


class HFBackend(Backend):
    """A transformers causal LM with its tokenizer."""

    def __init__(self, name: str, model: Any, tokenizer: Any, source: str, vocab: Vocabulary | None = None) -> None:
        vocab = vocab or vocabulary_from_tokenizer(tokenizer)
        config = model.config.get_text_config()
        super().__init__(name, vocab, int(getattr(config, "max_position_embeddings", 0) or 1 << 30))
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.device = next(model.parameters()).device
        weights = model.dtype
        self.capabilities = Capabilities(precision=str(weights).removeprefix("torch."))  # recorded with results
        # transformers renamed the cache argument from `past_key_values` to `cache` during 5.x
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        # only the last position's logits are needed when encoding a prompt: skip the LM head elsewhere
        self._last_logits_only = (
            {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        )
        self._fingerprint: str | None = None
        # the precision of next-token log-probabilities: float32, or float64 for float64 weights (tests use those
        # to check exactness to 1e-12; a float32 model set to float64 is the reference its float32 is checked by)
        self.logprob_dtype = torch.float64 if weights == torch.float64 else torch.float32
        # float32 models with a plain LM head get it fused with the log-softmax, in vocabulary chunks (lm_head.py);
        # `fused_head = False` takes transformers' own head instead (the benchmarks' before and after)
        self.fused_head = plain_head(model) is not None and self._decoder_takes(self._cache_arg)
        # decode steps write into room kept after the KV cache (kv_growth.py); False: transformers' concatenation
        self.grow_kv_in_place = True
        # the configs a tree call switches to tree attention (tree_attention.py); None: no tree calls
        self._tree_configs = tree_configs(model)
        self._check_byte_table()

    def _decoder_takes(self, cache_arg: str) -> bool:
        """Whether the decoder under the LM head (`model.model`) can be called as the model is, cache and all."""
        decoder = getattr(self.model, "model", None)
        return decoder is not None and cache_arg in inspect.signature(decoder.forward).parameters

    def _check_byte_table(self) -> None:
        """Warn when the byte table does not reproduce the tokenizer's own decoding: exact answer-set
        probabilities rely on it to know which token sequences spell an answer."""
        ids = self.encode(BYTE_TABLE_PROBE, add_special_tokens=False)
        spelled = b"".join(self.vocab.token_bytes[i] for i in ids).decode("utf-8", errors="replace")
        if spelled.strip() != str(self.tokenizer.decode(ids)).strip():
            warnings.warn(
                f"the byte table of '{self.name}' does not reproduce its tokenizer ({spelled!r}); "
                "answer-set probabilities may miss spellings",
                stacklevel=2,
            )

    def fingerprint(self) -> str | None:
        """Source, class, vocabulary size and a digest of every parameter's sum and shape: any change of
        weights (an adapter merged in, say) changes it. Computed once: about 0.1 s for 270M parameters."""
        if self._fingerprint is None:
            header = f"{self.source}|{type(self.model).__name__}|{self.vocab.size}"
            if self.capabilities.precision != "float32":  # float32 keys stay as they were; others never match them
                header += f"|{self.capabilities.precision}"
            digest = hashlib.sha256(header.encode())
            with torch.inference_mode():
                for name, parameter in self.model.named_parameters():
                    total = float(parameter.detach().sum())
                    digest.update(f"{name}:{tuple(parameter.shape)}:{total!r}".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # --- text -------------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return tokenizer_encode(self.tokenizer, text, add_special_tokens)

    def token_text(self, token_id: int) -> str:
        return special_name(self.tokenizer, self.vocab, token_id) or super().token_text(token_id)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, prompt: ChatPrompt) -> str:
        if not self.has_chat_template:
            return super().render_chat(prompt)
        return render_chat_template(self.tokenizer, prompt)

    # --- forward passes ---------------------------------------------------------------------------------
    def _forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        self.stats.add(int(input_ids.numel()))
        with torch.inference_mode():
            return self.model(input_ids=input_ids.to(self.device), **kwargs)

    def _fused(self) -> torch.Tensor | None:
        """The LM head weight when the fused head applies. Looked up at every call: weights converted after
        loading (`model.double()`) leave it."""
        return plain_head(self.model) if self.fused_head and self.logprob_dtype == torch.float32 else None

    def _forward_next(self, input_ids: torch.Tensor, **kwargs: Any) -> tuple[Any, torch.Tensor]:
        """Forward `input_ids`; the output (with its cache) and the next-token log-probabilities after each row's
        last position, through the fused chunked LM head when the model has a plain one."""
        head = self._fused()
        if head is None:
            out = self._forward(input_ids, **kwargs, **self._last_logits_only)
            return out, self._logprobs(out.logits[:, -1])
        out = self._decoder_forward(input_ids, **kwargs)
        with torch.inference_mode():
            return out, head_logprobs(out.last_hidden_state[:, -1], head, self.vocab.size)[0].cpu()

    def _tree_call(self, tree: TreeState, call: Any, tokens: Sequence[int], first_row: int = 0) -> TreeStep:
        """Forward a tree call (`tokens` in one row); the step after each of its positions from `first_row` on."""
        self.check_length(int(call.positions.max()) + 1)
        ids = torch.tensor([list(tokens)], dtype=torch.long)
        kwargs = {"attention_mask": made_mask(), "position_ids": call.positions.unsqueeze(0)}
        kwargs |= {"modescope_tree": call, self._cache_arg: tree}
        head = self._fused()
        with tree.attending():
            if head is None:
                logprobs = self._logprobs(self._forward(ids, **kwargs).logits[0, first_row:])
                return TreeStep.of(logprobs, tree.token_sets, tree.columns)
            out = self._decoder_forward(ids, **kwargs)
        with torch.inference_mode():
            sets = tree.token_sets.to(self.device, torch.float32) if tree.token_sets is not None else None
            columns = tree.columns.to(self.device) if tree.columns is not None else None
            hidden = out.last_hidden_state[0, first_row:]
            logprobs, sums = head_logprobs(hidden, head, self.vocab.size, sets, columns)
        return TreeStep(logprobs.cpu(), sums.cpu() if sums is not None else None, tree.columns)

    def _decoder_forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        """The model without its LM head: the final hidden states (and the cache)."""
        self.stats.add(int(input_ids.numel()))
        with torch.inference_mode():
            return self.model.model(input_ids=input_ids.to(self.device), **kwargs)

    @staticmethod
    def _cache_of(output: Any) -> Any:
        cache = getattr(output, "cache", None)
        return cache if cache is not None else output.past_key_values

    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """float32 log-softmax over the real vocabulary (some models pad the logits beyond it).

        float32 keeps the 0..100 masses within 3e-6 relative of a float64 log-softmax (benchmarks/bench_dist.py
        checks it), while a float64 pass over a 262k vocabulary per row costs more than the rest of a decode
        step; callers sum along paths in float64. float64 weights keep float64 (`logprob_dtype`), and
        reduced-precision weights give bfloat16 logits, which are widened first."""
        logits = logits[..., : self.vocab.size].to(self.logprob_dtype)
        if self.logprob_dtype == torch.float64:
            return torch.log_softmax(logits, dim=-1).cpu()
        return log_softmax_f32(logits).cpu()

    def start(self, prompt: Sequence[int]) -> tuple[Rows, torch.Tensor]:
        if not prompt:
            raise ModescopeError("the prompt encodes to no tokens; give a non-empty prompt")
        self.check_length(len(prompt))
        ids = torch.tensor([list(prompt)], dtype=torch.long)
        out, logprobs = self._forward_next(ids, use_cache=True)
        return CacheRows(self._cache_of(out), 1, len(prompt)), logprobs

    def start_many(self, prompts: Sequence[Sequence[int]]) -> tuple[Rows, torch.Tensor]:
        """Encode prompts of different lengths in one left-padded batch (one row each)."""
        if not prompts or not all(prompts):
            raise ModescopeError("every prompt must encode to at least one token")
        longest = max(len(p) for p in prompts)
        self.check_length(longest)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt) :] = torch.tensor(list(prompt))
            mask[row, longest - len(prompt) :] = 1
        mask = mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 in every row
        out, logprobs = self._forward_next(ids, attention_mask=mask, position_ids=positions, use_cache=True)
        return CacheRows(self._cache_of(out), len(prompts), longest, padding=mask), logprobs

    def extend(self, rows: Rows, parents: Sequence[int], tokens: Sequence[int]) -> tuple[Rows, torch.Tensor]:
        assert isinstance(rows, CacheRows)
        index = torch.tensor(list(parents), dtype=torch.long, device=self.device)
        source = rows.cache.layers
        cache = _rebuild_cache(
            rows.cache, lambda i: (source[i].keys.index_select(0, index), source[i].values.index_select(0, index))
        )
        padding = rows.padding.index_select(0, index) if rows.padding is not None else None
        return self._step(cache, rows.prefix_length, tokens, padding, grow=False)  # rows that branch

    def advance(self, rows: Rows, keep: Sequence[int], tokens: Sequence[int]) -> tuple[Rows, torch.Tensor]:
        assert isinstance(rows, CacheRows)
        cache, padding = rows.cache, rows.padding
        if list(keep) != list(range(rows.rows)):  # rows that finished are dropped; the others grow in place
            index = torch.tensor(list(keep), dtype=torch.long, device=self.device)
            cache.batch_select_indices(index)
            padding = padding.index_select(0, index) if padding is not None else None
        return self._step(cache, rows.prefix_length, tokens, padding)

    def _step(
        self,
        cache: Any,
        prefix_length: int,
        tokens: Sequence[int],
        padding: torch.Tensor | None = None,
        grow: bool = True,
    ) -> tuple[Rows, torch.Tensor]:
        """Forward one token per row on top of `cache` (whose rows match `tokens`); with `grow` (rows that go
        on, as a decode's do) its layers grow in place, unless `grow_kv_in_place` is off."""
        from modescope.models.kv_growth import grow_in_place  # imports transformers, as loading a model does

        grow_in_place(cache, grow and self.grow_kv_in_place)
        ids = torch.tensor(list(tokens), dtype=torch.long).unsqueeze(1)  # [rows, 1]
        extra: dict[str, Any] = {}
        if padding is None:
            self.check_length(prefix_length + 1)
            positions = torch.full_like(ids, prefix_length).to(self.device)
        else:
            positions = padding.sum(-1, keepdim=True)  # the next position of each row, padding left out
            self.check_length(int(positions.max()) + 1)
            padding = torch.cat([padding, torch.ones_like(padding[:, :1])], dim=-1)
            extra["attention_mask"] = padding
        out, logprobs = self._forward_next(
            ids, position_ids=positions, use_cache=True, **extra, **{self._cache_arg: cache}
        )
        return CacheRows(self._cache_of(out), len(tokens), prefix_length + 1, padding), logprobs

    def tree_start(
        self,
        prompt: Sequence[int],
        parents: Sequence[int],
        tokens: Sequence[int],
        token_sets: torch.Tensor | None = None,
        columns: torch.Tensor | None = None,
    ) -> tuple[TreeState, TreeStep] | None:
        if self._tree_configs is None:
            return None
        if not prompt:
            raise ModescopeError("the prompt encodes to no tokens; give a non-empty prompt")
        if len(prompt) > FOLDED_PROMPT:  # the prompt in a pass of its own, kept as a cache would keep it
            rows, logprobs = self.start(prompt)
            assert isinstance(rows, CacheRows)
            tree = TreeState.from_cache(rows.cache, len(prompt), self._tree_configs, token_sets, columns)
            root = TreeStep.of(logprobs, token_sets, columns)
            return tree, root.then(self.tree_extend(tree, parents, tokens) if parents else None)
        # the prompt and the first nodes in one pass: the head only after the prompt's last token and the nodes
        tree = TreeState(
            {}, len(prompt), configs=self._tree_configs, token_sets=token_sets, columns=columns, device=self.device
        )
        step = self._tree_call(tree, tree.add(parents, with_prompt=True), [*prompt, *tokens], len(prompt) - 1)
        return tree, step

    def tree_extend(self, tree: Any, parents: Sequence[int], tokens: Sequence[int]) -> TreeStep:
        assert isinstance(tree, TreeState)
        return self._tree_call(tree, tree.add(parents), tokens)

    def concat(self, parts: Sequence[Rows]) -> Rows:
        caches = [p for p in parts if isinstance(p, CacheRows) and p.rows > 0]
        if len(caches) == 1:
            return caches[0]
        layers = [c.cache.layers for c in caches]
        joined = _rebuild_cache(
            caches[0].cache,
            lambda i: (torch.cat([ls[i].keys for ls in layers]), torch.cat([ls[i].values for ls in layers])),
        )
        paddings = [c.padding for c in caches]
        padding = torch.cat([p for p in paddings if p is not None]) if paddings[0] is not None else None
        return CacheRows(joined, sum(c.rows for c in caches), caches[0].prefix_length, padding)

    def gather(self, parts: Sequence[tuple[Rows, Sequence[int]]]) -> Rows:
        chosen: list[tuple[CacheRows, torch.Tensor]] = []
        for rows, indices in parts:
            assert isinstance(rows, CacheRows)
            chosen.append((rows, torch.tensor(list(indices), dtype=torch.long, device=self.device)))
        first = chosen[0][0]

        def selected(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            keys = [rows.cache.layers[i].keys.index_select(0, index) for rows, index in chosen]
            values = [rows.cache.layers[i].values.index_select(0, index) for rows, index in chosen]
            return torch.cat(keys), torch.cat(values)

        padding = None
        if any(rows.padding is not None for rows, _ in chosen):
            padding = torch.cat([self._padding_of(rows).index_select(0, index) for rows, index in chosen])
        count = sum(len(index) for _, index in chosen)
        return CacheRows(_rebuild_cache(first.cache, selected), count, first.prefix_length, padding)

    def _padding_of(self, rows: CacheRows) -> torch.Tensor:
        """The rows' attention mask, all ones when they were never padded."""
        if rows.padding is not None:
            return rows.padding
        return torch.ones(rows.rows, rows.prefix_length, dtype=torch.long, device=self.device)

    def next_logprobs(self, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        """Full forward of each prefix (no cache), grouped by length so no padding is involved."""
        result: list[torch.Tensor | None] = [None] * len(prefixes)
        by_length: dict[int, list[int]] = {}
        for k, prefix in enumerate(prefixes):
            self.check_length(len(prefix))
            by_length.setdefault(len(prefix), []).append(k)
        for members in by_length.values():
            ids = torch.tensor([list(prefixes[k]) for k in members], dtype=torch.long)
            _, logprobs = self._forward_next(ids, use_cache=False)
            for row, k in enumerate(members):
                result[k] = logprobs[row]
        return torch.stack([r for r in result if r is not None])

    def score_padded(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Score right-padded sequences in one forward pass, the way evaluation harnesses do.

        Returns (log p(token t+1 | tokens <= t) per row and position, shape [rows, max_len - 1]; the full
        next-token log-probabilities after each row's last real token, shape [rows, vocab]).
        """
        longest = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(sequences), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(list(seq))
            mask[row, : len(seq)] = 1
        logits = self._forward(ids, attention_mask=mask.to(self.device), use_cache=False).logits
        steps = torch.zeros(len(sequences), longest - 1, dtype=torch.float64)
        last = []
        for row, seq in enumerate(sequences):  # one row at a time: float64 copies of every row would be GBs
            logprobs = self._logprobs(logits[row, : len(seq)])
            steps[row, : len(seq) - 1] = logprobs[:-1].gather(-1, ids[row, 1 : len(seq)].unsqueeze(-1)).squeeze(-1)
            last.append(logprobs[-1])
        return steps, torch.stack(last)


# --- loading -----------------------------------------------------------------------------------------------


def _check_gguf(path: Path) -> Header | None:
    """Fail early, with a clear message, on a file that is not a readable GGUF. Returns its header when
    modescope's own reader takes the file; None when only gguf's reader does (a big-endian file, say)."""
    from modescope.models.gguf_convert import UnsupportedGGUF, read_header

    try:
        try:
            return read_header(path)
        except UnsupportedGGUF:
            from gguf import GGUFReader

            GGUFReader(str(path))
            return None
    except Exception as exc:  # the readers raise many types on corrupt input
        raise ModescopeError(f"'{path}' is not a readable GGUF file ({exc}); check the file or re-download it") from exc


def gguf_cache_dir(path: Path, key: str | None = None) -> Path:
    """The converted-model folder for a GGUF file, keyed by its path, size and modification time."""
    if key is None:
        stat = path.stat()
        digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
        key = f"{path.stem}-{digest[:12]}"
    return cache_root() / "converted" / key


def convert_gguf(path: Path, target: Path, fast: bool = True) -> None:
    """De-quantize a GGUF file into a float32 safetensors folder with its tokenizer: the folder transformers
    saves after loading the file itself, written in one pass by `gguf_convert` (4-6x faster: see
    benchmarks/bench_convert.py) for the architectures it covers. `fast=False` forces transformers' own
    loading, the reference it is checked against."""
    header = _check_gguf(path)
    logger.info("converting %s (once; later loads use %s)", path, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        if not (fast and header is not None and _convert_fast(path, staging, header)):
            _convert_with_transformers(path, staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert_fast(path: Path, staging: Path, header: Header) -> bool:
    """The one-pass conversion; False, with nothing written, for a file it does not take."""
    from modescope.models.gguf_convert import UnsupportedGGUF, convert

    try:
        convert(path, staging, header)
    except UnsupportedGGUF as exc:
        logger.info("converting %s through transformers' GGUF loading (%s)", path, exc)
        return False
    except (ValueError, OSError, KeyError, RuntimeError, NotImplementedError) as exc:
        raise ModescopeError(f"could not convert the GGUF file '{path}': {exc}") from exc
    return True


def _convert_with_transformers(path: Path, staging: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # GGUF architectures are built into transformers: never any remote code, whatever sits beside the file
    gguf = {"gguf_file": path.name, "trust_remote_code": False}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **gguf)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **gguf)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise ModescopeError(f"transformers could not load the GGUF file '{path}': {exc}") from exc
    # The weights are already de-quantized; dropping the GGUF quantizer marks lets them be saved as is.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


VOCAB_FILE = "modescope-vocab.npz"


def _load_converted_tokenizer(folder: Path) -> Any:
    """Load a tokenizer this module saved, straight from tokenizer.json.

    AutoTokenizer also parses the 33 MB tokenizer.json of a 262k vocabulary in Python, which doubles the
    load time; the converted folders hold exactly the files this reads.
    """
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("tokenizer_class", None)
    template = folder / "chat_template.jinja"
    if template.is_file():
        config["chat_template"] = template.read_text()
    return TokenizersBackend(tokenizer_file=str(folder / "tokenizer.json"), **config)


def load_folder(
    folder: str, name: str, device: str = "auto", dtype: str = "auto", policy: LoadPolicy | None = None
) -> HFBackend:
    """Load a transformers folder or Hugging Face id. Without the opt-ins of `policy`, a folder that needs
    remote code or has only pickle weights is refused before transformers reads it, and weights are read from
    safetensors only."""
    from transformers import AutoModelForCausalLM

    policy = policy or LoadPolicy()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    check_model_folder(folder, name, policy)
    tokenizer, vocab = load_tokenizer(folder, name, policy.trust_remote_code)
    # use_safetensors=None lets transformers fall back to pytorch_model.bin, which it reads weights-only
    safetensors = None if policy.allow_pickle else True
    with _quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch_dtype, trust_remote_code=policy.trust_remote_code, use_safetensors=safetensors
            )
        except pickle.UnpicklingError as exc:
            raise refused_by_torch(f"model '{name}'") from exc
        except (OSError, ValueError) as exc:
            raise remote_code_refused(name, exc) or _not_loadable(name, exc, policy) from exc
    model.to(torch_device)  # type: ignore[arg-type]
    model.eval()
    return HFBackend(name, model, tokenizer, source=folder, vocab=vocab)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _not_loadable(name: str, exc: Exception, policy: LoadPolicy | None = None) -> ModescopeError:
    first = str(exc).splitlines()[0]
    # weights looked for as safetensors only: a folder or hub repository not seen beforehand may hold pickles
    if policy is not None and not policy.allow_pickle and "safetensors" in first:
        return RefusedModel(f"could not load model '{name}': no safetensors weights ({first}); {PICKLE_HINT}")
    return ModescopeError(
        f"could not load model '{name}': not a preset, a local folder, a .gguf file, or a Hugging Face "
        f"model in the local cache ({first}); run `modescope models` to see presets"
    )


def load_tokenizer(folder: str, name: str, trust_remote_code: bool = False) -> tuple[Any, Vocabulary | None]:
    """The tokenizer of a transformers folder or cached Hugging Face id, and its byte table when the folder
    is a converted copy (None otherwise: the backend builds it from the tokenizer). A tokenizer that needs its
    own Python code is refused unless `trust_remote_code`."""
    from transformers import AutoTokenizer

    local = local_files(folder)
    if local is not None:
        check_remote_code(local, name, LoadPolicy(trust_remote_code=trust_remote_code))
    converted = Path(folder).is_relative_to(cache_root()) and (Path(folder) / "tokenizer.json").is_file()
    with _quiet_transformers():
        try:
            if converted:
                tokenizer = _load_converted_tokenizer(Path(folder))
            else:
                tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise remote_code_refused(name, exc) or _not_loadable(name, exc) from exc
    if not converted:
        return tokenizer, None
    vocab_file = Path(folder) / VOCAB_FILE
    if not vocab_file.is_file():
        save_vocabulary(vocabulary_from_tokenizer(tokenizer), vocab_file)
    return tokenizer, load_vocabulary(vocab_file)


def load_gguf(
    path: Path, name: str, device: str = "auto", dtype: str = "auto", cache_key: str | None = None
) -> HFBackend:
    """Load a GGUF file through the converted-model cache."""
    if not path.is_file():
        raise ModescopeError(f"model file '{path}' does not exist; give an existing .gguf file")
    target = gguf_cache_dir(path, cache_key)
    if not (target / "config.json").is_file():
        convert_gguf(path, target)
    backend = load_folder(str(target), name, device, dtype)
    backend.source = str(path)
    return backend
