"""Pure functions over distributions and texts."""

from modescope.metrics.divergence import (
    chi_square_uniform,
    effective_outcomes,
    entropy_bits,
    js_bits,
    kl_bits,
    normalize_log,
    spearman,
    total_variation,
)

__all__ = [
    "chi_square_uniform",
    "effective_outcomes",
    "entropy_bits",
    "js_bits",
    "kl_bits",
    "normalize_log",
    "spearman",
    "total_variation",
]
