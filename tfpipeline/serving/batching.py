"""Merge concurrent predict requests on one signature into one model call.

TF Serving's idea (`max_batch_size`, `batch_timeout_micros`), with one change so a lone
client pays no timeout: a batch is started at once when nothing else is on its way, and
waits up to the timeout only while other requests have already arrived at the server and
are still being read and validated (`Arrivals`). While a model call runs, new requests queue
up and form the next batch, so under load batches fill by themselves.

Model calls run in a thread pool (TensorFlow releases the GIL), so the event loop keeps
accepting and parsing requests meanwhile.

The queue is bounded, as TF Serving's (`max_enqueued_batches`): a request that would make
more batches wait than that is refused at once with `Unavailable` (503 / UNAVAILABLE), never
queued and dropped later, so every accepted request gets its answer. With merging off, the
same number of examples (`max_enqueued_batches * max_batch_size`) may wait or run at once.
`allowed_batch_sizes` pads a merged batch up to the next allowed size by repeating its first
row, as TF Serving's batching session does, so the model only ever sees those sizes.
Requests reach the model with the shapes they were sent with, so only requests whose inputs
agree in everything but dimension 0 (shape and dtype) are merged into one call.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import Unavailable

Arrays = dict[str, np.ndarray]


@dataclass
class BatchStats:
    """Counts served at /monitoring/stats, to see how well requests are being merged."""

    requests: int = 0
    model_calls: int = 0
    instances: int = 0
    batch_sizes: Counter = field(default_factory=Counter)  # instances per call -> calls
    refused: int = 0  # requests turned away because the queue was full
    on_batch: Callable[[int], None] | None = None  # e.g. a Prometheus histogram's observe

    def record(self, requests: int, instances: int) -> None:
        self.requests += requests
        self.model_calls += 1
        self.instances += instances
        self.batch_sizes[instances] += 1
        if self.on_batch is not None:
            self.on_batch(instances)

    def as_json(self) -> dict:
        return {
            "requests": self.requests,
            "model_calls": self.model_calls,
            "instances": self.instances,
            "max_batch_size": max(self.batch_sizes, default=0),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "refused": self.refused,
        }


class Arrivals:
    """Requests that reached the server but are not yet queued for a model call.

    Batchers wait for these (never for requests that may or may not come), and are woken
    whenever one leaves, whether it was queued or rejected.
    """

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        self.changed.set()


@dataclass
class _Pending:
    arrays: Arrays
    rows: int
    future: asyncio.Future

    @property
    def key(self) -> tuple:
        """What must agree for two requests to be concatenated along dimension 0."""
        return tuple((name, a.shape[1:], a.dtype) for name, a in sorted(self.arrays.items()))


@dataclass(frozen=True)
class BatchConfig:
    enabled: bool = True
    max_batch_size: int = 64
    timeout_seconds: float = 0.002
    max_enqueued_batches: int = 10  # TF Serving's default
    allowed_batch_sizes: tuple[int, ...] = ()  # empty: any size up to max_batch_size

    @property
    def max_waiting_rows(self) -> int:
        return self.max_enqueued_batches * self.max_batch_size


class Batcher:
    """Queue for one signature of one version; `enqueue` returns a future of its outputs."""

    def __init__(self, run: Callable[[Arrays], Arrays], *, batchable: bool, config: BatchConfig,
                 executor: Executor, stats: BatchStats, arrivals: Arrivals):
        self._run = run
        self._merge = config.enabled and batchable
        self._config = config
        self._executor = executor
        self._stats = stats
        self._arrivals = arrivals
        self._queue: list[_Pending] = []
        self._queued_rows = 0
        self._alone_rows = 0  # rows of unmerged calls waiting for or running in the executor
        self._worker: asyncio.Task | None = None

    @property
    def waiting_rows(self) -> int:
        """Examples accepted and not yet answered by a model call (the queue depth)."""
        return self._queued_rows + self._alone_rows

    def enqueue(self, arrays: Arrays, rows: int, mergeable: bool = True) -> asyncio.Future:
        """Queue one validated request, or raise Unavailable if the queue is full.
        Synchronous, so the caller can leave `Arrivals` right after and a waiting batch sees
        the request already in the queue. `mergeable` False (inputs without a shared
        dimension 0) runs it alone."""
        loop = asyncio.get_running_loop()
        config = self._config
        if not self._merge or not mergeable or rows >= config.max_batch_size:
            # Merging is off, impossible (no batch dimension) or pointless (already full).
            if self._alone_rows and self._alone_rows + rows > config.max_waiting_rows:
                self._refuse(f"{self._alone_rows} examples are already waiting")
            self._alone_rows += rows
            return asyncio.ensure_future(self._call_alone(arrays, rows))
        batches = -(-(self._queued_rows + rows) // config.max_batch_size)
        if batches > config.max_enqueued_batches:
            self._refuse(f"{len(self._queue)} requests ({self._queued_rows} examples) are "
                         "already queued")
        future = loop.create_future()
        self._queue.append(_Pending(arrays, rows, future))
        self._queued_rows += rows
        if self._worker is None:
            self._worker = loop.create_task(self._drain())
        return future

    def _refuse(self, why: str) -> None:
        self._stats.refused += 1
        raise Unavailable(
            f"The server is overloaded: {why} (max_enqueued_batches "
            f"{self._config.max_enqueued_batches} of {self._config.max_batch_size}); retry later")

    async def _call_alone(self, arrays: Arrays, rows: int) -> Arrays:
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._executor, self._run, arrays)
        # The rows count until the model call itself ends: a caller that gives up (a REST
        # timeout cancels this coroutine) leaves the call running in the executor, and the
        # queue limit must still see it. shield: the cancellation does not mark the call done.
        call.add_done_callback(lambda _: self._release_alone(rows))
        outputs = await asyncio.shield(call)
        self._stats.record(1, rows)
        return outputs

    def _release_alone(self, rows: int) -> None:
        self._alone_rows -= rows

    async def _drain(self) -> None:
        """Run batches until the queue is empty, one model call at a time."""
        try:
            while self._queue:
                await self._wait_for_arrivals()
                batch = self._take_batch()
                await self._call_batch(batch)
        finally:
            self._worker = None

    async def _wait_for_arrivals(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.timeout_seconds
        while self._queued_rows < self._config.max_batch_size and self._arrivals.count > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrivals.changed.clear()
            try:
                await asyncio.wait_for(self._arrivals.changed.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> list[_Pending]:
        """The oldest request and the queued ones that fit beside it, in arrival order."""
        first = self._queue.pop(0)
        batch, rows, key, kept = [first], first.rows, first.key, []
        while self._queue:
            item = self._queue.pop(0)
            if rows + item.rows > self._config.max_batch_size:
                kept.append(item)
                break
            if item.key == key:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        self._queue[:0] = kept
        self._queued_rows -= rows
        return batch

    async def _call_batch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        rows = sum(item.rows for item in batch)
        try:
            merged = _pad(_concatenate([item.arrays for item in batch]), rows,
                          self._config.allowed_batch_sizes)
            outputs = await loop.run_in_executor(self._executor, self._run, merged)
        except Exception as exc:  # every request in the batch gets the same error
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self._stats.record(len(batch), rows)
        start = 0
        for item in batch:
            if not item.future.done():  # the client may have gone away meanwhile
                item.future.set_result({k: v[start:start + item.rows] for k, v in outputs.items()})
            start += item.rows


def _pad(arrays: Arrays, rows: int, allowed: tuple[int, ...]) -> Arrays:
    """Repeat the first row up to the smallest allowed batch size of at least `rows`; the
    callers slice each request's rows from the front, so the padding is never returned."""
    size = next((s for s in allowed if s >= rows), rows)
    if size == rows:
        return arrays
    return {name: np.concatenate([a, np.repeat(a[:1], size - rows, axis=0)])
            for name, a in arrays.items()}


def _concatenate(parts: list[Arrays]) -> Arrays:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
