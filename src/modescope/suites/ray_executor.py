"""Compute a suite's units on a Ray cluster: one worker (a Ray actor) per model, holding that model's weights.

Batches of a model go to its worker, a couple at a time so it never idles while the driver stores results;
results come back to the driver as each batch finishes (the driver alone writes the store). A model behind a
server holds no weights: its worker is a client that runs up to the entry's `max_concurrency` batches at once.

A worker that dies (killed, out of memory, a crashed process, a lost node) is replaced by a fresh one and the
batch it was computing is retried there, up to `max_attempts` times; a batch that raises an error of its own
(a probe or model error) fails at once, as it would again. Either way the other batches go on.

Workers import modescope themselves: on a cluster of several machines, install modescope (and the models'
files) on each node.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modescope.errors import ModescopeError
from modescope.models.safety import LoadPolicy
from modescope.suites import schema
from modescope.suites.runner import ModelPool
from modescope.suites.units import Batch, Executor, ExecutorEvents, UnitFailure, UnitResult, compute_batch

# Batches queued on a worker that holds weights: one computing, one waiting, so the worker starts the next
# batch while the driver stores the last one's results.
IN_FLIGHT = 2
# A model behind a server without max_concurrency: as many batches at once as load()'s default requests.
CLIENT_CONCURRENCY = 8
# A worker not started after this long waits for resources (GPUs, CPUs) that idle workers may hold.
START_GRACE_S = 10.0
# How long the driver waits for a dead worker's other batches to report before retrying them anyway.
DEAD_WORKER_WAIT_S = 30.0


class ModelWorker:
    """What runs inside a Ray actor: the runner's model pool for one model, and its batches.

    A plain class (ray.remote is applied by the executor), so importing this module needs no Ray."""

    def __init__(self, device: str, dtype: str, policy: LoadPolicy | None = None) -> None:
        self.pool = ModelPool(device, dtype, policy=policy or LoadPolicy())
        self.lock = threading.Lock()  # a client worker runs several batches on threads; load once

    def ping(self) -> bool:
        return True

    def compute(self, batch: Batch) -> tuple[list[UnitResult], list[str]]:
        """The batch's unit results, and the progress messages computing them gave."""
        with self.lock:
            backend = self.pool.view(batch.probe, batch.model)
        messages: list[str] = []
        return list(compute_batch(backend, batch, messages.append)), messages


@dataclass(eq=False)
class _Worker:
    """The executor's view of one model's worker and that model's batches in the current run."""

    entry: schema.ModelEntry
    client: bool  # a model behind a server
    window: int  # batches in flight at once
    actor: Any = None
    created: float = 0.0
    ready: Any = None  # ref of the ping sent at creation; None once it answered
    queue: deque[int] = field(default_factory=deque)  # batch indices waiting to be submitted
    in_flight: list[Any] = field(default_factory=list)  # refs, in submission order

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.in_flight)


@dataclass
class _Task:
    batch: int
    model: str
    order: int  # submission order, to tell which batch a dead sequential worker was computing


