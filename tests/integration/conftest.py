"""The real default models, loaded once per test session (from the converted cache after the first run)."""

from __future__ import annotations

import pytest

import modescope as ms
from modescope.models.base import Backend


@pytest.fixture(scope="session")
def gemma() -> Backend:
    return ms.load("gemma-3-270m", device="cpu")


@pytest.fixture(scope="session")
def smollm() -> Backend:
    return ms.load("smollm2-135m-instruct", device="cpu")


@pytest.fixture(params=["gemma", "smollm"])
def model(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)
