"""The sampler chain on random logits and random settings: normalized outputs, support inside the input's,
the chain equal to its samplers composed in the given order, each filter keeping at least one token and never
moving a kept value, looser settings keeping more, and every invalid setting refused with ModescopeError."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import event, given, note
from hypothesis import strategies as st

from modescope.engine import samplers
from modescope.engine.samplers import DEFAULT_ORDER, SamplerSettings, apply_chain, sample
from modescope.errors import ModescopeError
from tests.property.strategies import property_settings

# logits of real models span a few tens of nats; -inf marks tokens an earlier step (or the model) removed
finite_logits = st.floats(-60.0, 60.0, allow_subnormal=False)
entries = st.one_of(finite_logits, finite_logits, finite_logits, st.just(-math.inf))
# temperature 0 (greedy), ordinary values, and the extremes a user may type (1e-300, 1e6)
temperatures = st.one_of(
    st.just(0.0), st.just(1.0), st.floats(0.05, 5.0), st.floats(0.0, 1e-3, exclude_min=True), st.floats(10, 1e300)
)
fractions = st.floats(0.0, 1.0)
open_fractions = st.floats(0.0, 1.0, exclude_min=True)


@st.composite
def logit_rows(draw: st.DrawFn) -> torch.Tensor:
    """[rows, vocab] float64 logits, every row with at least one finite entry; ties are likely (a list of few
    distinct values), since they decide the boundary cases."""
    vocab = draw(st.integers(1, 12))
    rows = draw(st.integers(1, 3))
    pool = draw(st.lists(finite_logits, min_size=1, max_size=4))
    values = st.one_of(entries, st.sampled_from(pool))
    table = [draw(st.lists(values, min_size=vocab, max_size=vocab)) for _ in range(rows)]
    for row in table:
        if not any(math.isfinite(v) for v in row):
            row[draw(st.integers(0, vocab - 1))] = draw(finite_logits)
    return torch.tensor(table, dtype=torch.float64)


@st.composite
def sampler_settings(draw: st.DrawFn) -> SamplerSettings:
    """Valid settings: each sampler on or off, in a random order that holds every active one."""
    values: dict[str, Any] = {}
    if draw(st.booleans()):
        values["temperature"] = draw(temperatures)
    if draw(st.booleans()):
        values["top_k"] = draw(st.integers(0, 14))
    if draw(st.booleans()):
        values["top_p"] = draw(open_fractions)
    if draw(st.booleans()):
        values["min_p"] = draw(fractions)
    if draw(st.booleans()):
        values["typical_p"] = draw(open_fractions)
    if draw(st.booleans()):
        values["top_n_sigma"] = draw(st.floats(1e-3, 1e3))
    if draw(st.booleans()):
        values["xtc_probability"] = draw(fractions)
        values["xtc_threshold"] = draw(fractions)
    order = draw(st.permutations(DEFAULT_ORDER))
    active = SamplerSettings(**values).active
    # samplers that are off may be left out of the order
    values["order"] = tuple(name for name in order if name in active or draw(st.booleans()))
    return SamplerSettings(**values)


def finite_support(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x)


def assert_normalized(out: torch.Tensor) -> None:
    """Log-probabilities of a distribution per row: no NaN or +inf, some token kept, total probability 1."""
    assert not torch.isnan(out).any() and not (out == math.inf).any(), out
    assert finite_support(out).any(dim=-1).all()
    totals = torch.logsumexp(out, dim=-1)
    assert torch.allclose(totals, torch.zeros_like(totals), atol=1e-12), totals


def composed(settings: SamplerSettings, logits: torch.Tensor, seed: int) -> torch.Tensor:
    """The active samplers applied one by one through their public functions, in the settings' order."""
    generator = torch.Generator().manual_seed(seed)
    steps: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "top_n_sigma": lambda x: samplers.top_n_sigma(x, settings.top_n_sigma or math.inf),
        "top_k": lambda x: samplers.top_k(x, settings.top_k),
        "typical_p": lambda x: samplers.typical_p(x, settings.typical_p),
        "top_p": lambda x: samplers.top_p(x, settings.top_p),
        "min_p": lambda x: samplers.min_p(x, settings.min_p),
        "xtc": lambda x: samplers.xtc(x, settings.xtc_threshold, settings.xtc_probability, generator),
        "temperature": lambda x: samplers.temperature(x, settings.temperature),
    }
    x = logits
    for name in settings.order:
        if name in settings.active:
            x = steps[name](x)
    return torch.log_softmax(x, dim=-1)