class RayExecutor(Executor):
    """Fans batches out over a Ray cluster, one actor per model.

    `address` None starts a local cluster (with `num_cpus` CPUs, default all), else joins the cluster there
    (`"auto"`, `"HOST:PORT"`, `"ray://HOST:PORT"`); a Ray already initialised in this process is used as it is
    and left running by `close()`. `device` and `dtype` are `modescope.load`'s, resolved on each worker; a model
    entry's `num_cpus` and `num_gpus` are what its worker reserves. Unset, a worker reserves no CPU and no GPU:
    it computes on one CPU thread (Ray sets OMP_NUM_THREADS to the CPUs reserved, at least 1) and sees every GPU
    of its node without holding any, so give a model on a GPU `num_gpus` and a model on CPUs `num_cpus`. A batch
    is tried on at most `max_attempts` workers before its units are reported failed.
    """

    worker_class: type[ModelWorker] = ModelWorker  # tests swap in a worker that crashes on demand

    def __init__(
        self,
        address: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_attempts: int = 3,
        num_cpus: int | None = None,
        policy: LoadPolicy | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ModescopeError(f"max_attempts must be at least 1 (got {max_attempts})")
        try:
            import ray
        except ImportError:
            raise ModescopeError(
                "running on Ray needs the ray package; install it with: pip install 'ray>=2.40'"
            ) from None
        self.ray: Any = ray
        self.address = address
        self.device = device
        self.dtype = dtype
        self.policy = policy or LoadPolicy()  # --trust-remote-code and --allow-pickle, for every worker
        self.max_attempts = max_attempts
        self.num_cpus = num_cpus
        self.started_ray = False  # whether close() shuts Ray down
        self.workers: dict[str, _Worker] = {}
        self.stats: dict[str, int] = {"workers_started": 0, "workers_lost": 0, "retries": 0}
        self._actor_class: Any = None
        self._connect()

    @property
    def actors(self) -> dict[str, Any]:
        """The live actor of each model, by model name."""
        return {name: w.actor for name, w in self.workers.items() if w.actor is not None}

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        import logging

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats prompt or report
        # Ray's own start-up notes (token authentication, the local instance) stay out of the CLI's output
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        if self.address is None:
            options |= {"num_cpus": self.num_cpus, "include_dashboard": False}
        try:
            ray.init(address=self.address, **options)
        except ConnectionError as exc:
            raise ModescopeError(f"cannot join the Ray cluster at {self.address}: {exc}") from None
        except KeyboardInterrupt:  # Ctrl-C while the cluster starts: stop what did start
            ray.shutdown()
            raise
        self.started_ray = True

    # -- running ------------------------------------------------------------------------------------------

    def run(self, batches: Sequence[Batch], events: ExecutorEvents) -> None:
        self._connect()
        batches = list(batches)
        run = _Run(self, batches, events)
        try:
            run.loop()
        except KeyboardInterrupt:
            run.cancel()
            self.close()
            raise
        except BaseException:
            run.cancel()
            raise

    def _worker(self, entry: schema.ModelEntry) -> _Worker:
        from modescope.models.remote import is_remote

        worker = self.workers.get(entry.name)
        if worker is None or worker.entry != entry:
            if worker is not None:
                self._kill(worker)
            client = is_remote(entry.load_name)
            window = (entry.max_concurrency or CLIENT_CONCURRENCY) if client else IN_FLIGHT
            worker = self.workers[entry.name] = _Worker(entry, client, window)
        return worker

    def _unplaceable(self, entry: schema.ModelEntry) -> str | None:
        """Why no node of the cluster can hold this model's worker, or None when one can (Ray would wait for
        such a node for ever; an autoscaling cluster's nodes to come are not counted)."""
        wanted = {"CPU": entry.num_cpus or 0, "GPU": entry.num_gpus or 0}
        if not any(wanted.values()):
            return None
        nodes = [node.get("Resources", {}) for node in self.ray.nodes() if node.get("Alive")]
        if any(all(res.get(kind, 0) >= amount for kind, amount in wanted.items()) for res in nodes):
            return None
        asked = " and ".join(f"{amount:g} {kind}s" for kind, amount in wanted.items() if amount)
        most = ", ".join(f"{res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs" for res in nodes) or "none"
        return (
            f"model '{entry.name}' asks for {asked} per Ray worker (num_cpus, num_gpus), and no node of the "
            f"cluster has that many (its nodes: {most}); lower them or add a node"
        )

    def _start(self, worker: _Worker) -> None:
        entry = worker.entry
        options: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0}
        if entry.num_cpus is not None:
            options["num_cpus"] = entry.num_cpus
        elif worker.client:
            options["num_cpus"] = 0  # it waits on the server; it should not keep a model worker off a CPU
        if entry.num_gpus is not None:
            options["num_gpus"] = entry.num_gpus
        if worker.client:
            options["max_concurrency"] = worker.window
        if self._actor_class is None:
            self._actor_class = self.ray.remote(self.worker_class)
        worker.actor = self._actor_class.options(**options).remote(self.device, self.dtype, self.policy)
        worker.ready = worker.actor.ping.remote()
        worker.created = time.monotonic()
        self.stats["workers_started"] += 1

    def _kill(self, worker: _Worker) -> None:
        if worker.actor is not None:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(worker.actor, no_restart=True)
        worker.actor = None
        worker.ready = None

    def close(self) -> None:
        """Kill the workers (releasing their models); shut Ray down if this executor started it."""
        for worker in self.workers.values():
            self._kill(worker)
        self.workers.clear()
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()
            self._actor_class = None
        self.started_ray = False


