"""Tiny GGUF files of the two default architectures, for checking conversions against transformers.

Each holds random weights in a mix of storage types (F32, F16, Q8_0, Q4_0, Q4_1, Q5_0, and Q4_K / Q6_K,
which gguf cannot quantize and so are written as random blocks with finite scales) and a real tokenizer:
a byte-level BPE with merges and a chat template for llama (as SmolLM2 has), a SentencePiece-style
vocabulary with byte fallback and no merges for Gemma 3 (as Gemma has). Names and shapes come from the
transformers model itself, through gguf's own name table, as llama.cpp's converter finds them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig
from transformers.convert_slow_tokenizer import bytes_to_unicode

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 64, 256, 2, 4, 2
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# cycled over the 2-D tensors: K types where rows hold 256 values, the others elsewhere
ROW_TYPES = [Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q4_1, Q.F16]
K_TYPES = [Q.Q4_K, Q.Q6_K]
K_SCALE_BYTES = {Q.Q4_K: slice(0, 4), Q.Q6_K: slice(208, 210)}  # where each block keeps its f16 scales


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(byte_level_vocabulary()[0]),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,  # grouped: the q and k un-permutes differ
        tie_word_embeddings=False,
    )


def gemma_config() -> Gemma3TextConfig:
    return Gemma3TextConfig(
        vocab_size=len(sentencepiece_vocabulary()[0]),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=1,
        head_dim=16,
    )


def byte_level_vocabulary() -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types (3 = control) and merges of a small byte-level BPE."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = list(bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("1", "0"), ("Ġ", "c")]
    tokens = specials + alphabet + [a + b for a, b in merges]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    return tokens, types, [f"{a} {b}" for a, b in merges]


def sentencepiece_vocabulary() -> tuple[list[str], list[int], list[float]]:
    """Tokens, token types (3 = control, 6 = byte) and scores of a small byte-fallback vocabulary."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    pieces = ["▁", *"abcdehilnorst", "▁t", "he", "▁the", "in", "▁a", "  ", "▁c", "at", "▁cat"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [3] * len(specials) + [6] * 256 + [1] * len(pieces)
    types[3] = 2  # <unk> is UNKNOWN
    return tokens, types, [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(pieces))]


def _stored(
    name: str, values: np.ndarray, types: dict[str, Iterator[Q]], rng: np.random.Generator
) -> tuple[np.ndarray, Q]:
    """The data to write for one tensor: 1-D ones stay F32, the embedding is Q8_0 (as in both default models),
    rows of 256 values take the next K type and other 2-D tensors the next of ROW_TYPES."""
    if values.ndim == 1:
        return values, Q.F32
    qtype = Q.Q8_0 if name == "token_embd.weight" else next(types["rows"]) if values.shape[-1] % 256 else None
    if qtype is not None:
        return gguf.quants.quantize(values, qtype), qtype
    qtype = next(types["k"])
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(values.size // block_size, type_size), dtype=np.uint8)
    scales = K_SCALE_BYTES[qtype]
    halves = (scales.stop - scales.start) // 2
    blocks[:, scales] = rng.uniform(0.001, 0.01, (len(blocks), halves)).astype(np.float16).view(np.uint8)
    return blocks.reshape(values.shape[0], -1), qtype


def _tensors(config: Any, architecture: gguf.MODEL_ARCH, seed: int) -> dict[str, np.ndarray]:
    """GGUF name -> random float32 values, for every parameter of the transformers model of `config`."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    table = gguf.get_tensor_name_map(architecture, config.num_hidden_layers)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, parameter in model.state_dict().items():
        stem, suffix = name.rsplit(".", 1)
        gguf_name = table.get_name(stem)
        if gguf_name is None or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        values = rng.normal(0.0, 0.5, size=tuple(parameter.shape)).astype(np.float32)
        tensors[f"{gguf_name}.{suffix}"] = values
    return tensors


def _write(path: Path, writer: gguf.GGUFWriter, tensors: dict[str, np.ndarray], seed: int) -> Path:
    rng = np.random.default_rng(seed + 1)
    types = {"rows": itertools.cycle(ROW_TYPES), "k": itertools.cycle(K_TYPES)}
    for name, values in tensors.items():
        data, qtype = _stored(name, values, types, rng)
        writer.add_tensor(name, data, raw_dtype=qtype)  # the writer reads a block type's shape from bytes per row
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_llama(path: Path, seed: int = 0) -> Path:
    """A 2-layer llama GGUF with a byte-level BPE tokenizer and a chat template, like SmolLM2's."""
    tokens, types, merges = byte_level_vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_block_count(LAYERS)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    return _write(path, writer, _tensors(llama_config(), gguf.MODEL_ARCH.LLAMA, seed), seed)


def write_gemma(path: Path, seed: int = 0) -> Path:
    """A 2-layer Gemma 3 GGUF with a byte-fallback vocabulary and no merges, like Gemma 3 270M's."""
    config = gemma_config()
    tokens, types, scores = sentencepiece_vocabulary()
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny gemma")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_block_count(LAYERS)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(1)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(8)
    writer.add_rope_freq_base(1e6)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    return _write(path, writer, _tensors(config, gguf.MODEL_ARCH.GEMMA3, seed), seed)
