"""One local Ray cluster for the whole session (Ray has no local mode any more: these are real processes).

Started as lean as Ray allows, as its start-up counts against the test budget: two CPUs, no dashboard, no
usage stats, worker logs kept out of the test output.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.test_remote_failures import server  # noqa: F401 - a fake OpenAI-compatible server, for NAME@URL


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    if started:
        ray.shutdown()
