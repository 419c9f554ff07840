"""The hardware floor of a measured run: the FLOPs a transformer forward must do, at this machine's matmul peak.

Every figure is measured in the same process as the run it judges, so a busy machine slows the peak and the
run alike and the ratio time / floor stays meaningful:

- the peak is the best of several large float32 (or bfloat16) matrix products with torch, on the threads torch
  uses here;
- a forward pass costs 2 x (parameters that multiply: everything but the input embedding table) per token
  position, plus 2 x the LM head's parameters for every position whose logits are computed (one per tree node
  or decoded row, and the last position of each prompt), plus the attention products, 4 x layers x query width x
  context per position;
- the floor is those FLOPs at the peak: what a perfect engine that only multiplied matrices would take.

It also splits a cProfile of a run into where the time goes (model forward, log-softmax, the probe's own work,
KV-cache copies), for the profile every benchmark prints.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modescope.models.hf import HFBackend

PEAK_SIZE = 2048  # square matrices: large enough for BLAS to reach its peak, small enough to take < 1 s


def matmul_peak_gflops(dtype: str = "float32", repeats: int = 5) -> float:
    """The best GFLOPS of PEAK_SIZE^3 matrix products in `dtype` on torch's threads (one warm-up first)."""
    import torch

    kind = getattr(torch, dtype)
    a = torch.randn(PEAK_SIZE, PEAK_SIZE).to(kind)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE).to(kind)
    torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * PEAK_SIZE**3 / best / 1e9


def _seconds(step: Callable[[], Any]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


@dataclass(frozen=True)
class ModelShape:
    """What a forward pass multiplies: parameters outside the embedding table, the LM head, attention width."""

    body_parameters: int  # multiplied at every token position
    head_parameters: int  # the LM head: multiplied only where logits are computed
    layers: int
    query_width: int  # attention heads x head dimension

    @classmethod
    def of(cls, backend: HFBackend) -> ModelShape:
        model = backend.model
        embedding = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        total = sum(p.numel() for p in model.parameters())  # a tied head is counted once
        tied = head.data_ptr() == embedding.data_ptr()
        body = total - embedding.numel() - (0 if tied else head.numel())
        config = model.config.get_text_config()
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return cls(body, int(head.numel()), int(config.num_hidden_layers), heads * head_dim)

    def flops(self, positions: int, logit_rows: int, context: float) -> float:
        """FLOPs of forwarding `positions` token positions with a mean attention context of `context`
        positions, computing logits for `logit_rows` of them."""
        dense = 2 * self.body_parameters * positions + 2 * self.head_parameters * logit_rows
        attention = 4 * self.layers * self.query_width * context * positions
        return dense + attention


@dataclass(frozen=True)
class Floor:
    """A run against its floor."""

    flops: float
    peak_gflops: float
    seconds: float  # the run's best time

    @property
    def floor_s(self) -> float:
        return self.flops / (self.peak_gflops * 1e9)

    @property
    def ratio(self) -> float:
        return self.seconds / self.floor_s

    def to_dict(self) -> dict[str, float]:
        return {
            "flops": self.flops,
            "peak_gflops": self.peak_gflops,
            "floor_s": self.floor_s,
            "seconds": self.seconds,
            "time_over_floor": self.ratio,
        }


# --- where the time goes ---------------------------------------------------------------------------------------

# (label, [(file suffix, function name)]): a function's cumulative time goes to the first label that names it
PROFILE_GROUPS: list[tuple[str, list[tuple[str, str]]]] = [
    # with the fused head (models/lm_head.py) the LM head's product is in this group, not in the forward; with
    # transformers' head (bfloat16 weights, a softcapped head) only the log-softmax is
    ("LM head and log-softmax", [("models/hf.py", "_logprobs"), ("models/lm_head.py", "head_logprobs")]),
    ("model forward", [("models/hf.py", "_forward"), ("models/hf.py", "_decoder_forward")]),
    ("KV-cache copies", [("models/hf.py", "_rebuild_cache"), ("models/hf.py", "concat"), ("models/hf.py", "gather")]),
    ("sampler and records", [("engine/decode.py", "_choose")]),
    ("answer-set sums and visits", [("probes/distribution.py", "visit")]),
]


def profile_split(run: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    """Run once under cProfile: (wall seconds, seconds per PROFILE_GROUPS label, and "other" for the rest)."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    run()
    profiler.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    split: dict[str, float] = {}
    for label, functions in PROFILE_GROUPS:
        split[label] = sum(
            cumulative
            for (path, _, name), (_, _, _, cumulative, _) in stats.items()
            if any(path.endswith(suffix) and name == function for suffix, function in functions)
        )
    split["other (Python, tokenizer, bookkeeping)"] = max(0.0, wall - sum(split.values()))
    return wall, split


def profile_lines(wall: float, split: dict[str, float]) -> list[str]:
    """The split as `label: seconds (share)` lines, largest first."""
    ranked = sorted(split.items(), key=lambda item: -item[1])
    return [f"{label}: {seconds:.2f} s ({seconds / wall:.0%})" for label, seconds in ranked if seconds > 0]
