"""One thread that runs every model call, fed by a bounded queue; generate requests are batched.

torch on a small CPU gains nothing from parallel forward passes (they would only fight over the same cores
and multiply peak memory), so one thread makes every forward pass. Long calls run one at a time in submission
order. Generate requests come as pieces, one per model (`batching.py`): pieces waiting for the same model
decode as one batch, and the batches of different models take turns step by step, so one thread serves many
requests at once. The queue is bounded: a request that finds it full is refused at once (the API answers 503)
instead of waiting without limit, which keeps memory and latency bounded under load.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TypeVar

from modescope.web.batching import Call, Entry, Piece, Running, Ticket, next_batch, start_batch

T = TypeVar("T")


class Busy(Exception):
    """The queue is full; the caller should try again later."""


class Worker:
    """Runs submitted calls one at a time, and decodes submitted pieces in batches, in a daemon thread.

    `queue_size` requests may wait (a request waits until the worker starts any part of it). A batch holds at
    most `max_batch_rows` rows, and at most `max_running` batches (of different models) decode in turn: memory
    stays within about max_running x max_batch_rows float64 distributions, however many requests wait. Without
    `batching`, every piece decodes alone and one at a time, as calls do (the baseline of bench_serve).

    An idle worker that receives a piece waits until no other came for `linger` seconds (at most `max_linger`
    after the first) before it starts: requests sent together (a burst, the models of one click) arrive over a
    few milliseconds, and a batch started on the first alone would keep the others waiting for all of it."""

    def __init__(
        self,
        queue_size: int,
        max_batch_rows: int = 64,
        max_running: int = 4,
        batching: bool = True,
        linger: float = 0.02,
        max_linger: float = 0.2,
    ) -> None:
        self.queue_size = queue_size
        self.max_batch_rows = max_batch_rows
        self.max_running = max_running if batching else 1
        self.batching = batching
        self.linger, self.max_linger = (linger, max_linger) if batching else (0.0, 0.0)
        self._queue: deque[Entry] = deque()
        self._changed = threading.Condition()
        self._closing = False
        self._last_queued = 0.0
        self._thread = threading.Thread(target=self._run, name="modescope-worker", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Requests waiting in the queue (not counting those the worker started)."""
        with self._changed:
            return self._waiting()

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Queue a call; raises Busy when the queue is full. Cancelling the future before the call starts
        skips it (a client that went away costs nothing)."""
        entry = Call(call)
        self._admit([entry])
        future: Future[T] = entry.future
        return future

    def submit_pieces(self, pieces: Sequence[Piece]) -> Ticket:
        """Queue one request's pieces (each answers on its own future); raises Busy when the queue is full.
        The ticket cancels them: a piece not started is skipped, one decoding leaves its batch at the next step."""
        ticket = Ticket(list(pieces))
        for piece in pieces:
            piece.ticket = ticket
        self._admit(pieces)
        return ticket

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the work already queued; waits at most `timeout` seconds for it."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join(timeout)  # the thread is a daemon: what is left goes with the process

    # --- the worker thread -----------------------------------------------------------------------------------

    def _waiting(self) -> int:
        return len({id(entry.ticket) for entry in self._queue if not entry.ticket.started})

    def _admit(self, entries: Sequence[Entry]) -> None:
        with self._changed:
            if self._waiting() >= self.queue_size:
                raise Busy(f"the model worker is busy ({self.queue_size} requests waiting); try again shortly")
            self._last_queued = time.monotonic()
            for entry in entries:
                if isinstance(entry, Piece):
                    entry.queued_at = self._last_queued
            self._queue.extend(entries)
            self._changed.notify()

    def _run(self) -> None:
        running: list[Running] = []
        while True:
            work = self._next(running)
            if work is None:
                return
            if isinstance(work, Call):
                _call(work)
            else:
                running += start_batch(work)
            running = [batch for batch in running if batch.step()]  # one step each, in turn

    def _next(self, running: list[Running]) -> Call | list[Piece] | None:
        """The next thing to start: a call (once no batch decodes), a batch of pieces, or nothing new ([]) while
        batches decode; None once closed with nothing left. Waits while there is nothing to do."""
        with self._changed:
            while True:
                self._prune()
                if self._queue and isinstance(self._queue[0], Call) and not running:
                    call = self._queue.popleft()
                    assert isinstance(call, Call)
                    call.ticket.started = True
                    if call.future.set_running_or_notify_cancel():
                        return call
                    continue
                pause = self._lingering(running)
                if pause > 0:
                    self._changed.wait(pause)
                    continue
                if self._queue and len(running) < self.max_running:
                    picked = next_batch(self._queue, {b.key for b in running}, self.max_batch_rows, self.batching)
                    for piece in picked:
                        piece.ticket.started = True
                    batch = [piece for piece in picked if piece.future.set_running_or_notify_cancel()]
                    if batch:
                        return batch
                    if picked:  # cancelled while being picked: look again
                        continue
                if running:
                    return []
                if self._closing and not self._queue:
                    return None
                # here the queue is empty: with no batch decoding, any waiting piece or call would have started
                self._changed.wait()

    def _lingering(self, running: list[Running]) -> float:
        """Seconds to wait for more pieces before an idle worker starts the piece at the head (0: start now)."""
        if running or not self._queue or not isinstance(self._queue[0], Piece):
            return 0.0
        now = time.monotonic()
        return max(0.0, min(self._last_queued + self.linger, self._queue[0].queued_at + self.max_linger) - now)

    def _prune(self) -> None:
        """Forget waiting work whose caller went away."""
        if any(_gone(entry) for entry in self._queue):
            self._queue = deque(entry for entry in self._queue if not _gone(entry))


def _gone(entry: Entry) -> bool:
    return entry.future.cancelled() or (isinstance(entry, Piece) and entry.ticket.cancelled)


def _call(call: Call) -> None:
    try:
        result = call.run()
    except BaseException as exc:  # every failure travels to the request that asked
        call.future.set_exception(exc)
    else:
        call.future.set_result(result)
