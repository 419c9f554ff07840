"""The sampler chain of src/modescope/engine/samplers.py against each sampler's published definition.

Expected kept sets and probabilities are worked out by hand in the comments, mostly on the distribution
P = [0.5, 0.2, 0.15, 0.1, 0.05] over five tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from modescope.engine.samplers import (
    DEFAULT_ORDER,
    SamplerSettings,
    apply_chain,
    min_p,
    sample,
    temperature,
    top_k,
    top_n_sigma,
    top_p,
    typical_p,
    xtc,
)
from modescope.errors import ModescopeError

P = [0.5, 0.2, 0.15, 0.1, 0.05]


def logs(*rows: list[float]) -> torch.Tensor:
    """Natural logs of probability rows, as a float64 tensor [rows, vocab] (zeros become -inf)."""
    return torch.tensor(rows, dtype=torch.float64).log()


def kept(x: torch.Tensor) -> list[list[int]]:
    """Token ids still finite in each row."""
    return [torch.isfinite(row).nonzero().flatten().tolist() for row in x]


def probs(x: torch.Tensor) -> torch.Tensor:
    """The renormalized distribution of what is left in each row."""
    return torch.softmax(x, dim=-1)


def expected(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Each sampler on its own


@pytest.mark.parametrize(
    ("k", "keep"), [(1, [0]), (2, [0, 1]), (4, [0, 1, 2, 3]), (5, [0, 1, 2, 3, 4]), (99, [0, 1, 2, 3, 4])]
)
def test_top_k_keeps_the_k_most_probable(k: int, keep: list[int]) -> None:
    assert kept(top_k(logs(P), k)) == [keep]


def test_top_k_zero_is_off_and_ties_go_to_the_lowest_ids() -> None:
    assert kept(top_k(logs(P), 0)) == [[0, 1, 2, 3, 4]]
    # Three tokens tie for second place; exactly k = 2 stay, the tie going to the lowest id.
    assert kept(top_k(logs([0.4, 0.2, 0.2, 0.2]), 2)) == [[0, 1]]


@pytest.mark.parametrize(
    ("p", "keep"),
    [
        (0.3, [0]),  # 0.5 alone already reaches 0.3
        (0.5, [0]),  # 0.5 reaches 0.5 exactly: the boundary is inclusive (cumulative >= p)
        (0.7, [0, 1]),  # 0.5 + 0.2 = 0.7
        (0.71, [0, 1, 2]),  # 0.7 < 0.71 <= 0.85
        (0.95, [0, 1, 2, 3]),  # 0.5 + 0.2 + 0.15 + 0.1 = 0.95
        (0.96, [0, 1, 2, 3, 4]),
        (1.0, [0, 1, 2, 3, 4]),
    ],
)
def test_top_p_keeps_the_smallest_nucleus_reaching_p(p: float, keep: list[int]) -> None:
    assert kept(top_p(logs(P), p)) == [keep]


def test_top_p_keeps_at_least_one_token_and_cuts_ties_by_id() -> None:
    assert kept(top_p(logs(P), 1e-6)) == [[0]]
    # Uniform over four: two tokens reach 0.5; the two lowest ids are kept.
    assert kept(top_p(logs([0.25, 0.25, 0.25, 0.25]), 0.5)) == [[0, 1]]
    # Sorting is by probability, not by position.
    assert kept(top_p(logs([0.05, 0.15, 0.5, 0.1, 0.2]), 0.7)) == [[2, 4]]


@pytest.mark.parametrize(
    ("ratio", "keep"),
    [
        (0.0, [0, 1, 2, 3, 4]),  # off
        (0.1, [0, 1, 2, 3, 4]),  # floor 0.1 * 0.5 = 0.05: the last token sits on it and stays
        (0.25, [0, 1, 2]),  # floor 0.125
        (0.3, [0, 1, 2]),  # floor 0.15: inclusive
        (0.31, [0, 1]),  # floor 0.155
        (1.0, [0]),  # only tokens as probable as the top one
    ],
)
def test_min_p_keeps_tokens_at_least_ratio_times_the_top(ratio: float, keep: list[int]) -> None:
    assert kept(min_p(logs(P), ratio)) == [keep]


def test_min_p_scales_with_the_top_probability_per_row() -> None:
    # Same ratio 0.5, different rows: floors 0.25 (top 0.5) and 0.15 (top 0.3).
    x = logs(P, [0.3, 0.25, 0.2, 0.15, 0.1])
    assert kept(min_p(x, 0.5)) == [[0], [0, 1, 2, 3]]


# Locally typical sampling on P. Entropy H = -sum p ln p
#   = 0.5 ln 2 + 0.2 ln 5 + 0.15 ln(1/0.15) + 0.1 ln 10 + 0.05 ln 20 = 1.33308 nats.
# Surprisals -ln p = 0.693, 1.609, 1.897, 2.303, 2.996; |-ln p - H| = 0.640, 0.276, 0.564, 0.970, 1.663.
# Most typical first: token 1 (0.2), token 2 (0.15), token 0 (0.5), token 3 (0.1), token 4 (0.05);
# cumulative mass in that order: 0.2, 0.35, 0.85, 0.95, 1.0.
@pytest.mark.parametrize(
    ("mass", "keep"),
    [
        (0.1, [1]),  # the most typical token is not the most probable one
        (0.2, [1]),
        (0.3, [1, 2]),
        (0.5, [0, 1, 2]),
        (0.85, [0, 1, 2]),
        (0.9, [0, 1, 2, 3]),
        (1.0, [0, 1, 2, 3, 4]),
    ],
)
def test_typical_p_keeps_the_most_typical_tokens_up_to_the_mass(mass: float, keep: list[int]) -> None:
    assert kept(typical_p(logs(P), mass)) == [keep]


def test_typical_p_entropy_ignores_removed_tokens() -> None:
    # With tokens 3 and 4 already removed the distribution is [0.5, 0.3, 0.2] after renormalizing:
    # H = 0.5 ln 2 + 0.3 ln(1/0.3) + 0.2 ln 5 = 1.02965; gaps |-ln p - H| = 0.336, 0.174, 0.580:
    # token 1 (0.3) first, then token 0 (0.5), so mass 0.6 keeps {0, 1}.
    x = logs([0.5, 0.3, 0.2, 0.0, 0.0])
    assert kept(typical_p(x, 0.6)) == [[0, 1]]
    assert kept(typical_p(x, 0.3)) == [[1]]


# Top-nσ on logits [2, -1, -1, 0, 0, 0]: mean 0, population variance (4 + 1 + 1) / 6 = 1, so σ = 1 and the
# floor is 2 - n. (The sample standard deviation would be sqrt(6/5) = 1.095.)
SIGMA_LOGITS = [2.0, -1.0, -1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("n", "keep"),
    [
        (0.5, [0]),  # floor 1.5
        (1.0, [0]),  # floor 1.0
        (2.0, [0, 3, 4, 5]),  # floor 0: inclusive
        (2.8, [0, 3, 4, 5]),  # floor -0.8 (with the sample σ it would be -1.07 and keep everything)
        (3.0, [0, 1, 2, 3, 4, 5]),  # floor -1
    ],
)
def test_top_n_sigma_keeps_logits_within_n_sigma_of_the_max(n: float, keep: list[int]) -> None:
    x = torch.tensor([SIGMA_LOGITS], dtype=torch.float64)
    assert kept(top_n_sigma(x, n)) == [keep]


def test_top_n_sigma_is_the_same_on_logprobs_and_at_any_temperature() -> None:
    x = torch.tensor([SIGMA_LOGITS], dtype=torch.float64)
    for variant in (torch.log_softmax(x, dim=-1), x / 0.3, x * 4.0 - 7.0):
        assert kept(top_n_sigma(variant, 2.8)) == [[0, 3, 4, 5]]


def test_top_n_sigma_uses_only_tokens_not_yet_removed() -> None:
    # Removed tokens (-inf) must not enter the mean or σ: the kept set is that of the finite logits alone.
    x = torch.tensor([[2.0, -math.inf, -1.0, -1.0, 0.0, -math.inf, 0.0, 0.0]], dtype=torch.float64)
    assert kept(top_n_sigma(x, 2.8)) == [[0, 4, 6, 7]]
    assert kept(top_n_sigma(x, 3.0)) == [[0, 2, 3, 4, 6, 7]]


def test_temperature_divides_the_logits() -> None:
    # At T = 2 probabilities become proportional to sqrt(p); at T = 0.5 to p².
    hot = probs(temperature(logs(P), 2.0))
    roots = torch.tensor(P, dtype=torch.float64).sqrt()
    torch.testing.assert_close(hot, (roots / roots.sum()).unsqueeze(0), rtol=0, atol=1e-12)
    cold = probs(temperature(logs(P), 0.5))
    squares = torch.tensor(P, dtype=torch.float64) ** 2
    torch.testing.assert_close(cold, (squares / squares.sum()).unsqueeze(0), rtol=0, atol=1e-12)


def test_temperature_zero_is_a_point_mass_on_the_argmax() -> None:
    x = logs([0.1, 0.6, 0.3], [0.4, 0.2, 0.4])
    greedy = temperature(x, 0.0)
    # Ties go to the lowest id (row 2: tokens 0 and 2 tie).
    assert greedy.tolist() == [[-math.inf, 0.0, -math.inf], [0.0, -math.inf, -math.inf]]


# XTC on P with probability 1.


@pytest.mark.parametrize(
    ("threshold", "result"),
    [
        # 0.5, 0.2 and 0.15 reach 0.15: remove all but the least probable (0.15); renormalize 0.15, 0.1, 0.05.
        (0.15, [0.0, 0.0, 0.5, 1 / 3, 1 / 6]),
        # 0.5 and 0.2 reach 0.2: remove 0.5; renormalize 0.2, 0.15, 0.1, 0.05 over 0.5.
        (0.2, [0.0, 0.4, 0.3, 0.2, 0.1]),
        # Only 0.5 reaches 0.3: fewer than two top choices, nothing happens.
        (0.3, P),
        # Every token reaches 0.05: all but the least probable go.
        (0.05, [0.0, 0.0, 0.0, 0.0, 1.0]),
    ],
)
def test_xtc_removes_all_top_choices_but_the_least_probable(threshold: float, result: list[float]) -> None:
    out = probs(xtc(logs(P), threshold, 1.0, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out, expected(result), rtol=0, atol=1e-12)


def test_xtc_is_a_no_op_with_fewer_than_two_tokens_above_threshold() -> None:
    x = logs([0.6, 0.2, 0.2], [0.45, 0.45, 0.1])
    # Row 1: only 0.6 reaches 0.5. Row 2: nothing reaches 0.5. Threshold above 0.5 can never act.
    assert torch.equal(xtc(x, 0.5, 1.0), x)
    assert torch.equal(xtc(x, 0.51, 1.0), x)


def test_xtc_skips_rows_where_a_protected_token_would_be_removed() -> None:
    # Token 1 (say EOS) is a top choice in row 1 only; row 2 removes tokens 0 and 3, neither protected.
    x = logs([0.5, 0.2, 0.15, 0.1, 0.05], [0.4, 0.05, 0.1, 0.3, 0.15])
    out = probs(xtc(x, 0.15, 1.0, protected={1}))
    torch.testing.assert_close(out[0], torch.tensor(P, dtype=torch.float64), rtol=0, atol=1e-12)
    # Row 2: 0.4, 0.3 and 0.15 reach 0.15; keep 0.15 with 0.05 and 0.1, renormalized over 0.3.
    torch.testing.assert_close(out[1], torch.tensor([0.0, 1 / 6, 1 / 3, 0.0, 0.5], dtype=torch.float64))


def test_xtc_acts_when_the_protected_token_is_the_one_kept_or_below() -> None:
    # Token 2 is the least probable top choice (kept) and token 4 is below the threshold: neither is removed.
    out = kept(xtc(logs(P), 0.15, 1.0, protected={2, 4}))
    assert out == [[2, 3, 4]]


def test_xtc_ties_keep_the_later_token_as_in_the_reference() -> None:
    # Tokens 0 and 1 tie at 0.3; the reference sorts descending and keeps the last qualifying one.
    assert kept(xtc(logs([0.3, 0.3, 0.2, 0.2]), 0.3, 1.0)) == [[1, 2, 3]]


def test_xtc_probability_is_per_row_and_seeded() -> None:
    x = logs(*[P] * 2000)
    first = xtc(x, 0.15, 0.5, torch.Generator().manual_seed(7))
    again = xtc(x, 0.15, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
    acted = (~torch.isfinite(first[:, 0])).double().mean().item()
    assert 0.45 < acted < 0.55
    assert xtc(x, 0.15, 0.0) is x


def test_samplers_accept_logits_with_any_offset() -> None:
    # Filters read probabilities as the softmax of their input, so a per-row constant changes nothing.
    x = logs(P)
    shifted = x + 12.5
    runs: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "top_k": lambda t: top_k(t, 3),
        "top_p": lambda t: top_p(t, 0.7),
        "min_p": lambda t: min_p(t, 0.3),
        "typical_p": lambda t: typical_p(t, 0.5),
        "top_n_sigma": lambda t: top_n_sigma(t, 1.0),
        "xtc": lambda t: xtc(t, 0.15, 1.0),
    }
    for name, run in runs.items():
        assert kept(run(shifted)) == kept(run(x)), name


# ---------------------------------------------------------------------------------------------------------------
# The chain


def test_default_order_is_llama_cpp_s() -> None:
    assert DEFAULT_ORDER == ("top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc", "temperature")
    assert SamplerSettings().order == DEFAULT_ORDER


def test_defaults_change_nothing() -> None:
    x = logs(P, [0.2, 0.2, 0.2, 0.2, 0.2])
    assert SamplerSettings().active == ()
    torch.testing.assert_close(apply_chain(SamplerSettings(), x), x, rtol=0, atol=1e-15)


def test_chain_returns_normalized_logprobs() -> None:
    # Top-p 0.7 keeps 0.5 and 0.2, renormalized to 5/7 and 2/7.
    out = apply_chain(SamplerSettings(top_p=0.7), logs(P))
    torch.testing.assert_close(out.exp(), expected([5 / 7, 2 / 7, 0.0, 0.0, 0.0]), rtol=0, atol=1e-12)
    assert out[0, 2:].tolist() == [-math.inf] * 3
    # Raw logits in, normalized log-probabilities out.
    out = apply_chain(SamplerSettings(top_k=2), logs(P) + 3.0)
    assert torch.logsumexp(out, dim=-1).item() == pytest.approx(0.0, abs=1e-12)


def test_each_filter_sees_the_renormalized_distribution() -> None:
    # Top-k 3 leaves 0.5, 0.2, 0.15, renormalized to 0.588, 0.235, 0.176. Top-p 0.8 then stops at
    # 0.588 + 0.235 = 0.824; on the raw P it would have needed three tokens (0.5 + 0.2 = 0.7 < 0.8).
    out = apply_chain(SamplerSettings(top_k=3, top_p=0.8), logs(P))
    assert kept(out) == [[0, 1]]
    assert kept(top_p(logs(P), 0.8)) == [[0, 1, 2]]


def test_temperature_before_or_after_min_p_keeps_different_sets() -> None:
    x = logs(P)
    # Default order, min-p first: floor 0.35 * 0.5 = 0.175 keeps 0.5 and 0.2; then T = 2 makes them
    # proportional to sqrt(0.5) and sqrt(0.2).
    late = apply_chain(SamplerSettings(min_p=0.35, temperature=2.0), x)
    assert kept(late) == [[0, 1]]
    a, b = math.sqrt(0.5), math.sqrt(0.2)
    torch.testing.assert_close(late.exp(), expected([a / (a + b), b / (a + b), 0.0, 0.0, 0.0]), rtol=0, atol=1e-12)
    # Temperature first: relative to the top, the tempered probabilities are sqrt(p / 0.5) =
    # 1, 0.632, 0.548, 0.447, 0.316, so the floor 0.35 keeps four tokens.
    early_order = ("temperature", *(name for name in DEFAULT_ORDER if name != "temperature"))
    early = apply_chain(SamplerSettings(min_p=0.35, temperature=2.0, order=early_order), x)
    assert kept(early) == [[0, 1, 2, 3]]


def test_greedy_is_the_argmax_of_what_the_filters_left() -> None:
    x = logs(P)
    greedy = apply_chain(SamplerSettings(temperature=0.0), x)
    assert greedy.tolist() == [[0.0] + [-math.inf] * 4]
    # Typical-p 0.3 keeps tokens 1 and 2 (see above), so greedy picks token 1, not the raw argmax.
    typical = apply_chain(SamplerSettings(temperature=0.0, typical_p=0.3), x)
    assert typical.tolist() == [[-math.inf, 0.0, -math.inf, -math.inf, -math.inf]]
    # With temperature first, the point mass is taken before typical-p and survives it.
    order = ("temperature", "typical_p")
    first = apply_chain(SamplerSettings(temperature=0.0, typical_p=0.3, order=order), x)
    assert kept(first) == [[0]]


def test_greedy_sample_takes_the_argmax_without_drawing() -> None:
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    ids, out = sample(
        SamplerSettings(temperature=0.0, xtc_probability=0.0), logs(P, [0.1, 0.2, 0.7, 0.0, 0.0]), generator
    )
    assert ids.tolist() == [0, 2]
    assert torch.equal(generator.get_state(), state)
    assert kept(out) == [[0], [2]]


def test_xtc_in_the_chain_protects_eos() -> None:
    x = logs(P)
    settings = SamplerSettings(xtc_probability=1.0, xtc_threshold=0.15)
    assert kept(apply_chain(settings, x, torch.Generator().manual_seed(0))) == [[2, 3, 4]]
    assert kept(apply_chain(settings, x, torch.Generator().manual_seed(0), protected=frozenset({0}))) == [
        [0, 1, 2, 3, 4]
    ]


def test_sampling_is_reproducible_with_a_seed() -> None:
    settings = SamplerSettings(temperature=1.3, top_k=4, xtc_probability=0.5, xtc_threshold=0.15)
    x = logs(*[P] * 64)
    first, dist = sample(settings, x, torch.Generator().manual_seed(11))
    again, _ = sample(settings, x, torch.Generator().manual_seed(11))
    other, _ = sample(settings, x, torch.Generator().manual_seed(12))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == (64,)
    assert dist.shape == (64, 5)


def test_samples_follow_the_chained_distribution() -> None:
    # Top-p 0.7: only tokens 0 and 1, with probabilities 5/7 and 2/7.
    ids, _ = sample(SamplerSettings(top_p=0.7), logs(*[P] * 20_000), torch.Generator().manual_seed(5))
    counts = torch.bincount(ids, minlength=5).tolist()
    assert counts[2:] == [0, 0, 0]
    assert counts[0] / 20_000 == pytest.approx(5 / 7, abs=0.015)


def test_float32_input_stays_float32() -> None:
    out = apply_chain(SamplerSettings(top_p=0.7, min_p=0.1, typical_p=0.9), logs(P).float())
    assert out.dtype == torch.float32
    assert kept(out) == [[0, 1]]


# ---------------------------------------------------------------------------------------------------------------
# Settings: every mistake is a ModescopeError that says what to change


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": -0.5}, "--temperature must be 0 (greedy) or a positive finite number (got -0.5)"),
        ({"temperature": math.inf}, "--temperature must be 0 (greedy) or a positive finite number"),
        ({"temperature": math.nan}, "--temperature must be 0 (greedy) or a positive finite number"),
        ({"top_k": -1}, "--top-k must be 0 (off) or a positive number of tokens (got -1)"),
        ({"top_p": 0.0}, "--top-p must be in (0, 1], where 1 turns it off (got 0.0)"),
        ({"top_p": 1.5}, "--top-p must be in (0, 1]"),
        ({"top_p": math.nan}, "--top-p must be in (0, 1]"),
        ({"min_p": -0.1}, "--min-p must be in [0, 1], where 0 turns it off (got -0.1)"),
        ({"min_p": 1.1}, "--min-p must be in [0, 1]"),
        ({"typical_p": 0.0}, "--typical-p must be in (0, 1], where 1 turns it off"),
        ({"typical_p": 2.0}, "--typical-p must be in (0, 1]"),
        ({"top_n_sigma": 0.0}, "--top-n-sigma must be a positive finite number of standard deviations"),
        ({"top_n_sigma": -1.0}, "--top-n-sigma must be a positive finite number"),
        ({"top_n_sigma": math.inf}, "--top-n-sigma must be a positive finite number"),
        ({"xtc_probability": 1.5}, "--xtc-probability must be in [0, 1], where 0 turns XTC off (got 1.5)"),
        ({"xtc_probability": -0.1}, "--xtc-probability must be in [0, 1]"),
        ({"xtc_threshold": -0.1}, "--xtc-threshold must be in [0, 1] (a probability) (got -0.1)"),
        ({"xtc_threshold": 1.2}, "--xtc-threshold must be in [0, 1]"),
        (
            {"order": ("top_k", "typical")},
            "unknown sampler 'typical' in --sampler-order (did you mean 'typical_p'?); known samplers",
        ),
        ({"order": ("top_k", "top_k")}, "sampler 'top_k' appears 2 times in --sampler-order; list it once"),
        (
            {"top_p": 0.9, "order": ("top_k", "temperature")},
            "--top-p is 0.9 but 'top_p' is not in --sampler-order (top_k, temperature); add 'top_p' to the order or turn it off",
        ),
        ({"xtc_probability": 0.5, "order": ()}, "--xtc-probability is 0.5 but 'xtc' is not in --sampler-order (empty)"),
        ({"temperature": 0.0, "order": ("top_k",)}, "--temperature is 0.0 but 'temperature' is not in --sampler-order"),
        ({"top_k": "many"}, "--top-k: Input should be a valid integer"),
        ({"top_k": 2.5}, "--top-k: Input should be a valid integer"),
        ({"top_q": 0.9}, "unknown sampler setting 'top_q' (did you mean 'top_p'?); known settings:"),
        ({"order": "top_k"}, "--sampler-order: Input should be a valid tuple"),
    ],
)
def test_invalid_settings_raise_modescope_error(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ModescopeError) as raised:
        SamplerSettings.make(**settings)
    assert message in str(raised.value)
    with pytest.raises(ModescopeError):
        SamplerSettings.model_validate(settings)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ModescopeError) as raised:
        SamplerSettings.make(top_p=2.0, min_p=-1.0)
    assert "--top-p" in str(raised.value)
    assert "--min-p" in str(raised.value)


def test_valid_edge_settings() -> None:
    # Inclusive ends, and an order that leaves out samplers that are off.
    settings = SamplerSettings.make(
        temperature=0.0, top_p=1.0, min_p=1.0, typical_p=1.0, xtc_threshold=0.0, order=("min_p", "temperature")
    )
    assert settings.active == ("min_p", "temperature")
    assert SamplerSettings.make(order=()).active == ()
    assert SamplerSettings.make(order=["temperature", "top_k"], top_k=3).order == ("temperature", "top_k")


def test_warnings() -> None:
    assert SamplerSettings().warnings() == []
    assert SamplerSettings(xtc_threshold=0.6).warnings() == []  # XTC is off
    assert SamplerSettings(xtc_threshold=0.5, xtc_probability=0.5).warnings() == []
    assert SamplerSettings(xtc_threshold=0.6, xtc_probability=0.5).warnings() == [
        "XTC with threshold above 0.5 never removes anything (at most one token can exceed it): lower --xtc-threshold"
    ]
    (greedy,) = SamplerSettings(temperature=0.0, top_k=5, min_p=0.1, typical_p=0.5).warnings()
    assert "--top-k, --min-p" in greedy
    assert "--typical-p" not in greedy  # typical-p can move the argmax, so it still matters