class _Run:
    """One call of `RayExecutor.run`: the batches' queues, the refs in flight, what was delivered."""

    def __init__(self, executor: RayExecutor, batches: list[Batch], events: ExecutorEvents) -> None:
        self.executor = executor
        self.ray = executor.ray
        self.batches = batches
        self.events = events
        self.tasks: dict[Any, _Task] = {}
        self.attempts = [0] * len(batches)
        self.settled: set[tuple[int, int]] = set()  # (batch, unit) delivered or failed
        self.order = 0
        self.workers: list[_Worker] = []
        for index, batch in enumerate(batches):
            worker = executor._worker(batch.model)
            if all(w is not worker for w in self.workers):
                worker.queue.clear()
                worker.in_flight.clear()
                self.workers.append(worker)
            worker.queue.append(index)
        self.total = {w.entry.name: sum(len(batches[i].units) for i in w.queue) for w in self.workers}
        self.done = dict.fromkeys(self.total, 0)

    def loop(self) -> None:
        while True:
            self.submit()
            if not self.tasks:
                break
            ready, _ = self.ray.wait(list(self.tasks), num_returns=1, timeout=1.0)
            if not ready:
                self.free_idle()
                continue
            self.collect(ready[0])

    def submit(self) -> None:
        for worker in self.workers:
            while worker.queue and len(worker.in_flight) < worker.window:
                if worker.actor is None:
                    problem = self.executor._unplaceable(worker.entry)
                    if problem is not None:
                        while worker.queue:
                            self.fail(worker.queue.popleft(), problem)
                        break
                    self.executor._start(worker)
                    self.events.progress(f"{worker.entry.name}: starting a Ray worker")
                index = worker.queue.popleft()
                ref = worker.actor.compute.remote(self.batches[index])
                worker.in_flight.append(ref)
                self.tasks[ref] = _Task(index, worker.entry.name, self.order)
                self.order += 1

    def collect(self, ref: Any) -> None:
        task = self.tasks.pop(ref)
        worker = self.executor.workers[task.model]
        worker.in_flight.remove(ref)
        outcome = self.outcome(ref)
        if isinstance(outcome, _Lost):
            self.lost_worker(worker, task, ref, outcome)
            return
        self.settle(task, outcome)
        if not worker.busy:
            self.free_idle()

    def outcome(self, ref: Any) -> _Outcome:
        ray = self.ray
        try:
            result: tuple[list[UnitResult], list[str]] = ray.get(ref)
            return result
        except ray.exceptions.RayTaskError as exc:  # the batch itself raised: it would again
            return _Failed(_task_message(exc))
        except ray.exceptions.TaskCancelledError as exc:
            return _Lost(f"cancelled: {exc}")
        except ray.exceptions.RayError as exc:  # the worker died, or its result was lost with its node
            return _Lost(_first_line(exc))

    def settle(self, task: _Task, outcome: tuple[list[UnitResult], list[str]] | _Failed) -> None:
        self.attempts[task.batch] += 1
        if isinstance(outcome, _Failed):
            self.fail(task.batch, outcome.error)
            return
        results, messages = outcome
        for message in messages:
            self.events.progress(message)
        for position, result in enumerate(results):
            if (task.batch, position) in self.settled:
                continue
            self.settled.add((task.batch, position))
            self.done[task.model] += 1
            self.events.deliver(result)
        self.events.progress(f"{task.model}: {self.done[task.model]}/{self.total[task.model]} prompts")

    def fail(self, index: int, error: str) -> None:
        for position, unit in enumerate(self.batches[index].units):
            if (index, position) in self.settled:
                continue
            self.settled.add((index, position))
            self.events.fail(UnitFailure(unit, error, self.attempts[index]))

    def lost_worker(self, worker: _Worker, task: _Task, ref: Any, lost: _Lost) -> None:
        """The worker died: hear from all of its batches, keep what finished, retry the rest on a fresh one.

        A worker computes one batch at a time (a client several), so only the batch it was computing (the
        oldest one that did not finish) is charged an attempt; the ones queued behind it are resubmitted free."""
        name = worker.entry.name
        self.executor._kill(worker)
        self.executor.stats["workers_lost"] += 1
        siblings = list(worker.in_flight)
        worker.in_flight.clear()
        if siblings:
            self.ray.wait(siblings, num_returns=len(siblings), timeout=DEAD_WORKER_WAIT_S)
        dead: list[tuple[_Task, _Outcome]] = [(task, lost)]
        for sibling in siblings:
            sibling_task = self.tasks.pop(sibling)
            ready, _ = self.ray.wait([sibling], timeout=0)
            outcome = self.outcome(sibling) if ready else _Lost("no answer from the dead worker")
            dead.append((sibling_task, outcome))
        retry: list[int] = []
        charged = False
        for dead_task, outcome in sorted(dead, key=lambda pair: pair[0].order):
            if not isinstance(outcome, _Lost):
                self.settle(dead_task, outcome)
                continue
            if worker.client or not charged:
                charged = True
                self.attempts[dead_task.batch] += 1
                if self.attempts[dead_task.batch] >= self.executor.max_attempts:
                    times = self.attempts[dead_task.batch]
                    self.fail(
                        dead_task.batch,
                        f"the Ray worker of model '{name}' died {times} time{'s' * (times > 1)} computing this "
                        f"batch (last: {outcome.error})",
                    )
                    continue
            retry.append(dead_task.batch)
        self.executor.stats["retries"] += len(retry)
        worker.queue.extendleft(reversed(retry))
        self.events.progress(f"{name}: the Ray worker died ({lost.error}); retrying its batches on a fresh one")

    def free_idle(self) -> None:
        """Kill the workers with nothing left to do in this run when a worker with work has not started after
        START_GRACE_S: it may be waiting for the GPUs or CPUs they hold."""
        idle = [w for w in self.executor.workers.values() if w.actor is not None and not w.busy]
        waiting = [w for w in self.workers if w.busy and w.actor is not None and w.ready is not None]
        if not idle or not waiting:
            return
        answered, _ = self.ray.wait([w.ready for w in waiting], num_returns=len(waiting), timeout=0)
        now = time.monotonic()
        late = False
        for w in waiting:
            if w.ready in answered:
                w.ready = None
            elif now - w.created > START_GRACE_S:
                late = True
        if late:
            for w in idle:
                self.executor._kill(w)
                self.events.progress(f"{w.entry.name}: Ray worker released for a model waiting to start")

    def cancel(self) -> None:
        for ref in self.tasks:
            with contextlib.suppress(Exception):  # an actor task already finished, or its actor is gone
                self.ray.cancel(ref)
        self.tasks.clear()


@dataclass
class _Failed:
    error: str


@dataclass
class _Lost:
    error: str


_Outcome = tuple[list[UnitResult], list[str]] | _Failed | _Lost


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _task_message(exc: Any) -> str:
    """The message of the exception a batch raised on its worker (a ModescopeError says what to change)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return str(cause) or type(cause).__name__
    return _first_line(exc)
