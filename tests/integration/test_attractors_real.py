"""The essay's attractor experiment on the default models: mainline + 10 token swaps at 5 positions."""

from __future__ import annotations

import math

import pytest

from modescope.models.base import Backend
from modescope.probes.attractors import AttractorPlan, attractor_experiment

pytestmark = pytest.mark.integration


def test_are_bugs_real_attractor_runs_batched_on_both_models(gemma: Backend, smollm: Backend) -> None:
    plan = AttractorPlan(swap_positions=5, alternatives=3)  # k = 2, 3 at 5 positions: 10 swaps
    calls_before = [gemma.stats.calls, smollm.stats.calls]
    results = attractor_experiment([gemma, smollm], "Q: Are bugs real?\nA:", plan, max_tokens=32)
    for result, before, backend in zip(results, calls_before, (gemma, smollm), strict=True):
        assert len(result.runs) == 10
        assert 0.0 <= result.basin_share <= 1.0 and 0.0 <= result.ending_share <= 1.0
        for run in result.runs:
            assert 0.0 < run.divergent_confidence <= 1.0 or math.isnan(run.divergent_confidence)
        # one decode for the mainline (a forward per token) and ONE batched decode for all 10 perturbations
        regeneration_calls = backend.stats.calls - before - len(result.mainline.tokens)
        assert regeneration_calls <= len(result.mainline.tokens) + 1
