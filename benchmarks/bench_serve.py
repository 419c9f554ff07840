"""Load test of the web playground: one Generate click, and 50 concurrent generate requests, against a local
server run three ways in the same run: as before batching (every request and model decoded alone, one at a time,
8 requests may wait: "baseline"), the same unbatched worker with the queue the batched server has (64 may wait,
so every request of the burst is answered: "queued"), and as served now (requests batched per model, decoded in
turn, 64 may wait: "batched").

It starts `modescope serve`'s app in a child process (uvicorn on 127.0.0.1, a free port) with the two default
models (or `--toy` models, for a quick run) and measures, for each way:
- one Generate click (both models, `--click-n` completions, `--click-tokens` tokens): the time to the answer
  and, streamed (POST /api/generate/stream), the time to the first token shown and to each model's first token;
- `--waves` waves of `--concurrency` concurrent POST /api/generate requests (both models, n completions, max
  tokens; each request its own seed, as different users would send): how many answered 200 and how many 503
  (the queue is bounded, so a burst beyond it is refused at once), the median and the last latency, and the
  server's peak resident memory (sampled from /proc every 50 ms). Every request must end, within `--timeout`
  seconds, with a 200 and completions or a 503 and a JSON `{"error": ...}`; "bounded" means the peak of the
  last wave is within `--memory-slack` MiB of the first wave's.
The report ends with the ratios of the batched server to the two others. The median latency is reported both
ways because they answer different questions: against "baseline", the median covers only the requests it let in
(it refuses most of a burst with 503, and a refused request has no latency), so the server that refuses most
looks fastest; against "queued", both servers answer every request and the ratio is batching's own effect.

It also measures, in a child process after the servers stopped, the least time any server on this machine
needs for the median of the burst: half its requests (the first 25 of 50, their seeds and options) decoded
in-process in one batch per model, no HTTP, best of 2 after a warm-up. A burst's median request cannot be
answered before half the burst's work is done, so a median below that figure is out of reach here.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

SERVER = r"""
import string, sys, uvicorn
from modescope.web.app import create_app
from modescope.web.schemas import Limits
if sys.argv[2] == "toy":
    from modescope.models.analytic import AnalyticBackend
    tokens = [*string.printable[:95], "\n", " the", " cat"]
    models = [AnalyticBackend(tokens, name="toy-base", seed=1), AnalyticBackend(tokens, name="toy-tuned", seed=2)]
else:
    from modescope.models import load
    models = [load(name, device="cpu") for name in sys.argv[2].split(",")]
batching = sys.argv[3] == "batched"
limits = Limits(queue_size=8) if sys.argv[3] == "baseline" else Limits()  # 8: the queue served before batching
uvicorn.run(create_app(models, limits=limits, batching=batching), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning")
"""
HALF = r"""
import sys, time
from modescope.engine.decode import DecodeRequest, decode_requests
from modescope.engine.samplers import SamplerSettings
from modescope.models import load
names, prompt = sys.argv[1].split(","), sys.argv[5]
requests, n, tokens = (int(a) for a in sys.argv[2:5])
models = [load(name, device="cpu") for name in names]
settings = SamplerSettings.make(temperature=1.0)
def run():
    start = time.perf_counter()
    for backend in models:  # the work of the batches the worker steps in turn, one after the other
        ids = backend.prompt_ids(prompt)
        batch = [DecodeRequest(ids, n, tokens, sampler=settings, top_k_alternatives=10, seed=k) for k in range(requests)]
        decode_requests(backend, batch)
    return time.perf_counter() - start
run()
print(min(run() for _ in range(2)))
"""
PROMPT = "Q: Tell me a short story about a cat.\nA:"
WAYS = ("baseline", "queued", "batched")


@dataclass
class Wave:
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "503", anything else is a failure
    ok_s: list[float] = field(default_factory=list)
    refused_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mib: float = 0.0


@dataclass
class Click:
    """One Generate click: the JSON answer's time, and the streamed answer's first tokens and end."""

    answer_s: float = 0.0  # POST /api/generate
    first_token_s: float = 0.0  # POST /api/generate/stream: the first token shown
    first_token_by_model_s: dict[str, float] = field(default_factory=dict)
    streamed_answer_s: float = 0.0
    same_answer: bool = False  # the stream's result equals the JSON answer (the same seed)


@dataclass
class Way:
    name: str
    idle_rss_mib: float = 0.0
    after_rss_mib: float = 0.0
    click: Click = field(default_factory=Click)
    waves: list[Wave] = field(default_factory=list)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(which: str, way: str) -> Iterator[tuple[str, int, list[str]]]:
    """A server in a child process: its URL, its pid and the first two model names, once it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), which, way], env=env)
    try:
        deadline = time.monotonic() + 300
        models: list[str] = []
        while not models:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            try:
                models = [m["name"] for m in httpx.get(url + "/api/models", timeout=2).json()["models"]][:2]
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url, server.pid, models
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


