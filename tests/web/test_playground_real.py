"""The playground API on the real default models: one short check that both columns work end to end."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from modescope.models.base import Backend
from modescope.web.app import create_app
from tests.integration.conftest import gemma, smollm  # noqa: F401 - the session fixtures

pytestmark = pytest.mark.integration


def test_generate_branch_and_multiverse_on_the_default_models(gemma: Backend, smollm: Backend) -> None:  # noqa: F811
    prompt = {"text": "Q: Are bugs real?\nA:"}
    with TestClient(create_app([gemma, smollm])) as client:
        request = {"models": [gemma.name, smollm.name], "prompt": prompt, "n": 2, "max_tokens": 8, "seed": 0}
        results = client.post("/api/generate", json=request).json()["results"]
        assert [r["model"] for r in results] == [gemma.name, smollm.name]
        for result in results:
            for completion in result["completions"]:
                for token in completion["tokens"]:
                    assert 0 < math.exp(token["raw_logprob"]) <= 1 + 1e-9
                    assert [a["logprob"] for a in token["top"]] == sorted(
                        (a["logprob"] for a in token["top"]), reverse=True
                    )
        # branch the tuned model's first completion on its second most likely first token, greedily
        first = results[1]["completions"][0]["tokens"][0]
        alternative = first["top"][1]
        request = {"model": smollm.name, "prompt": prompt, "prefix_ids": [alternative["id"]], "max_tokens": 8}
        request["sampler"] = {"temperature": 0}
        branched = client.post("/api/regenerate", json=request).json()["completions"][0]
        assert branched["tokens"] and branched["text"]
        body = {"models": [gemma.name, smollm.name], "prompt": prompt, "depth": 2, "cutoff": 0.05}
        response = client.post("/api/multiverse", json=body)
        assert response.status_code == 200 and "event: result" in response.text
