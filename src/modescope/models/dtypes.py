"""The one rule for `dtype="auto"`, torch-free so that estimates and cache keys can use it without loading."""

from __future__ import annotations


def auto_dtype(on_accelerator: bool) -> str:
    """What `dtype="auto"` means: bfloat16 on a GPU, where it is the fast path, and float32 on the CPU, where
    reduced precision moves probabilities too much to be the default (see README, "Reduced precision")."""
    return "bfloat16" if on_accelerator else "float32"
