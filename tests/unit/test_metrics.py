"""Entropy and divergences of src/modescope/metrics/divergence.py on hand-computed examples.

Every input is a natural-log probability vector; outputs are in bits where a unit applies.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from modescope.metrics import (
    chi_square_uniform,
    effective_outcomes,
    entropy_bits,
    js_bits,
    kl_bits,
    normalize_log,
    spearman,
    total_variation,
)

# A finite stand-in for log(0): exp(-1e4) underflows to exactly 0.0, and 0.0 * -1e4 is 0.0, not NaN.
NEG = -1e4


def logs(*probs: float) -> np.ndarray:
    """Natural logs of probabilities given as plain numbers (zeros become -inf)."""
    with np.errstate(divide="ignore"):
        return np.log(np.array(probs, dtype=np.float64))


def point_mass(n: int, at: int = 0) -> np.ndarray:
    """All mass on outcome `at` of n, with finite logs for the others."""
    logp = np.full(n, NEG)
    logp[at] = 0.0
    return logp


def uniform(n: int) -> np.ndarray:
    return np.full(n, -math.log(n))


# --- normalize_log ---------------------------------------------------------------------------------------


def test_normalize_log_turns_masses_into_probabilities() -> None:
    result = normalize_log(logs(1.0, 2.0, 1.0))
    np.testing.assert_allclose(np.exp(result), [0.25, 0.5, 0.25], rtol=1e-12)


def test_normalize_log_is_invariant_to_a_constant_shift() -> None:
    logmass = np.array([-3.0, -1.0, -2.5, -7.0])
    np.testing.assert_allclose(normalize_log(logmass + 123.0), normalize_log(logmass), atol=1e-12)
    np.testing.assert_allclose(normalize_log(logmass - 900.0), normalize_log(logmass), atol=1e-12)


def test_normalize_log_of_tiny_masses_stays_finite() -> None:
    # Masses around exp(-1000) underflow in linear space but normalize exactly in log space.
    result = normalize_log(np.array([-1000.0, -1000.0 - math.log(3.0)]))
    np.testing.assert_allclose(np.exp(result), [0.75, 0.25], rtol=1e-12)


def test_normalize_log_keeps_zero_mass_at_zero_and_accepts_lists() -> None:
    result = normalize_log([0.0, float("-inf"), 0.0])
    assert result.dtype == np.float64
    np.testing.assert_allclose(np.exp(result), [0.5, 0.0, 0.5], rtol=1e-12)


def test_normalize_log_leaves_a_normalized_distribution_unchanged() -> None:
    logp = logs(0.5, 0.25, 0.25)
    np.testing.assert_allclose(normalize_log(logp), logp, atol=1e-15)


# --- entropy and effective number of outcomes -------------------------------------------------------------


@pytest.mark.parametrize(("logp", "expected"), [(uniform(4), 2.0), (uniform(2), 1.0), (uniform(1), 0.0)])
def test_entropy_of_uniform_is_log2_n(logp: np.ndarray, expected: float) -> None:
    assert entropy_bits(logp) == pytest.approx(expected, abs=1e-12)


def test_entropy_of_a_point_mass_is_zero() -> None:
    assert entropy_bits(point_mass(5, at=2)) == pytest.approx(0.0, abs=1e-12)


def test_entropy_of_half_quarter_quarter_is_one_and_a_half_bits() -> None:
    # -(0.5 log2 0.5 + 2 * 0.25 log2 0.25) = 0.5 + 1 = 1.5
    assert entropy_bits(logs(0.5, 0.25, 0.25)) == pytest.approx(1.5, abs=1e-12)


def test_entropy_does_not_depend_on_order() -> None:
    assert entropy_bits(logs(0.25, 0.5, 0.25)) == pytest.approx(entropy_bits(logs(0.5, 0.25, 0.25)), abs=1e-12)


@pytest.mark.parametrize(
    ("logp", "expected"),
    [(uniform(4), 4.0), (uniform(7), 7.0), (point_mass(3), 1.0), (logs(0.5, 0.25, 0.25), 2.0**1.5)],
)
def test_effective_outcomes_is_two_to_the_entropy(logp: np.ndarray, expected: float) -> None:
    assert effective_outcomes(logp) == pytest.approx(expected, rel=1e-12)


# --- chi-square from uniform --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 10])
def test_chi_square_of_uniform_is_zero(n: int) -> None:
    assert chi_square_uniform(uniform(n)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [2, 3, 10])
def test_chi_square_of_a_point_mass_is_n_minus_one(n: int) -> None:
    assert chi_square_uniform(point_mass(n, at=n - 1)) == pytest.approx(n - 1, rel=1e-12)


def test_chi_square_hand_example() -> None:
    # n = 3, u = 1/3: 3 * ((1/6)^2 + (1/12)^2 + (1/12)^2) = 3 * (4 + 1 + 1) / 144 = 1/8
    assert chi_square_uniform(logs(0.5, 0.25, 0.25)) == pytest.approx(0.125, rel=1e-12)


# --- Kullback-Leibler -------------------------------------------------------------------------------------


def test_kl_hand_example_and_its_reverse_differ() -> None:
    p, q = logs(0.5, 0.5), logs(0.25, 0.75)
    # KL(p||q) = 0.5 log2(0.5/0.25) + 0.5 log2(0.5/0.75) = 1 - 0.5 log2 3
    assert kl_bits(p, q) == pytest.approx(1.0 - 0.5 * math.log2(3.0), rel=1e-12)
    # KL(q||p) = 0.25 log2(0.25/0.5) + 0.75 log2(0.75/0.5) = -0.25 + 0.75 log2 1.5
    assert kl_bits(q, p) == pytest.approx(-0.25 + 0.75 * math.log2(1.5), rel=1e-12)
    assert kl_bits(p, q) != pytest.approx(kl_bits(q, p), rel=1e-3)


def test_kl_of_a_distribution_to_itself_is_zero() -> None:
    p = logs(0.1, 0.2, 0.3, 0.4)
    assert kl_bits(p, p) == pytest.approx(0.0, abs=1e-15)


def test_kl_from_a_point_mass_to_uniform_is_log2_n() -> None:
    # KL(delta || u) = log2(1 / (1/n)) = log2 n; the zero-mass outcomes contribute nothing.
    assert kl_bits(point_mass(8, at=3), uniform(8)) == pytest.approx(3.0, rel=1e-12)


def test_kl_to_uniform_is_log2_n_minus_entropy() -> None:
    p = logs(0.5, 0.25, 0.25)
    assert kl_bits(p, uniform(3)) == pytest.approx(math.log2(3.0) - 1.5, rel=1e-12)


# --- Jensen-Shannon ---------------------------------------------------------------------------------------


def test_js_of_equal_distributions_is_zero() -> None:
    p = logs(0.2, 0.3, 0.5)
    assert js_bits(p, p) == pytest.approx(0.0, abs=1e-15)


def test_js_of_disjoint_supports_is_one_bit() -> None:
    p = np.array([0.0, NEG, NEG, NEG])
    q = np.array([NEG, NEG, -math.log(2.0), -math.log(2.0)])
    assert js_bits(p, q) == pytest.approx(1.0, abs=1e-12)


def test_js_is_symmetric_and_at_most_one_bit() -> None:
    p, q = logs(0.7, 0.2, 0.1), logs(0.1, 0.3, 0.6)
    assert js_bits(p, q) == pytest.approx(js_bits(q, p), abs=1e-15)
    assert 0.0 < js_bits(p, q) < 1.0


def test_js_hand_example() -> None:
    # p = (1, 0), q = (1/2, 1/2), m = (3/4, 1/4):
    # KL(p||m) = log2(4/3); KL(q||m) = 0.5 log2(2/3) + 0.5 log2 2 = 1 - 0.5 log2 3
    p, q = np.array([0.0, NEG]), logs(0.5, 0.5)
    expected = 0.5 * (math.log2(4.0 / 3.0) + 1.0 - 0.5 * math.log2(3.0))
    assert js_bits(p, q) == pytest.approx(expected, rel=1e-12)


# --- total variation --------------------------------------------------------------------------------------


def test_total_variation_hand_example() -> None:
    # 0.5 * (|0.5 - 0.25| + |0.25 - 0.25| + |0.25 - 0.5|) = 0.25
    p, q = logs(0.5, 0.25, 0.25), logs(0.25, 0.25, 0.5)
    assert total_variation(p, q) == pytest.approx(0.25, rel=1e-12)
    assert total_variation(q, p) == pytest.approx(0.25, rel=1e-12)


def test_total_variation_bounds() -> None:
    p = logs(0.3, 0.3, 0.4)
    assert total_variation(p, p) == pytest.approx(0.0, abs=1e-15)
    assert total_variation(point_mass(3, at=0), point_mass(3, at=2)) == pytest.approx(1.0, abs=1e-12)


# --- Spearman ---------------------------------------------------------------------------------------------


def test_spearman_of_the_same_order_is_one() -> None:
    p = logs(0.1, 0.2, 0.3, 0.4)
    q = logs(0.01, 0.09, 0.2, 0.7)  # different values, same order
    assert spearman(p, q) == pytest.approx(1.0, abs=1e-12)


def test_spearman_of_the_reversed_order_is_minus_one() -> None:
    p = logs(0.1, 0.2, 0.3, 0.4)
    assert spearman(p, p[::-1].copy()) == pytest.approx(-1.0, abs=1e-12)


def test_spearman_is_nan_for_a_constant_distribution_or_a_single_outcome() -> None:
    varied = logs(0.1, 0.2, 0.7)
    assert math.isnan(spearman(uniform(3), varied))
    assert math.isnan(spearman(varied, uniform(3)))
    assert math.isnan(spearman(np.array([0.0]), np.array([0.0])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_agrees_with_scipy_including_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = normalize_log(rng.integers(0, 5, size=30).astype(np.float64))  # many ties
    q = normalize_log(rng.standard_normal(30))
    expected = stats.spearmanr(p, q).statistic
    assert spearman(p, q) == pytest.approx(expected, abs=1e-12)


# --- outcomes with exactly zero mass (log = -inf) ----------------------------------------------------------
# A candidate that no token sequence spells has mass 0.0, so its log-probability is -inf (distribution.py
# takes np.log of the masses). With the convention 0 log 0 = 0 the metrics are still finite.


ZERO_MASS_CASES = {
    "entropy of (1, 0)": (lambda: entropy_bits(logs(1.0, 0.0)), 0.0),
    "KL((1, 0) || (1/2, 1/2))": (lambda: kl_bits(logs(1.0, 0.0), logs(0.5, 0.5)), 1.0),
    "JS((1, 0), (0, 1))": (lambda: js_bits(logs(1.0, 0.0), logs(0.0, 1.0)), 1.0),
}


@pytest.mark.parametrize("case", list(ZERO_MASS_CASES))
def test_metrics_are_finite_when_an_outcome_has_zero_mass(case: str) -> None:
    compute, expected = ZERO_MASS_CASES[case]
    with np.errstate(invalid="ignore"):
        value = compute()
    assert value == pytest.approx(expected, abs=1e-12)


def test_total_variation_and_chi_square_handle_zero_mass() -> None:
    p, q = logs(1.0, 0.0), logs(0.0, 1.0)
    assert total_variation(p, q) == pytest.approx(1.0, abs=1e-12)
    assert chi_square_uniform(p) == pytest.approx(1.0, abs=1e-12)