# --- one click ------------------------------------------------------------------------------------------------


def click(url: str, body: dict[str, Any], timeout: float) -> Click:
    """The JSON answer's time, then the same request streamed: when its first tokens came, and its end."""
    measured = Click()
    with httpx.Client(base_url=url, timeout=timeout) as client:
        started = time.perf_counter()
        answer = client.post("/api/generate", json=body).json()
        measured.answer_s = time.perf_counter() - started
        started = time.perf_counter()
        with client.stream("POST", "/api/generate/stream", json=body) as response:
            kind, result = "", None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "progress":
                    model = json.loads(line[6:])["model"]
                    measured.first_token_by_model_s.setdefault(model, time.perf_counter() - started)
                elif line.startswith("data: ") and kind in ("result", "error"):
                    result = json.loads(line[6:])
        measured.streamed_answer_s = time.perf_counter() - started
    measured.first_token_s = min(measured.first_token_by_model_s.values(), default=float("nan"))
    measured.same_answer = result == answer
    return measured


# --- concurrent requests --------------------------------------------------------------------------------------


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
        bodies = [body | {"seed": k} for k in range(concurrency)]  # different users, different samples
        await asyncio.gather(*(one(client, b, timeout, wave) for b in bodies))
    wave.seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    wave.peak_rss_mib = peak[0]
    return wave


# --- the report -----------------------------------------------------------------------------------------------


