"""Toy models, an in-process API client, and a real uvicorn server for the playground tests."""

from __future__ import annotations

import socket
import string
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modescope.models.analytic import AnalyticBackend
from modescope.web.app import create_app

# Every printable ASCII character (so any typed prompt tokenizes) plus some words, so texts look like text.
WORDS = [" the", " cat", " sat", " on", " mat", " and", " a", " dog", " ran", " yes", " no", " is", " it", "Q:", "A:"]
TOKENS = [*string.printable[:95], "\n", *WORDS]
BASE, TUNED = "toy-base", "toy-tuned"


def toy_models() -> list[AnalyticBackend]:
    """A flat 'base' and a sharper 'tuned' toy model over the same vocabulary."""
    return [
        AnalyticBackend(TOKENS, name=BASE, seed=1, sharpness=2.0),
        AnalyticBackend(TOKENS, name=TUNED, seed=2, sharpness=6.0),
    ]


@pytest.fixture
def models() -> list[AnalyticBackend]:
    return toy_models()


@pytest.fixture
def client(models: list[AnalyticBackend]) -> Iterator[TestClient]:
    with TestClient(create_app(models)) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a thread, started and stopped by the test."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "the test server did not stop"


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    """Start a server for an app (any number per test); every one is stopped at the end of the test."""
    started: list[LiveServer] = []

    def start(app: FastAPI | None = None, **options: Any) -> LiveServer:
        server = LiveServer(app or create_app(toy_models(), **options)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
