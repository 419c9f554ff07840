"""Load test of the web playground: 50 concurrent generate requests against a local server.

It starts `modescope serve`'s app in a child process (uvicorn on 127.0.0.1, a free port) with the two default
models (or `--toy` models, for a quick run), then sends `--waves` waves of `--concurrency` concurrent
POST /api/generate requests (two models, n completions, max tokens each). Every request must end, within
`--timeout` seconds, with either a 200 and completions, or a 503 and a JSON `{"error": ...}` (the worker's
queue is bounded, so a burst is refused at once rather than queued without limit). The server's resident
memory is sampled from /proc every 50 ms; "bounded" means the peak of the last wave is within
`--memory-slack` MiB of the first wave's peak (memory does not grow with the number of requests served).

Run it with `nice -n 10 .venv/bin/python benchmarks/bench_serve.py [--toy] [--waves N] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

SERVER = r"""
import string, sys, uvicorn
from modescope.web.app import create_app
if sys.argv[2] == "toy":
    from modescope.models.analytic import AnalyticBackend
    tokens = [*string.printable[:95], "\n", " the", " cat"]
    models = [AnalyticBackend(tokens, name="toy-base", seed=1), AnalyticBackend(tokens, name="toy-tuned", seed=2)]
else:
    from modescope.models import load
    models = [load(name, device="cpu") for name in sys.argv[2].split(",")]
uvicorn.run(create_app(models), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
PROMPT = "Q: Tell me a short story about a cat.\nA:"


@dataclass
class Wave:
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "503", anything else is a failure
    ok_s: list[float] = field(default_factory=list)
    refused_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mib: float = 0.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one(client: httpx.AsyncClient, body: dict[str, Any], timeout: float, wave: Wave) -> None:
    started = time.perf_counter()
    try:
        response = await client.post("/api/generate", json=body, timeout=timeout)
    except httpx.TimeoutException:
        wave.failures.append(f"no answer within {timeout} s")
        return
    elapsed = time.perf_counter() - started
    key = str(response.status_code)
    wave.statuses[key] = wave.statuses.get(key, 0) + 1
    if response.status_code == 200 and len(response.json()["results"]) == len(body["models"]):
        wave.ok_s.append(elapsed)
    elif response.status_code == 503 and "error" in response.json():
        wave.refused_s.append(elapsed)
    else:
        wave.failures.append(f"{response.status_code}: {response.text[:200]}")


async def run_wave(url: str, body: dict[str, Any], concurrency: int, timeout: float, pid: int) -> Wave:
    wave = Wave()
    peak = [rss_mib(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        await asyncio.gather(*(one(client, body, timeout, wave) for _ in range(concurrency)))
    wave.seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    wave.peak_rss_mib = peak[0]
    return wave


def seconds(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", action="store_true", help="toy models instead of the two default models")
    parser.add_argument("--models", default="gemma-3-270m,smollm2-135m-instruct")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take before it hangs")
    parser.add_argument("--memory-slack", type=float, default=150.0, help="MiB the peak may grow from wave 1")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    which = "toy" if args.toy else args.models
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), which], env=env)
    try:
        deadline = time.monotonic() + 300
        models: list[str] = []
        while not models:
            if server.poll() is not None or time.monotonic() > deadline:
                print("the server did not start", file=sys.stderr)
                return 1
            try:
                models = [m["name"] for m in httpx.get(url + "/api/models", timeout=2).json()["models"]][:2]
            except httpx.HTTPError:
                time.sleep(0.5)
        idle = rss_mib(server.pid)
        body = {"models": models, "prompt": {"text": PROMPT}, "n": args.n, "max_tokens": args.max_tokens}
        body["sampler"] = {"temperature": 1.0}
        print(f"server up: {', '.join(models)}; idle RSS {idle:.0f} MiB")
        print(
            f"{args.waves} waves of {args.concurrency} concurrent generate requests (n={args.n}, {args.max_tokens} tokens)"
        )
        waves = []
        for k in range(args.waves):
            wave = asyncio.run(run_wave(url, body, args.concurrency, args.timeout, server.pid))
            waves.append(wave)
            print(
                f"wave {k + 1}: {wave.seconds:.1f} s; 200: {len(wave.ok_s)} ({seconds(wave.ok_s)}); "
                f"503: {len(wave.refused_s)} ({seconds(wave.refused_s)}); failures: {len(wave.failures)}; "
                f"peak RSS {wave.peak_rss_mib:.0f} MiB"
            )
            for failure in wave.failures[:5]:
                print(f"  failure: {failure}")
        after = rss_mib(server.pid)
        growth = waves[-1].peak_rss_mib - waves[0].peak_rss_mib
        bounded = growth <= args.memory_slack
        answered = all(not w.failures and len(w.ok_s) + len(w.refused_s) == args.concurrency for w in waves)
        print(
            f"RSS: idle {idle:.0f} MiB, after {after:.0f} MiB; peak growth from wave 1 to {args.waves}: {growth:+.0f} MiB"
        )
        print(
            f"every request answered 200 or 503 JSON in time: {'yes' if answered else 'NO'}; memory bounded: "
            f"{'yes' if bounded else 'NO'}"
        )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            report = {
                "models": models,
                "idle_rss_mib": idle,
                "after_rss_mib": after,
                "args": vars(args) | {"json": str(args.json)},
            }
            report["waves"] = [asdict(w) for w in waves]
            args.json.write_text(json.dumps(report, indent=1))
        return 0 if answered and bounded else 1
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