def seconds(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(args: argparse.Namespace, way_name: str) -> Way:
    which = "toy" if args.toy else args.models
    way = Way(way_name)
    with serving(which, way_name) as (url, pid, models):
        way.idle_rss_mib = rss_mib(pid)
        print(f"[{way_name}] server up: {', '.join(models)}; idle RSS {way.idle_rss_mib:.0f} MiB", flush=True)
        body = {"models": models, "prompt": {"text": PROMPT}, "sampler": {"temperature": 1.0}, "seed": 0}
        way.click = click(url, body | {"n": args.click_n, "max_tokens": args.click_tokens}, args.timeout)
        c = way.click
        firsts = ", ".join(f"{m} {s:.2f} s" for m, s in c.first_token_by_model_s.items())
        print(
            f"[{way_name}] one click (n={args.click_n}, {args.click_tokens} tokens): JSON answer {c.answer_s:.2f} s; "
            f"streamed: first token {c.first_token_s:.2f} s ({firsts}), answer {c.streamed_answer_s:.2f} s; "
            f"stream's result equals the JSON answer: {'yes' if c.same_answer else 'NO'}",
            flush=True,
        )
        body |= {"n": args.n, "max_tokens": args.max_tokens}
        waves = args.waves if way_name == "batched" else args.baseline_waves if way_name == "baseline" else 1
        for k in range(waves):
            wave = asyncio.run(run_wave(url, body, args.concurrency, args.timeout, pid))
            way.waves.append(wave)
            print(
                f"[{way_name}] wave {k + 1} of {args.concurrency}: {wave.seconds:.1f} s; 200: {len(wave.ok_s)} "
                f"({seconds(wave.ok_s)}); 503: {len(wave.refused_s)} ({seconds(wave.refused_s)}); "
                f"failures: {len(wave.failures)}; peak RSS {wave.peak_rss_mib:.0f} MiB",
                flush=True,
            )
            for failure in wave.failures[:5]:
                print(f"  failure: {failure}")
        way.after_rss_mib = rss_mib(pid)
    return way


def half_burst_s(args: argparse.Namespace) -> float:
    """Seconds the engine takes, in-process, for the first half of a burst (see the module's text)."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    half = str((args.concurrency + 1) // 2)
    command = [sys.executable, "-c", HALF, args.models, half, str(args.n), str(args.max_tokens), PROMPT]
    found = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=args.timeout)
    return float(found.stdout.split()[-1])


def verdict(args: argparse.Namespace, baseline: Way, queued: Way, batched: Way, half_s: float | None) -> bool:
    """Print the comparison; whether every request was answered in time and memory stayed bounded."""
    answered = all(
        not w.failures and len(w.ok_s) + len(w.refused_s) == args.concurrency
        for w in [*baseline.waves, *queued.waves, *batched.waves]
    )
    growth = batched.waves[-1].peak_rss_mib - batched.waves[0].peak_rss_mib
    bounded = growth <= args.memory_slack
    old, new = median(baseline.waves[0].ok_s), median([s for w in batched.waves for s in w.ok_s])
    all_ok = all(len(w.ok_s) == args.concurrency for w in batched.waves)
    peak_old = max(w.peak_rss_mib for w in baseline.waves)
    peak_new = max(w.peak_rss_mib for w in batched.waves)
    print(
        f"one click: first token after {batched.click.first_token_s:.2f} s, answer after "
        f"{batched.click.streamed_answer_s:.2f} s (before: nothing shown until the answer, "
        f"{baseline.click.answer_s:.2f} s)"
    )
    print(
        f"{args.concurrency} concurrent requests: baseline {len(baseline.waves[0].ok_s)} answered 200 (median "
        f"{old:.2f} s), batched {'all' if all_ok else 'NOT all'} answered 200 in every wave (median {new:.2f} s); "
        f"median ratio {new / old:.2f} (batched / baseline); peak RSS {peak_old:.0f} -> {peak_new:.0f} MiB"
    )
    if half_s is not None:
        print(
            f"the least median this machine allows: half the burst ({(args.concurrency + 1) // 2} requests) takes "
            f"{half_s:.2f} s in-process, batched; a third of the baseline's median is {old / 3:.2f} s"
            f"{' (out of reach here)' if half_s > old / 3 else ''}; the batched median is {new / half_s:.2f}x it"
        )
    alone = median(queued.waves[0].ok_s)
    print(
        f"{args.concurrency} concurrent requests, every one let in: unbatched {len(queued.waves[0].ok_s)} answered 200 "
        f"(median {alone:.2f} s, last {max(queued.waves[0].ok_s, default=float('nan')):.2f} s), batched median "
        f"{new:.2f} s; median ratio {new / alone:.2f} (batched / queued)"
    )
    print(
        f"batched RSS: idle {batched.idle_rss_mib:.0f} MiB, after {batched.after_rss_mib:.0f} MiB; peak growth "
        f"from wave 1 to {len(batched.waves)}: {growth:+.0f} MiB"
    )
    print(
        f"every request answered 200 or 503 JSON in time: {'yes' if answered else 'NO'}; memory bounded: "
        f"{'yes' if bounded else 'NO'}"
    )
    return answered and bounded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", action="store_true", help="toy models instead of the two default models")
    parser.add_argument("--models", default="gemma-3-270m,smollm2-135m-instruct")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--waves", type=int, default=2, help="waves against the batched server")
    parser.add_argument("--baseline-waves", type=int, default=1, help="waves against the baseline server")
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--click-n", type=int, default=4)
    parser.add_argument("--click-tokens", type=int, default=28)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take before it hangs")
    parser.add_argument("--memory-slack", type=float, default=150.0, help="MiB the peak may grow from wave 1")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    ways = [measure(args, name) for name in WAYS]
    half_s = None if args.toy else half_burst_s(args)
    ok = verdict(args, *ways, half_s)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"args": vars(args) | {"json": str(args.json)}, "ways": [asdict(w) for w in ways]}
        report["half_burst_s"] = half_s
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
