"""Bootstrap means and paired differences over prompts, against values computed by hand."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from modescope.errors import ModescopeError
from modescope.metrics.paired import (
    Estimate,
    bootstrap_mean,
    bootstrap_means,
    paired_difference,
    paired_differences,
    wilcoxon_p,
)

NAN = math.nan


def test_mean_of_a_small_list_and_its_interval_around_it() -> None:
    estimate = bootstrap_mean([1.0, 2.0, 3.0, 4.0, 10.0])
    assert estimate.mean == 4.0  # 20 / 5
    assert estimate.n == 5
    assert 1.0 <= estimate.low < 4.0 < estimate.high <= 10.0


def test_two_values_give_the_hand_computed_percentiles() -> None:
    # Resampling [0, 1] twice gives means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: the 2.5th percentile is
    # 0 and the 97.5th is 1; an 80% interval (10th and 90th percentiles) is still [0, 1], a 40% one is [0.5, 0.5].
    assert bootstrap_mean([0.0, 1.0]) == Estimate(0.5, 0.0, 1.0, 2)
    assert bootstrap_mean([0.0, 1.0], confidence=0.8) == Estimate(0.5, 0.0, 1.0, 2)
    narrow = bootstrap_mean([0.0, 1.0], confidence=0.4)
    assert (narrow.low, narrow.high) == (0.5, 0.5)


def test_not_finite_values_are_dropped_and_edge_sizes() -> None:
    assert bootstrap_mean([1.0, NAN, 3.0, math.inf]) == bootstrap_mean([1.0, 3.0])
    assert bootstrap_mean([1.0, NAN, 3.0]).mean == 2.0
    empty = bootstrap_mean([NAN, NAN])
    assert empty.n == 0 and all(math.isnan(v) for v in (empty.mean, empty.low, empty.high))
    assert bootstrap_mean([]).n == 0
    assert bootstrap_mean([NAN, 0.25]) == Estimate(0.25, 0.25, 0.25, 1)
    assert empty.to_dict() == {"mean": None, "low": None, "high": None, "n": 0}
    json.dumps(empty.to_dict(), allow_nan=False)


def test_interval_contains_the_mean_and_shrinks_with_more_prompts() -> None:
    rng = np.random.default_rng(7)
    widths = []
    for n in (20, 200, 2000):
        values = rng.normal(0.3, 1.0, size=n)
        estimate = bootstrap_mean(values, resamples=4000)
        assert estimate.low < estimate.mean < estimate.high
        assert estimate.mean == pytest.approx(values.mean(), abs=1e-12)
        widths.append(estimate.high - estimate.low)
    assert widths[0] > widths[1] > widths[2]
    # the normal-theory width 2 x 1.96 sd / sqrt(n), to within the bootstrap's own noise
    assert widths[2] == pytest.approx(2 * 1.96 / math.sqrt(2000), rel=0.1)


def test_chunked_resampling_matches_the_normal_width() -> None:
    values = np.random.default_rng(1).normal(size=5000)  # 5000 prompts: the resamples are drawn in chunks
    estimate = bootstrap_mean(values, resamples=3000)
    assert estimate.high - estimate.low == pytest.approx(2 * 1.96 * values.std() / math.sqrt(5000), rel=0.1)


def test_same_seed_same_interval() -> None:
    values = [0.1, 0.5, 0.2, 0.9, 0.4, 0.3]
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    assert bootstrap_mean(values, seed=3) != bootstrap_mean(values, seed=4)


def test_many_columns_at_once_equal_each_on_its_own() -> None:
    rng = np.random.default_rng(5)
    columns = list(rng.normal(size=(4, 40)))
    columns[1][[3, 9]] = NAN  # measured on fewer prompts: resampled apart from the others
    columns.append(rng.normal(size=7))
    for together, column in zip(bootstrap_means(columns), columns, strict=True):
        alone = bootstrap_mean(column)
        assert together.n == alone.n
        for field in ("mean", "low", "high"):
            assert getattr(together, field) == pytest.approx(getattr(alone, field), abs=1e-12)
    pairs = [(columns[0], columns[1]), (columns[2], columns[3])]
    for together, (a, b) in zip(paired_differences(pairs), pairs, strict=True):
        assert together.to_dict() == pytest.approx(paired_difference(a, b).to_dict(), abs=1e-12)


def test_all_positive_differences_give_the_exact_wilcoxon_p() -> None:
    # b - a = 1..5, all positive: under the null each of the 2^5 sign patterns is equally likely and only
    # "all positive" reaches W- = 0, so the two-sided p is 2 x 1/32 = 0.0625.
    result = paired_difference([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert result.mean == 3.0
    assert result.wilcoxon_p == pytest.approx(2 / 32, abs=1e-12)
    assert (result.n, result.b_higher, result.a_higher, result.ties) == (5, 5, 0, 0)
    assert 1.0 <= result.low < 3.0 < result.high <= 5.0


def test_mixed_signs_give_the_exact_wilcoxon_p() -> None:
    # differences 1, -2, 3, 4, 5: ranks of |d| are 1..5, W- = 2; sign patterns with W- <= 2 are {}, {1}, {2},
    # so the two-sided p is 2 x 3/32 = 0.1875.
    result = paired_difference([0, 2, 0, 0, 0], [1, 0, 3, 4, 5])
    assert result.mean == pytest.approx(11 / 5)
    assert result.wilcoxon_p == pytest.approx(6 / 32, abs=1e-12)
    assert (result.b_higher, result.a_higher, result.ties) == (4, 1, 0)


def test_ties_and_unmeasured_prompts() -> None:
    a = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, NAN, 2.0]
    b = [1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 1.0, NAN]
    result = paired_difference(a, b)
    # the last two prompts lack one side; the two ties count but carry no sign, so the p is the n=5 one
    assert (result.n, result.b_higher, result.a_higher, result.ties) == (7, 5, 0, 2)
    assert result.mean == pytest.approx(15 / 7)
    assert result.wilcoxon_p == pytest.approx(0.0625, abs=1e-12)
    json.dumps(result.to_dict(), allow_nan=False)


def test_degenerate_wilcoxon_cases_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wilcoxon_p(np.array([])) != wilcoxon_p(np.array([]))  # NaN: nothing measured
        assert wilcoxon_p(np.zeros(4)) == 1.0  # measured, no difference
        assert wilcoxon_p(np.array([0.3])) == 1.0  # one pair: exact two-sided p is 2 x 1/2
        same = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
        assert (same.mean, same.low, same.high, same.wilcoxon_p, same.ties) == (0.0, 0.0, 0.0, 1.0, 3)
        none = paired_difference([NAN], [1.0])
        assert none.n == 0 and math.isnan(none.wilcoxon_p) and none.to_dict()["wilcoxon_p"] is None
        tied = paired_difference([0.0] * 8, [1.0, 1.0, 2.0, 2.0, -1.0, 3.0, 3.0, 0.0])  # tied ranks, a zero
        assert 0.0 < tied.wilcoxon_p < 1.0


def test_large_samples_use_the_normal_approximation() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=300)
    b = a - 0.2 + rng.normal(scale=0.3, size=300)
    result = paired_difference(a, b)
    assert result.low < result.mean < result.high < 0.0
    assert result.wilcoxon_p < 1e-6
    assert result.a_higher + result.b_higher + result.ties == 300


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bootstrap_mean([1.0], confidence=1.0), "confidence must be between 0 and 1"),
        (lambda: bootstrap_mean([1.0], resamples=0), "resamples must be at least 1"),
        (lambda: paired_difference([1.0, 2.0], [1.0]), "one value per prompt on each side"),
    ],
)
def test_bad_arguments_say_what_to_change(call: object, message: str) -> None:
    with pytest.raises(ModescopeError, match=message):
        call()  # type: ignore[operator]
