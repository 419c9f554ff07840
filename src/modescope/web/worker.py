"""One thread that runs every model call, fed by a bounded queue.

torch on a small CPU gains nothing from parallel forward passes (they would only fight over the same cores
and multiply peak memory), so calls run one at a time in submission order. The queue is bounded: a request
that finds it full is refused at once (the API answers 503) instead of waiting without limit, which keeps
memory and latency bounded under load.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = object()


class Busy(Exception):
    """The queue is full; the caller should try again later."""


class Worker:
    """Runs submitted callables one at a time in a daemon thread."""

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="modescope-worker", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Calls waiting in the queue (not counting the one running)."""
        return self._queue.qsize()

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Queue a call; raises Busy when the queue is full. Cancelling the future before the call starts
        skips it (a client that went away costs nothing)."""
        future: Future[T] = Future()
        try:
            self._queue.put_nowait((future, call))
        except queue.Full:
            raise Busy(f"the model worker is busy ({self.queue_size} requests waiting); try again shortly") from None
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # every failure travels to the request that asked
                future.set_exception(exc)
            else:
                future.set_result(result)

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the calls already queued; waits at most `timeout` seconds for the running one."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return  # the thread is a daemon: it goes with the process
        self._thread.join(timeout)
