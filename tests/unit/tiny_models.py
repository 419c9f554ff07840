"""Tiny in-process transformers models with a small byte-level BPE tokenizer, for exactness tests."""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from modescope.models.hf import HFBackend

# Multi-character tokens on top of the 256 byte tokens, so that most candidates have several spellings.
# "Ġ" is the byte-level stand-in for a space.
MERGES = [("1", "0"), ("1", "2"), ("Ġ", "1"), ("Ġ1", "0"), ("Ġ", "2"), ("0", "0"), ("1", ","), ("2", "."), ("Q", ":")]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<eos>": 0}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")


def tiny_sizes(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    """The config arguments every tiny model shares: 2 layers of width 32, 4 heads over 2 KV heads."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=None,
    )


def tiny_backend(architecture: str = "llama", seed: int = 0) -> HFBackend:
    """A random 2-layer model in float64 (so cached and uncached passes agree to ~1e-12)."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    common = tiny_sizes(tokenizer)
    if architecture == "gemma3":
        # A sliding window shorter than prompt + answer exercises the sliding cache layers.
        config = Gemma3TextConfig(
            **common, head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"]
        )
        model = Gemma3ForCausalLM(config)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    with torch.no_grad():  # sharpen the random logits so that probabilities vary over orders of magnitude
        model.lm_head.weight.mul_(8.0)
    model = model.double().eval()
    return HFBackend(f"tiny-{architecture}", model, tokenizer, source="in-process")
