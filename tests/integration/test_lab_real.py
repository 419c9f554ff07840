"""The shipped lab adapter on the real model: it loads as a preset and as BASE+ADAPTER, it is the model the lab
saved (same base fingerprint), and it is more positive than its start model on prompts it never trained on."""

from __future__ import annotations

import torch

import modescope as ms
from modescope.engine.decode import generate
from modescope.lab.prompts import HELD_PROMPTS
from modescope.lab.rewards import score, sentiment_reward
from modescope.models.base import Backend


def _mean_reward(backend: Backend) -> float:
    reward = sentiment_reward()
    prompts = HELD_PROMPTS[:3]
    texts = [
        c.text
        for prompt in prompts
        for c in generate(backend, backend.prompt_ids(prompt), n=4, max_tokens=24, temperature=1.0, seed=1)
    ]
    return sum(score(reward, [p for p in prompts for _ in range(4)], texts)) / len(texts)


def test_shipped_adapter_loads_and_is_more_positive(smollm: Backend) -> None:
    tuned = ms.load("smollm2-135m-sentiment-rl", device="cpu")
    assert tuned.name == "smollm2-135m-sentiment-rl"
    assert getattr(tuned, "source", "") == "preset:smollm2-135m-sentiment-rl"
    spelled = ms.load("smollm2-135m-instruct+smollm2-135m-sentiment-rl", device="cpu")
    ids = [tuned.encode("The storm tore the roof off the farmhouse, and")]
    assert torch.equal(tuned.next_logprobs(ids), spelled.next_logprobs(ids))
    assert not torch.allclose(tuned.next_logprobs(ids), smollm.next_logprobs(ids), atol=1e-3)
    assert _mean_reward(tuned) > _mean_reward(smollm) + 0.2
