"""Log-probabilities of sampled completions under a model, in one padded forward pass (with gradients when
the caller wants them): what the policy-gradient loss, the KL penalty and the fluency probe are made of."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def completion_logprobs(
    model: Any, pad_id: int, vocab_size: int, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token) of every completion token given its prompt and the tokens before it, natural log.

    Returns (log-probabilities [rows, longest completion], mask [rows, longest completion] of real tokens, in the
    log-probabilities' dtype). Rows are right-padded, so no position id shifts.
    """
    rows = len(prompts)
    longest = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    widest = max((len(c) for c in completions), default=0)
    device = next(model.parameters()).device
    ids = torch.full((rows, longest), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for r, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[r, : len(p) + len(c)] = torch.tensor([*p, *c])
        attention[r, : len(p) + len(c)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[..., :vocab_size]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # log-softmax over 49k tokens loses too much in half precision
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
    taken = logprobs.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)  # [rows, longest - 1]
    out = torch.zeros(rows, widest, dtype=taken.dtype, device=device)
    mask = torch.zeros(rows, widest, dtype=taken.dtype, device=device)
    pieces = []
    for r, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        # completion token j sits at position len(p) + j and is predicted at position len(p) + j - 1
        piece = taken[r, len(p) - 1 : len(p) - 1 + len(c)]
        pieces.append(torch.nn.functional.pad(piece, (0, widest - len(c))))
        mask[r, : len(c)] = 1.0
    out = torch.stack(pieces) if pieces else out
    return out, mask
