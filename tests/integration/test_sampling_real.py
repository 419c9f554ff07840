"""Sampling and the temperature tests on the real default models."""

from __future__ import annotations

import json
import math

import pytest

import modescope as ms
from modescope.models.base import Backend
from modescope.probes.sampling import sample_models
from modescope.probes.temperature import outcome_level_fits, temperature_sweep

pytestmark = pytest.mark.integration

METRICS = [
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "distinct_4",
    "ead_1",
    "self_bleu",
    "compression_ratio",
    "embedding_diversity",
    "equivalence_classes",
    "mean_entropy_bits",
    "branching_factor",
    "share_confident",
]


def test_are_bugs_real_reports_every_metric_for_both_models(gemma: Backend, smollm: Backend) -> None:
    result = sample_models([gemma, smollm], "Q: Are bugs real?\nA:", n=16, max_tokens=48, seed=0)
    data = json.loads(json.dumps(result.to_dict()))
    for model in data["models"]:
        assert len(model["completions"]) == 16
        for name in METRICS:
            assert math.isfinite(model["metrics"][name]), (model["model"], name)
    again = sample_models([smollm], "Q: Are bugs real?\nA:", n=16, max_tokens=48, seed=0)
    assert again.models[0].texts == result.models[1].texts


def test_temperature_sweep_and_outcome_level_fit(gemma: Backend, smollm: Backend) -> None:
    sweep = temperature_sweep([smollm], "Q: Are bugs real?\nA:", [0.7, 1.4], n=4, max_tokens=16)
    assert [p.temperature for p in sweep.points] == [0.7, 1.4]
    prompt = "Q: Tell me a random integer between 0 and 100.\nA: Ok, the integer is"
    forward, reverse = outcome_level_fits(gemma, smollm, prompt, ms.integers(0, 100), tokenizations="canonical")
    assert forward.source == "gemma-3-270m" and reverse.source == "smollm2-135m-instruct"
    for fit in (forward, reverse):
        assert 0.05 <= fit.tau <= 20 and fit.divergence_at_tau <= fit.divergence_at_one + 1e-9


def test_padded_batch_of_prompts_matches_one_at_a_time(model: Backend) -> None:
    from modescope.engine.decode import generate, generate_many

    prompts = [model.prompt_ids(p) for p in ["Q: Are bugs real?\nA:", "The capital of France is", "1, 2, 3,"]]
    together = generate_many(model, prompts, max_tokens=8)
    for prompt, batched in zip(prompts, together, strict=True):
        (alone,) = generate(model, prompt, max_tokens=8)
        assert [t.id for t in batched.tokens] == [t.id for t in alone.tokens]
        for a, b in zip(batched.tokens, alone.tokens, strict=True):
            assert a.raw_logprob == pytest.approx(b.raw_logprob, abs=1e-3)
