"""The LM head fused with the log-softmax, computed in vocabulary chunks.

Next-token log-probabilities are `log_softmax(hidden @ W.T)` over the whole vocabulary, and on a CPU the LM
head is the costliest matrix of a small model with a large vocabulary (Gemma 3's is 262144 x 640, more than half
its parameters). Computed as transformers does, as one [rows, vocab] product followed by a log-softmax, the
0.13-0.5 GB result is read again from memory in several passes. Here the product is written one chunk of the
vocabulary at a time straight into its columns of the output (BLAS writes a strided block as fast as a whole
one), and each chunk's maximum and exponential sum are taken while it is still in cache. The chunks'
normalizers combine in float64, and one last pass subtracts the log-normalizer. The logits are the same dot
products, the normalizer is summed in cascades within a chunk and in float64 across chunks, as accurate as
`hf.log_softmax_f32`. See benchmarks/bench_dist.py and bench_sample.py for the before and after.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK = 8192  # vocabulary columns per product: the sums read them while they are still in cache
# models whose causal-LM logits are exactly `final hidden state @ lm_head.weight.T` (no bias, no scale, no
# softcapping unless the config sets one, which `plain_head` refuses); others keep transformers' own head
PLAIN_HEADS = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text"}


def plain_head(model: Any) -> torch.Tensor | None:
    """The LM head weight [vocab, hidden] of a float32 causal LM whose logits are a plain product of the
    decoder's last hidden state (`model.model`) with it, or None when the model does anything more."""
    config = model.config.get_text_config()
    head = model.get_output_embeddings()
    if getattr(config, "model_type", None) not in PLAIN_HEADS or not isinstance(head, torch.nn.Linear):
        return None
    if head.bias is not None or getattr(config, "final_logit_softcapping", None) is not None:
        return None
    if head.weight.dtype != torch.float32 or not isinstance(getattr(model, "model", None), torch.nn.Module):
        return None
    return head.weight.detach()


def head_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, vocab: int, token_sets: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float32 log-softmax of `hidden @ weight[:vocab].T` for `hidden` [rows, dim]: [rows, vocab]; and, for
    `token_sets` [sets, vocab] (0/1 float32 weights), each set's probability [rows, sets] in float64, summed
    from the exponentials the normalizer is summed from (no pass over the output again): within a chunk as a
    product of the exponentials with the weights (float32 accumulation over 8192 terms, ~5e-8 relative), across
    chunks in float64."""
    hidden = hidden.to(weight.dtype)
    out = torch.empty(hidden.shape[0], vocab, dtype=torch.float32, device=hidden.device)
    work = torch.empty(hidden.shape[0], min(CHUNK, vocab), dtype=torch.float32, device=hidden.device)
    tops, sums, set_parts = [], [], []
    for start in range(0, vocab, CHUNK):
        chunk = out[:, start : start + CHUNK]
        torch.mm(hidden, weight[start : start + CHUNK].T, out=chunk)
        top = torch.amax(chunk, dim=1, keepdim=True)  # amax: max without its indices, 4x faster
        tops.append(top)
        exps = torch.sub(chunk, top, out=work[:, : chunk.shape[1]]).exp_()  # one buffer for every chunk
        sums.append(exps.sum(dim=1, keepdim=True))
        if token_sets is not None:  # [rows, sets]: one product, no [rows, chunk] temporary (7% of the head)
            set_parts.append(exps @ token_sets[:, start : start + CHUNK].T)
    top64 = torch.cat(tops, dim=1).double()
    peak = top64.max(dim=1, keepdim=True).values
    scale = (top64 - peak).exp()  # [rows, chunks]: each chunk's exponentials relative to the row's peak
    total = (torch.cat(sums, dim=1).double() * scale).sum(dim=1, keepdim=True)
    set_sums = None
    if token_sets is not None:  # [rows, sets, chunks] weighed like the normalizer's parts
        set_sums = (torch.stack(set_parts, dim=2).double() * scale.unsqueeze(1)).sum(dim=2) / total
    return out.sub_((peak + total.log()).float()), set_sums
