"""One vLLM server for the whole session, serving the converted SmolLM2 folder from the modescope cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import modescope as ms
from modescope.models import PRESETS, preset_folder
from modescope.models.base import Backend
from tests.remote import vllm_server


@pytest.fixture(scope="session")
def smollm_folder() -> Path:
    return preset_folder(PRESETS["smollm2-135m-instruct"])


@pytest.fixture(scope="session")
def vllm(smollm_folder: Path) -> Iterator[vllm_server.VLLMServer]:
    try:
        server = vllm_server.start(smollm_folder)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def remote(vllm: vllm_server.VLLMServer) -> Backend:
    """The tuned default model behind the server, full tier."""
    return ms.load(vllm.spec)


@pytest.fixture(scope="session")
def local() -> Backend:
    """The same weights in-process."""
    return ms.load("smollm2-135m-instruct", device="cpu")
