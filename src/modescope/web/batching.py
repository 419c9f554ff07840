"""Generate requests batched: pieces waiting for the same model decode together, one forward pass per step.

A generate or regenerate request is split into pieces, one per model (`Piece`). The worker (`worker.py`) takes
the oldest waiting piece whose model has no batch decoding, adds the pieces queued after it for the same
model while they fit in the row cap (`next_batch`), and decodes them as one `BatchDecode`: each piece keeps its
own prompt, seed and options, so its result is the one it would have had alone. Batches of different models
take turns step by step, so every column of the page fills at once. Taking the oldest piece first is what
keeps it fair: a piece waits at most for the batches of the pieces queued before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from modescope.engine.decode import BatchDecode, Continuation, DecodeRequest, StepToken, decode_requests, start_decode
from modescope.errors import ModescopeError
from modescope.models.base import Backend


@dataclass(eq=False)
class Ticket:
    """A caller's hold on one request: whether the worker started any part of it, and its cancel."""

    pieces: list[Piece] = field(default_factory=list)
    started: bool = False
    # set by the caller's thread, read by the worker between steps (a plain flag: one writer, late reads are fine)
    cancelled: bool = False

    def cancel(self) -> None:
        """Skip what has not started and drop the rows of what is decoding (at its next step)."""
        self.cancelled = True
        for piece in self.pieces:
            piece.future.cancel()


@dataclass(eq=False)
class Piece:
    """One model's share of a generate request: n continuations of a prompt on one backend.

    `prepare` runs in the worker thread (it may load the model) and answers the backend and the request;
    pieces with equal `key`s get the same backend object, so they may share a batch. `on_tokens` sees the
    piece's new tokens after every step (in the worker thread)."""

    key: Hashable
    rows: int
    prepare: Callable[[], tuple[Backend, DecodeRequest]]
    on_tokens: Callable[[Sequence[StepToken]], None] | None = None
    future: Future[list[Continuation]] = field(default_factory=Future)
    ticket: Ticket = field(default_factory=Ticket)
    queued_at: float = 0.0  # time.monotonic() when it joined the queue


@dataclass(eq=False)
class Call:
    """A model call that runs alone (a long call, a model load): nothing steps beside it."""

    run: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)
    ticket: Ticket = field(default_factory=Ticket)


Entry = Piece | Call


def next_batch(queue: deque[Entry], busy: set[Hashable], max_rows: int, merge: bool = True) -> list[Piece]:
    """Remove and return the next batch from `queue`: its oldest piece whose key is not `busy` (decoding now),
    then, with `merge`, the pieces queued after it with the same key while their rows fit in `max_rows` (the
    first piece goes alone when it is larger). Nothing passes a long call: it waits for no piece queued after
    it. Empty when no piece can start."""
    batch: list[Piece] = []
    rows = 0
    for entry in queue:
        if isinstance(entry, Call):
            break
        if not batch:
            if entry.key not in busy:
                batch, rows = [entry], entry.rows
                if not merge:
                    break
        elif entry.key == batch[0].key:
            if rows + entry.rows > max_rows:
                break  # no later piece of this model passes this one
            batch.append(entry)
            rows += entry.rows
    for piece in batch:
        queue.remove(piece)
    return batch


class Running:
    """A batch decoding on one backend, stepped by the worker in turn with the batches of other models."""

    def __init__(self, key: Hashable, pieces: list[Piece], decoding: BatchDecode) -> None:
        self.key = key
        self.pieces = pieces
        self.decoding = decoding

    def step(self) -> bool:
        """One step of every live row; once none is left, each piece's continuations go to its future.
        False when the batch is over (done or failed)."""
        try:
            more = self.decoding.step()
        except BaseException as exc:  # every piece of the batch fails with it, each caller hears why
            for piece in self.pieces:
                piece.future.set_exception(exc)
            return False
        if not more:
            for piece, group in zip(self.pieces, self.decoding.groups(), strict=True):
                piece.future.set_result(group)
        return more


def start_batch(pieces: Sequence[Piece]) -> list[Running]:
    """Prepare the pieces and start their decodes. A piece that cannot run (its model cannot be loaded, its
    options are refused, its prompt does not fit) fails alone, before it joins the others; pieces whose backend
    objects differ decode apart; a backend that samples on its server answers at once (no steps)."""
    ready: list[tuple[Piece, Backend, DecodeRequest]] = []
    for piece in pieces:
        try:
            backend, request = piece.prepare()
            _check(backend, request)
        except BaseException as exc:
            piece.future.set_exception(exc)
            continue
        ready.append((piece, backend, request))
    started: list[Running] = []
    for backend in {id(b): b for _, b, _ in ready}.values():
        group = [(piece, request) for piece, b, request in ready if b is backend]
        running = _start(backend, group)
        if running is not None:
            started.append(running)
    return started


def _check(backend: Backend, request: DecodeRequest) -> None:
    """Refuse a request that would fail half-way through a shared decode (and so fail the others)."""
    request.settings()
    if not request.prompt:
        raise ModescopeError("the prompt encodes to no tokens; give a non-empty prompt")
    if not backend.samples_on_server:
        # the longest row forwarded: the prompt and every new token but the last
        backend.check_length(len(request.prompt) + request.max_tokens - 1)


def _start(backend: Backend, group: list[tuple[Piece, DecodeRequest]]) -> Running | None:
    pieces = [piece for piece, _ in group]
    requests = [request for _, request in group]
    try:
        if backend.samples_on_server:  # the server batches by itself
            for piece, continuations in zip(pieces, decode_requests(backend, requests), strict=True):
                piece.future.set_result(continuations)
            return None
        decoding = start_decode(backend, requests, _reporter(pieces))
    except BaseException as exc:
        for piece in pieces:
            if not piece.future.done():
                piece.future.set_exception(exc)
        return None
    return Running(pieces[0].key, pieces, decoding)


def _reporter(pieces: Sequence[Piece]) -> Callable[[int, Sequence[StepToken]], bool]:
    def on_step(request: int, tokens: Sequence[StepToken]) -> bool:
        piece = pieces[request]
        if piece.ticket.cancelled:
            return False  # the caller left: its rows leave the batch now
        if piece.on_tokens is not None:
            try:
                piece.on_tokens(tokens)
            except Exception:  # nobody left to tell (its event loop closed): stop decoding for it
                return False
        return True

    return on_step