@given(logits=logit_rows(), settings=sampler_settings(), seed=st.integers(0, 2**31))
@property_settings(800)
def test_chain_is_a_distribution_on_the_input_support_in_the_given_order(
    logits: torch.Tensor, settings: SamplerSettings, seed: int
) -> None:
    note(f"logits={logits.tolist()}, settings={settings!r}, active: {settings.active}")
    event(f"{len(settings.active)} active samplers")
    out = apply_chain(settings, logits, torch.Generator().manual_seed(seed))
    assert_normalized(out)
    assert not (finite_support(out) & ~finite_support(logits)).any(), "a removed token came back"
    assert torch.equal(out, composed(settings, logits, seed))
    if settings.greedy and settings.active[-1] == "temperature":  # greedy last: a point mass
        assert (finite_support(out).sum(dim=-1) == 1).all()
    tokens, chained = sample(settings, logits, torch.Generator().manual_seed(seed))
    chosen = chained.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.isfinite(chosen).all(), "sampled a token of probability 0"
    again, _ = sample(settings, logits, torch.Generator().manual_seed(seed))
    assert torch.equal(tokens, again), "the same seed gave other tokens"


FILTERS: dict[str, tuple[Callable[[torch.Tensor, Any], torch.Tensor], st.SearchStrategy[Any], bool]] = {
    # name: (filter, its parameter, whether a larger parameter keeps more)
    "top_k": (samplers.top_k, st.integers(1, 14), True),  # (0 is off: it keeps everything)
    "top_p": (samplers.top_p, open_fractions, True),
    "min_p": (samplers.min_p, fractions, False),
    "typical_p": (samplers.typical_p, open_fractions, True),
    "top_n_sigma": (samplers.top_n_sigma, st.floats(1e-3, 1e3), True),
}


@given(logits=logit_rows(), name=st.sampled_from(sorted(FILTERS)), data=st.data())
@property_settings(800)
def test_each_filter_keeps_a_subset_unchanged_and_looser_keeps_more(
    logits: torch.Tensor, name: str, data: st.DataObject
) -> None:
    note(f"logits={logits.tolist()}")
    keep, parameter, larger_keeps_more = FILTERS[name]
    low, high = sorted(data.draw(st.lists(parameter, min_size=2, max_size=2)))
    tight, loose = (low, high) if larger_keeps_more else (high, low)
    kept_tight, kept_loose = keep(logits, tight), keep(logits, loose)
    for out in (kept_tight, kept_loose):
        assert finite_support(out).any(dim=-1).all(), "a filter removed every token"
        assert not (finite_support(out) & ~finite_support(logits)).any()
        assert torch.equal(out[finite_support(out)], logits[finite_support(out)]), "a kept value moved"
    # typical-p too: its order (closeness to the entropy) does not depend on the mass, so more mass only adds
    assert not (finite_support(kept_tight) & ~finite_support(kept_loose)).any(), (tight, loose)


@given(logits=logit_rows(), threshold=fractions, seed=st.integers(0, 2**31), protected=st.sets(st.integers(0, 11)))
@property_settings(400)
def test_xtc_removes_only_top_choices_and_keeps_the_protected(
    logits: torch.Tensor, threshold: float, seed: int, protected: set[int]
) -> None:
    """XTC at probability 1 removes every token at least `threshold` likely but the least likely of them, or
    nothing when that would remove a protected token; the other tokens stay as they were."""
    note(f"logits={logits.tolist()}")
    protected = {t for t in protected if t < logits.shape[-1]}
    out = samplers.xtc(logits, threshold, 1.0, torch.Generator().manual_seed(seed), protected)
    probs = torch.softmax(logits, dim=-1)
    for row_in, row_out, p in zip(logits, out, probs, strict=True):
        removed = torch.isfinite(row_in) & ~torch.isfinite(row_out)
        top = torch.isfinite(row_in) & (p >= threshold - samplers.TOLERANCE)
        assert not (removed & ~top).any(), "removed a token below the threshold"
        assert removed.sum() in (0, max(0, int(top.sum()) - 1))
        assert not any(bool(removed[t]) for t in protected)
        kept = torch.isfinite(row_out)
        assert torch.equal(row_out[kept], row_in[kept])


INVALID: list[tuple[str, Any]] = [
    ("temperature", -1.0),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("top_k", -3),
    ("top_k", "many"),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_p", math.nan),
    ("min_p", -0.1),
    ("min_p", 2.0),
    ("typical_p", 0.0),
    ("typical_p", math.nan),
    ("top_n_sigma", 0.0),
    ("top_n_sigma", -2.0),
    ("top_n_sigma", math.inf),
    ("xtc_probability", 1.01),
    ("xtc_threshold", -0.5),
    ("order", ("top_k", "top_k")),
    ("order", ("top-k",)),
    ("order", "temperature"),
    ("top_pp", 0.9),
]


@given(settings=sampler_settings(), bad=st.sampled_from(INVALID), data=st.data())
@property_settings(300)
def test_invalid_settings_are_refused_with_one_error_type(
    settings: SamplerSettings, bad: tuple[str, Any], data: st.DataObject
) -> None:
    """A valid set of settings with one setting made invalid (or an unknown one added) raises ModescopeError
    naming what to change, never another exception."""
    name, value = bad
    values = settings.model_dump() | {name: value}
    if name == "order" and value == "temperature":
        values[name] = data.draw(st.sampled_from(["temperature", 7, None]))
    try:
        SamplerSettings.model_validate(values)
    except ModescopeError as error:
        assert str(error) and "\n" not in str(error)
        return
    raise AssertionError(f"{name}={value!r} was accepted")
