"""One vLLM server for the whole session, serving the converted SmolLM2 folder from the modescope cache.

It requires an API key (so every test also exercises the key's path), and the last test of test_vllm.py
kills it in the middle of a probe.
"""

from __future__ import annotations

import os
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


API_KEY = "sk-modescope-test-4b1d"


@pytest.fixture(scope="session")
def vllm(smollm_folder: Path) -> Iterator[vllm_server.VLLMServer]:
    try:
        server = vllm_server.start(smollm_folder, "--api-key", API_KEY)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    previous = os.environ.get("MODESCOPE_API_KEY")
    os.environ["MODESCOPE_API_KEY"] = API_KEY
    try:
        yield server
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("MODESCOPE_API_KEY", None)
        else:
            os.environ["MODESCOPE_API_KEY"] = previous


@pytest.fixture(scope="session")
def remote(vllm: vllm_server.VLLMServer) -> Backend:
    """The tuned default model behind the server, full tier."""
    return ms.load(vllm.spec)


@pytest.fixture(scope="session")
def local() -> Backend:
    """The same weights in-process."""
    return ms.load("smollm2-135m-instruct", device="cpu")
