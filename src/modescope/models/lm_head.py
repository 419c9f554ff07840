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

from collections.abc import Callable
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
    hidden: torch.Tensor,
    weight: torch.Tensor,
    vocab: int,
    token_sets: torch.Tensor | None = None,
    columns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float32 log-softmax of `hidden @ weight[:vocab].T` for `hidden` [rows, dim]: [rows, vocab], or with
    `columns` (vocabulary ids) only those columns [rows, len(columns)]; and, for `token_sets` [sets, vocab] (0/1
    float32 weights), each set's probability [rows, sets] in float64 (`exact_set_sums`), summed from the
    exponentials the normalizer is summed from (no pass over the output again): within a chunk as a product
    of the exponentials with the weights (float32 accumulation over 8192 terms, ~5e-8 relative), across chunks
    in float64.

    With `columns` the [rows, vocab] output is never made: each chunk's product goes to one reused buffer, and
    the columns are picked from it while it is in cache. A fresh [204, 262144] output costs ~60 ms of page
    faults alone here (a product into it took 310 ms, into a reused buffer 250 ms), and its last pass
    (subtracting the log-normalizer) another ~20 ms."""
    hidden = hidden.to(weight.dtype)
    rows = hidden.shape[0]
    out = torch.empty(rows, vocab, dtype=torch.float32, device=hidden.device) if columns is None else None
    work = torch.empty(rows, min(CHUNK, vocab), dtype=torch.float32, device=hidden.device)
    picks = _chunk_columns(columns, vocab) if columns is not None else {}
    picked = torch.empty(rows, len(columns) if columns is not None else 0, device=hidden.device)
    tops, sums, set_parts = [], [], []
    for start in range(0, vocab, CHUNK):
        size = min(CHUNK, vocab - start)
        chunk = out[:, start : start + size] if out is not None else work[:, :size]
        torch.mm(hidden, weight[start : start + size].T, out=chunk)
        top = torch.amax(chunk, dim=1, keepdim=True)  # amax: max without its indices, 4x faster
        tops.append(top)
        if start in picks:  # the logits asked for, before the buffer turns into exponentials
            places, local = picks[start]
            picked[:, places] = chunk[:, local]
        exps = torch.sub(chunk, top, out=work[:, :size]).exp_()  # one buffer for every chunk
        sums.append(exps.sum(dim=1, keepdim=True))
        if token_sets is not None:  # [rows, sets]: one product, no [rows, chunk] temporary (7% of the head)
            set_parts.append(exps @ token_sets[:, start : start + size].T)
    top64 = torch.cat(tops, dim=1).double()
    peak = top64.max(dim=1, keepdim=True).values
    scale = (top64 - peak).exp()  # [rows, chunks]: each chunk's exponentials relative to the row's peak
    total = (torch.cat(sums, dim=1).double() * scale).sum(dim=1, keepdim=True)
    normalizer = peak + total.log()  # [rows, 1] float64
    set_sums = None
    if token_sets is not None:  # [rows, sets, chunks] weighed like the normalizer's parts
        set_sums = (torch.stack(set_parts, dim=2).double() * scale.unsqueeze(1)).sum(dim=2) / total
        set_sums = exact_set_sums(set_sums, token_sets, normalizer, lambda row: hidden[row] @ weight[:vocab].T)
    result = out if out is not None else picked
    return result.sub_(normalizer.float()), set_sums


def _chunk_columns(columns: torch.Tensor, vocab: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """For each chunk holding some of `columns`: their places in the picked output, and their ids within the
    chunk."""
    chunk_of = torch.div(columns, CHUNK, rounding_mode="floor")
    found = {}
    for chunk in torch.unique(chunk_of).tolist():
        places = (chunk_of == chunk).nonzero().flatten()
        found[chunk * CHUNK] = (places, columns[places] - chunk * CHUNK)
    if columns.numel() and (int(columns.min()) < 0 or int(columns.max()) >= vocab):
        raise ValueError(f"columns must be vocabulary ids below {vocab}")
    return found


TINY = 1e-30  # a set sum below this may have lost terms to float32 underflow: it is summed again


def exact_set_sums(
    set_sums: torch.Tensor,
    token_sets: torch.Tensor,
    normalizer: torch.Tensor,
    logits_of: Callable[[int], torch.Tensor],
) -> torch.Tensor:
    """`set_sums` [rows, sets] (float64) with every entry under TINY summed again from its row's logits
    (`logits_of(row)`, [vocab]) as a float64 log-sum-exp less the row's log-normalizer (`normalizer` [rows, 1]):
    a float32 exponential is 0 below ~1e-38 (relative to its chunk's largest logit), so a set whose tokens all
    lie that far down would read 0. Such rows are rare (the event is then negligible), and each costs one
    [vocab] product."""
    tiny_rows = (set_sums < TINY).any(dim=1).nonzero().flatten().tolist()
    members = [weights.nonzero().flatten() for weights in token_sets] if tiny_rows else []
    for row in tiny_rows:
        logits = logits_of(row).double()[: token_sets.shape[1]]
        for index, tokens in enumerate(members):
            if set_sums[row, index] < TINY and len(tokens):
                set_sums[row, index] = (torch.logsumexp(logits[tokens], 0) - normalizer[row, 0]).exp()
    return set_sums
