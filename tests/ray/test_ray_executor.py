"""RayExecutor against LocalExecutor on toy models: the same units give the same results, a dead worker's
batch is retried on a fresh one (each unit delivered once), and a batch that raises fails on its own.

The workers here are `HookedWorker`s: a unit's metadata can make its batch sleep, raise, or kill its worker
process, so the failures happen where the test says.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from modescope.errors import ModescopeError
from modescope.store import ProbeOutput, UnitRecord
from modescope.suites import schema
from modescope.suites.ray_executor import ModelWorker, RayExecutor
from modescope.suites.runner import ModelPool
from modescope.suites.units import Batch, ExecutorEvents, LocalExecutor, UnitFailure, UnitResult

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]

A = schema.ModelEntry(name="A", model="toy:alpha")
B = schema.ModelEntry(name="B", model="toy:beta")
PROMPTS = ["Pick a number:", "Number:", "The answer is"]
DISTRIBUTION = schema.DistributionProbe(name="d", kind="distribution", prompts=PROMPTS, integers=(1, 12))
SAMPLE = schema.SampleProbe(name="s", kind="sample", prompts=PROMPTS, n=4, max_tokens=6)


class HookedWorker(ModelWorker):
    """A model worker whose units' metadata say what goes wrong: `sleep` seconds first, `raise` a
    ModescopeError, or `crash` the worker process. It reports when it computed each batch (`span START END`)."""

    def compute(self, batch: Batch) -> tuple[list[UnitResult], list[str]]:
        started = time.time()
        for unit in batch.units:
            time.sleep(unit.meta.get("sleep", 0))
            if "raise" in unit.meta:
                raise ModescopeError(unit.meta["raise"])
            if unit.meta.get("crash"):
                os._exit(1)
        results, messages = super().compute(batch)
        return results, [*messages, f"span {started} {time.time()}"]


class Hooked(RayExecutor):
    worker_class = HookedWorker


def units(probe: Any, model: schema.ModelEntry, meta: dict[int, dict[str, Any]] | None = None) -> list[UnitRecord]:
    meta = meta or {}
    return [
        UnitRecord(probe.name, f"p{k}", model.name, k, text, meta.get(k, {}), f"{probe.name}/{model.name}/{k}")
        for k, text in enumerate(probe.prompts)
    ]


def batches_of(
    probe: Any, *models: schema.ModelEntry, meta: dict[str, dict[int, dict[str, Any]]] | None = None
) -> list[Batch]:
    """One batch per unit (not the kind's own batch size), so a test can aim at one unit's batch."""
    return [Batch(probe, m, [u]) for m in models for u in units(probe, m, (meta or {}).get(m.name))]


class Recorder:
    def __init__(self) -> None:
        self.delivered: list[UnitResult] = []
        self.failed: list[UnitFailure] = []
        self.messages: list[str] = []

    def events(self, deliver: Any = None) -> ExecutorEvents:
        def on_deliver(result: UnitResult) -> None:
            self.delivered.append(result)
            if deliver is not None:
                deliver(result)

        return ExecutorEvents(on_deliver, self.failed.append, self.messages.append)

    def outputs(self) -> dict[tuple[str, str], tuple[Any, Any]]:
        keys = [(r.unit.model, r.unit.prompt_id) for r in self.delivered]
        assert len(keys) == len(set(keys)), f"a unit was delivered twice: {sorted(keys)}"
        return {(r.unit.model, r.unit.prompt_id): comparable(r.output) for r in self.delivered}


def comparable(output: ProbeOutput) -> tuple[Any, Any]:
    """What must not depend on where a unit ran: its metrics and payload, less timings (and with NaN equal to
    NaN: one that travelled from a worker is another object, and NaN == NaN only holds for the same object)."""
    return output.metrics, plain(output.payload)


def plain(value: Any, drop: tuple[str, ...] = ("seconds",)) -> Any:
    if isinstance(value, dict):
        return {k: plain(v, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, list | tuple):
        return [plain(v, drop) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


LOCAL: dict[str, dict[tuple[str, str], tuple[Any, Any]]] = {}


def local(probe: Any, *models: schema.ModelEntry) -> dict[tuple[str, str], tuple[Any, Any]]:
    """The probe's units computed in this process, once per module (metadata changes nothing but the hooks).

    On one thread, as a worker that reserves no CPUs computes (Ray sets its OMP_NUM_THREADS=1): float sums
    over another number of threads round differently in the last bits."""
    key = repr((probe, models))
    if key not in LOCAL:
        recorder = Recorder()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            LocalExecutor(ModelPool("cpu")).run(batches_of(probe, *models), recorder.events())
        finally:
            torch.set_num_threads(threads)
        LOCAL[key] = recorder.outputs()
    return dict(LOCAL[key])


@pytest.fixture(scope="module")
def executor() -> Iterator[RayExecutor]:
    """One executor for the module, so its workers stay warm from test to test (a cold one takes seconds)."""
    executor = Hooked(device="cpu")
    yield executor
    executor.close()


def on_ray(executor: RayExecutor, batches: list[Batch], deliver: Any = None) -> Recorder:
    recorder = Recorder()
    executor.run(batches, recorder.events(deliver))
    return recorder


@pytest.mark.parametrize("probe", [DISTRIBUTION, SAMPLE], ids=["distribution", "sample"])
def test_results_match_local(executor: RayExecutor, probe: Any) -> None:
    recorder = on_ray(executor, batches_of(probe, A, B))
    assert recorder.failed == []
    assert recorder.outputs() == local(probe, A, B)
    assert len(recorder.outputs()) == 6
    assert "A: 3/3 prompts" in recorder.messages


def test_error_in_a_batch_fails_its_units_at_once(executor: RayExecutor) -> None:
    lost = executor.stats["workers_lost"]
    batches = batches_of(DISTRIBUTION, A, B, meta={"B": {2: {"raise": "no such thing; pick another"}}})
    recorder = on_ray(executor, batches)
    assert [(f.unit.model, f.unit.prompt_id, f.error, f.attempts) for f in recorder.failed] == [
        ("B", "p2", "no such thing; pick another", 1)
    ]
    expected = local(DISTRIBUTION, A, B)
    del expected[("B", "p2")]
    assert recorder.outputs() == expected
    assert executor.stats["workers_lost"] == lost


def test_killed_worker_is_replaced_and_its_batch_retried(executor: RayExecutor) -> None:
    # the second and third prompts take a while, so the worker is computing one when it is killed
    batches = batches_of(DISTRIBUTION, A, meta={"A": {1: {"sleep": 1.5}, 2: {"sleep": 1.5}}})
    lost, started = executor.stats["workers_lost"], executor.stats["workers_started"]
    killed: list[Any] = []

    def kill_after_first(result: UnitResult) -> None:
        if not killed:
            killed.append(executor.actors["A"])
            executor.ray.kill(killed[0])

    recorder = on_ray(executor, batches, kill_after_first)
    assert recorder.failed == []
    assert recorder.outputs() == local(DISTRIBUTION, A)
    assert executor.stats["workers_lost"] == lost + 1, recorder.messages
    assert executor.stats["workers_started"] == started + 1
    assert executor.actors["A"] != killed[0]
    assert any("A: the Ray worker died" in m for m in recorder.messages)


def test_worker_deaths_retry_then_fail_only_their_batch(executor: RayExecutor) -> None:
    executor.max_attempts = 2
    lost = executor.stats["workers_lost"]
    try:
        recorder = on_ray(executor, batches_of(DISTRIBUTION, A, B, meta={"A": {1: {"crash": True}}}))
    finally:
        executor.max_attempts = 3
    # p1 killed its worker twice, the most allowed; p2, queued behind it, was not charged for those deaths
    assert [(f.unit.model, f.unit.prompt_id, f.attempts) for f in recorder.failed] == [("A", "p1", 2)]
    assert "died 2 times" in recorder.failed[0].error
    expected = local(DISTRIBUTION, A, B)
    del expected[("A", "p1")]
    assert recorder.outputs() == expected
    assert executor.stats["workers_lost"] == lost + 2, recorder.messages


def test_model_no_node_can_hold_fails_without_waiting(executor: RayExecutor) -> None:
    big = schema.ModelEntry(name="big", model="toy:alpha", num_gpus=1)  # the test cluster has no GPU
    started = executor.stats["workers_started"]
    recorder = on_ray(executor, batches_of(DISTRIBUTION, big, A))
    assert [(f.unit.model, f.attempts) for f in recorder.failed] == [("big", 0)] * 3
    assert "asks for 1 GPUs per Ray worker" in recorder.failed[0].error
    assert recorder.outputs() == local(DISTRIBUTION, A)
    assert executor.stats["workers_started"] == started


def test_interrupt_stops_the_workers_and_reraises(executor: RayExecutor) -> None:
    """Last: it closes the module's executor."""
    batches = batches_of(DISTRIBUTION, A, meta={"A": {1: {"sleep": 60}}})

    def interrupt(result: UnitResult) -> None:
        raise KeyboardInterrupt

    recorder = Recorder()
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        executor.run(batches, recorder.events(interrupt))
    assert time.perf_counter() - started < 30
    assert executor.actors == {}
    assert executor.ray.is_initialized()  # not this executor's to shut down
    assert len(recorder.delivered) == 1


def without_calls(outputs: dict[tuple[str, str], tuple[Any, Any]]) -> Any:
    return {key: plain(output, ("forward_calls",)) for key, output in outputs.items()}


def test_model_behind_a_server_runs_batches_at_once(server: SimpleNamespace) -> None:
    """A model behind a server gets a client worker that computes up to max_concurrency batches at a time."""
    served = schema.ModelEntry(name="served", model=server.spec, max_concurrency=3)
    batches = batches_of(DISTRIBUTION, served, meta={"served": {k: {"sleep": 2} for k in range(3)}})
    executor = Hooked(device="cpu")
    try:
        recorder = on_ray(executor, batches)
    finally:
        executor.close()
    assert recorder.failed == []
    # forward_calls counts the backend's calls while the probe ran, which batches running at once share
    assert without_calls(recorder.outputs()) == without_calls(local(DISTRIBUTION, served))
    spans = [tuple(map(float, m.split()[1:])) for m in recorder.messages if m.startswith("span ")]
    assert len(spans) == 3
    assert max(start for start, _ in spans) < min(end for _, end in spans), f"one batch at a time: {spans}"


@pytest.mark.integration
def test_real_model_samples_match_local() -> None:
    smollm = schema.ModelEntry(name="smollm", model="smollm2-135m-instruct")
    probe = schema.SampleProbe(
        name="s", kind="sample", prompts=["Once upon a time", "The capital of France is"], n=3, max_tokens=8
    )
    executor = RayExecutor(device="cpu")
    try:
        recorder = on_ray(executor, batches_of(probe, smollm))
    finally:
        executor.close()
    assert recorder.failed == []
    assert recorder.outputs() == local(probe, smollm)
