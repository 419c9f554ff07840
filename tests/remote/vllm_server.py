"""A real vLLM server (the CPU build in .venv-vllm) on 127.0.0.1, started and stopped by the tests.

`make test` creates .venv-vllm (vLLM pins its own torch and transformers, so it lives apart from .venv).
The server is a child of the test process: it gets SIGTERM when the test process dies (PR_SET_PDEATHSIG),
and the fixture stops its whole process group at the end, so no server outlives the tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
SERVED = "smollm2-135m-instruct"
ALIAS = "smol-alias"  # a second served name that is not a preset: it needs --tokenizer
READY_TIMEOUT = 420.0  # seconds; about 60-90 s on an idle 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class VLLMServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def spec(self) -> str:
        return f"{SERVED}@{self.base_url}"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """Kill the server and its engine process at once, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the engine process, if it outlived the server


def start(model_folder: Path, *extra: str) -> VLLMServer:
    """Start vLLM serving `model_folder` as smollm2-135m-instruct with whole distributions allowed, and
    wait until it answers /v1/models."""
    if not VLLM_PYTHON.is_file():
        raise RuntimeError(f"{VLLM_PYTHON} is missing: run `make test`, which creates .venv-vllm")
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="2", VLLM_CPU_OMP_THREADS_BIND="nobind", HF_HUB_OFFLINE="1")
    env.pop("MODESCOPE_API_KEY", None)
    env.pop("OPENAI_API_KEY", None)
    command = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        *("--model", str(model_folder), "--served-model-name", SERVED, ALIAS),
        *("--dtype", "float32", "--enforce-eager", "--max-logprobs", "-1", "--max-model-len", "2048"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *extra,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=_die_with_parent
        )
    server = VLLMServer(process, port, log)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited with code {process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/models", timeout=2).status_code in (200, 401):
                return server
        time.sleep(1.0)
    server.stop()
    raise RuntimeError(f"vLLM was not ready within {READY_TIMEOUT:g} s:\n{server.log_tail()}")


@contextlib.contextmanager
def running(model_folder: Path, *extra: str) -> Iterator[VLLMServer]:
    server = start(model_folder, *extra)
    try:
        yield server
    finally:
        server.stop()
