"""Entropy and divergences of discrete distributions over one outcome set.

Inputs are log-probabilities (nats, float64) so that outcomes with vanishing mass stay finite; outputs are
in bits where a unit applies.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from scipy.special import logsumexp

LOG2 = math.log(2.0)


def normalize_log(logmass: np.ndarray) -> np.ndarray:
    """Log-probabilities renormalized to sum to one over the set."""
    logmass = np.asarray(logmass, dtype=np.float64)
    return logmass - logsumexp(logmass)


def entropy_bits(logp: np.ndarray) -> float:
    """Shannon entropy H(p) = -sum p log2 p of a normalized distribution, in bits."""
    p = np.exp(logp)
    return float(-np.where(p > 0, p * logp, 0.0).sum() / LOG2) + 0.0  # 0 log 0 = 0; + 0.0 turns -0.0 into 0.0


def effective_outcomes(logp: np.ndarray) -> float:
    """Effective number of outcomes 2^H (perplexity): n for a uniform set, 1 for a certain outcome."""
    return float(2.0 ** entropy_bits(logp))


def chi_square_uniform(logp: np.ndarray) -> float:
    """Pearson chi-square divergence from the uniform distribution u: sum (p_i - u_i)^2 / u_i.

    It is the Pearson statistic of an ideal sample divided by the sample size: 0 for uniform, n - 1 when all
    mass is on one of n outcomes.
    """
    n = len(logp)
    return float(n * ((np.exp(logp) - 1.0 / n) ** 2).sum())


def kl_bits(logp: np.ndarray, logq: np.ndarray) -> float:
    """Kullback-Leibler divergence KL(p || q) = sum p log2(p / q), in bits."""
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):  # terms with p = 0 are 0 by convention, whatever q is
        terms = np.where(p > 0, p * (logp - logq), 0.0)
    return float(terms.sum() / LOG2)


def js_bits(logp: np.ndarray, logq: np.ndarray) -> float:
    """Jensen-Shannon divergence, in bits (between 0 and 1): the mean KL of p and q to their average m."""
    logm = np.logaddexp(logp, logq) - LOG2
    return 0.5 * (kl_bits(logp, logm) + kl_bits(logq, logm))


def total_variation(logp: np.ndarray, logq: np.ndarray) -> float:
    """Total variation distance: half the L1 distance, the largest difference in probability of any event."""
    return float(0.5 * np.abs(np.exp(logp) - np.exp(logq)).sum())


def spearman(logp: np.ndarray, logq: np.ndarray) -> float:
    """Spearman rank correlation of two preference orders over the same outcomes (ties share ranks).

    NaN when either distribution is constant (no order to compare) or there are fewer than two outcomes.
    """
    if len(logp) < 2 or np.ptp(logp) == 0 or np.ptp(logq) == 0:
        return float("nan")
    return float(stats.spearmanr(logp, logq).statistic)
