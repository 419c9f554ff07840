"""Byte-level view of a tokenizer's vocabulary.

Exact answer-set probabilities need to know which token sequences spell a given text. Decoding tokens one
at a time loses information (partial UTF-8 characters, SentencePiece's leading-space marker), so every token
is mapped to the exact bytes it contributes to the decoded text.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_WORD_CHAR = re.compile(r"\w")


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-printable-unicode table used by ByteLevel tokenizers."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


def starts_with_boundary(data: bytes) -> bool | None:
    """Whether text starting with these bytes starts with a non-word character.

    Returns None when the first character is an incomplete UTF-8 sequence and so cannot be classified.
    """
    for width in range(1, 5):
        try:
            first = data[:width].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return _WORD_CHAR.match(first) is None
    return None


@dataclass
class Vocabulary:
    """Bytes of every token id, and which ids are special (EOS, control tokens)."""

    token_bytes: list[bytes]
    special_ids: frozenset[int]
    eos_ids: frozenset[int]
    _by_bytes: dict[bytes, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for token_id, data in enumerate(self.token_bytes):
            if token_id not in self.special_ids and data:
                self._by_bytes.setdefault(data, []).append(token_id)

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    def ids_with_bytes(self, data: bytes) -> list[int]:
        """Every non-special token id whose bytes are exactly `data` (several ids may share bytes)."""
        return self._by_bytes.get(data, [])

    @cached_property
    def _sorted(self) -> tuple[list[bytes], list[int]]:
        pairs = sorted((b, i) for b, ids in self._by_bytes.items() for i in ids)
        return [b for b, _ in pairs], [i for _, i in pairs]

    def ids_starting_with(self, prefix: bytes) -> list[tuple[int, bytes]]:
        """Non-special tokens whose bytes start with `prefix`, as (id, bytes) pairs."""
        keys, ids = self._sorted
        start = bisect.bisect_left(keys, prefix)
        found = []
        for pos in range(start, len(keys)):
            if not keys[pos].startswith(prefix):
                break
            found.append((ids[pos], keys[pos]))
        return found

    @cached_property
    def boundary_ids(self) -> list[int]:
        """Tokens that end a word when they come next: special tokens, and tokens whose text begins with a
        non-word character (space, punctuation, newline)."""
        return [
            i
            for i, data in enumerate(self.token_bytes)
            if i in self.special_ids or not data or starts_with_boundary(data) is True
        ]

    @cached_property
    def undecided_ids(self) -> list[int]:
        """Tokens whose first character is an incomplete UTF-8 sequence: whether they start a word depends on
        the bytes that follow, so after a candidate they neither surely end it nor surely extend it."""
        return [
            i
            for i, data in enumerate(self.token_bytes)
            if i not in self.special_ids and data and starts_with_boundary(data) is None
        ]


def save_vocabulary(vocab: Vocabulary, path: Path) -> None:
    """Write the byte table as one .npz file (building it from a 262k-token tokenizer takes seconds)."""
    blob = np.frombuffer(b"".join(vocab.token_bytes), dtype=np.uint8)
    ends = np.cumsum([len(b) for b in vocab.token_bytes], dtype=np.int64)
    staging = path.with_suffix(".tmp.npz")
    np.savez(
        staging,
        blob=blob,
        ends=ends,
        special=np.array(sorted(vocab.special_ids), dtype=np.int64),
        eos=np.array(sorted(vocab.eos_ids), dtype=np.int64),
    )
    os.replace(staging, path)


def load_vocabulary(path: Path) -> Vocabulary:
    with np.load(path) as data:
        blob = data["blob"].tobytes()
        ends = data["ends"].tolist()
        special, eos = data["special"].tolist(), data["eos"].tolist()
    starts = [0, *ends[:-1]]
    return Vocabulary(
        token_bytes=[blob[a:b] for a, b in zip(starts, ends, strict=True)],
        special_ids=frozenset(special),
        eos_ids=frozenset(eos),
    )


def vocabulary_from_tokenizer(tokenizer: Any) -> Vocabulary:
    """Build the byte table of a Hugging Face fast tokenizer.

    Supports the two families that cover nearly all causal LMs: byte-level BPE (GPT-2, Llama 3, SmolLM) and
    SentencePiece-style vocabularies with a '▁' space marker and <0xNN> byte fallback (Llama 2, Gemma).
    """
    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    decoder = json.dumps(spec.get("decoder") or {})
    byte_level = '"ByteLevel"' in decoder
    unicode_to_byte = _gpt2_unicode_to_byte() if byte_level else {}
    special = set(tokenizer.all_special_ids)
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if added.special:
            special.add(int(token_id))
    size = max(len(tokenizer), backend.get_vocab_size(with_added_tokens=True))
    table: list[bytes] = [b""] * size
    for piece, token_id in backend.get_vocab(with_added_tokens=True).items():
        if token_id in special:
            continue
        if byte_level and all(ch in unicode_to_byte for ch in piece):
            table[token_id] = bytes(unicode_to_byte[ch] for ch in piece)
        elif match := _BYTE_FALLBACK.match(piece):
            table[token_id] = bytes([int(match.group(1), 16)])
        else:
            table[token_id] = piece.replace("▁", " ").encode("utf-8")
    eos = {i for i in [tokenizer.eos_token_id] if i is not None}
    generation_eos = getattr(getattr(tokenizer, "generation_config", None), "eos_token_id", None)
    if isinstance(generation_eos, int):
        eos.add(generation_eos)
    return Vocabulary(token_bytes=table, special_ids=frozenset(special), eos_ids=frozenset(eos))
