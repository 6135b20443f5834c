"""Micro-batching: many concurrent requests, one model call per batch, run off the event loop.

The worker starts as soon as it is idle and something is queued, so a lone request is never
delayed; batches form naturally from the requests that arrive while the previous batch runs.
``max_wait_ms`` only bounds how long the worker lingers for followers when it finds a partial
batch waiting right after a batch (a sign of sustained load).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

from hfserve.core.clock import Clock, MonotonicClock
from hfserve.errors import InferenceError, OverloadedError, ShuttingDownError

__all__ = ["BatchObserver", "MicroBatcher"]

I = TypeVar("I")  # noqa: E741 - the item type of the public signature
R = TypeVar("R")

_log = logging.getLogger(__name__)

# Floor of the Retry-After hint: a client told "retry in 0s" would hammer a full queue.
_MIN_RETRY_AFTER = 0.1
# How many recent batch durations feed the Retry-After estimate.
_DURATION_SAMPLES = 16


class BatchObserver(Protocol):
    """Receives one report per batch (for metrics)."""

    def on_batch(
        self, model: str, size: int, queue_waits: Sequence[float], run_seconds: float
    ) -> None:
        """Report a finished batch: its size, each item's queue wait and the run time (s)."""
        ...


@dataclass(eq=False)
class _Entry(Generic[I, R]):
    """One queued item and the future its caller awaits."""

    item: I
    cost: int
    enqueued_at: float
    future: asyncio.Future[R] = field(repr=False)


class MicroBatcher(Generic[I, R]):
    """Collects concurrent ``submit`` calls into batches for one blocking ``batch_fn``.

    Args:
        batch_fn: runs a batch in a worker thread and returns one result per item, in order;
            an exception instance in the results fails only that item's caller.
        max_batch_size: most items in one batch.
        max_batch_tokens: most summed ``cost_fn`` in one batch (0 = no limit); an item over
            the budget still runs, alone.
        max_wait_ms: longest time, from the oldest queued item, that the worker lingers for a
            fuller batch under load (0 = never linger).
        max_queue: most items waiting; one more raises ``OverloadedError``.
        cost_fn: an item's cost (e.g. its token count); 1 per item when omitted.
        clock: time source for queue waits, run times and the linger deadline.
        name: reported to the observer and used in error messages (e.g. the model id).
        observer: receives one report per batch.
        executor: where ``batch_fn`` runs. When omitted, a thread of this batcher's own,
            started with the worker and stopped with it: batches run one at a time, and a
            model that stays on one thread keeps its OpenMP team and its caches warm, where
            the loop's shared executor would hand consecutive batches to different threads.
    """

    def __init__(
        self,
        batch_fn: Callable[[Sequence[I]], Sequence[R | BaseException]],
        *,
        max_batch_size: int = 32,
        max_batch_tokens: int = 0,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        cost_fn: Callable[[I], int] | None = None,
        clock: Clock | None = None,
        name: str = "batcher",
        observer: BatchObserver | None = None,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_batch_tokens < 0:
            raise ValueError("max_batch_tokens must be >= 0 (0 means no limit)")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._batch_fn = batch_fn
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._max_wait = max_wait_ms / 1000.0
        self._max_queue = max_queue
        self._cost_fn = cost_fn
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._name = name
        self._observer = observer
        self._executor = executor
        self._own_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._queue: deque[_Entry[I, R]] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._durations: deque[float] = deque(maxlen=_DURATION_SAMPLES)

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not counting the batch that is running)."""
        return sum(1 for entry in self._queue if not entry.future.done())

    @property
    def running(self) -> bool:
        """Whether the worker is started and accepting work."""
        return self._worker is not None and not self._worker.done() and not self._closing

    async def start(self) -> None:
        """Start the worker task; a second call is a no-op.

        Raises:
            ShuttingDownError: the batcher was closed (create a new one instead).
        """
        if self._closing:
            raise ShuttingDownError(f"batcher {self._name!r} is closed and cannot be restarted")
        if self._worker is None:
            if self._executor is None:
                self._own_executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"hfserve-batch-{self._name}"
                )
            self._worker = asyncio.create_task(self._run(), name=f"hfserve-batcher-{self._name}")

    async def aclose(self, *, grace: float | None = None) -> None:
        """Refuse new work, fail queued items, let the running batch finish, stop the worker.

        Args:
            grace: most seconds to wait for the running batch; then its callers get
                ``ShuttingDownError`` (the worker thread itself cannot be interrupted).
                ``None`` waits for it to finish.
        """
        self._closing = True
        self._fail_queued()
        self._wakeup.set()
        worker = self._worker
        if worker is None or worker.done():
            return
        try:
            # wait_for cancels the worker on timeout; the worker then fails its batch.
            await asyncio.wait_for(worker, grace)
        except TimeoutError:
            _log.warning("batcher %r: running batch abandoned after %ss grace", self._name, grace)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def submit(self, item: I) -> R:
        """Queue ``item``, wait for its batch, and return its result.

        Cancelling the caller while the item is queued drops the item before inference.

        Raises:
            OverloadedError: ``max_queue`` items are already waiting.
            ShuttingDownError: the batcher is not started or is closing.
            Exception: whatever ``batch_fn`` raised or returned for this item.
        """
        if self._closing or self._worker is None:
            state = "closing" if self._closing else "not started"
            raise ShuttingDownError(f"batcher {self._name!r} is {state}; no new work accepted")
        depth = self.queue_depth
        if depth >= self._max_queue:
            raise OverloadedError(
                f"batcher {self._name!r} queue is full ({depth} items waiting)",
                retry_after=self._retry_after(depth),
            )
        cost = self._cost_fn(item) if self._cost_fn is not None else 1
        if cost < 0:
            raise ValueError(f"cost_fn returned a negative cost ({cost})")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        entry = _Entry(item=item, cost=cost, enqueued_at=self._clock.now(), future=future)
        self._queue.append(entry)
        self._wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:
            # The cancelled future is skipped by the worker anyway; removing it now keeps
            # queue_depth and the max_queue bound exact.
            future.cancel()
            with contextlib.suppress(ValueError):  # ValueError: already taken into a batch
                self._queue.remove(entry)
            raise

    async def submit_many(self, items: Sequence[I]) -> list[R]:
        """Queue all ``items`` at once (all or nothing) and return their results in order.

        A request with several inputs is admitted whole or refused whole, so a full queue
        never leaves half a request running. When the queue is empty it is admitted even if
        it holds more than ``max_queue`` items, so a large request is not refused forever
        (callers bound the number of inputs per request).

        Raises:
            OverloadedError: the items do not fit in the queue.
            ShuttingDownError: the batcher is not started or is closing.
            Exception: the first error ``batch_fn`` raised or returned for one of the items.
        """
        if self._closing or self._worker is None:
            state = "closing" if self._closing else "not started"
            raise ShuttingDownError(f"batcher {self._name!r} is {state}; no new work accepted")
        depth = self.queue_depth
        if depth and depth + len(items) > self._max_queue:
            raise OverloadedError(
                f"batcher {self._name!r} queue is full ({depth} items waiting, "
                f"{len(items)} more asked)",
                retry_after=self._retry_after(depth + len(items)),
            )
        loop = asyncio.get_running_loop()
        now = self._clock.now()
        entries = []
        for item in items:
            cost = self._cost_fn(item) if self._cost_fn is not None else 1
            if cost < 0:
                raise ValueError(f"cost_fn returned a negative cost ({cost})")
            entries.append(
                _Entry(item=item, cost=cost, enqueued_at=now, future=loop.create_future())
            )
        self._queue.extend(entries)
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(entry.future for entry in entries)))
        except BaseException:
            # Cancelled or one item failed: drop the rest before inference where still queued.
            for entry in entries:
                if not entry.future.done():
                    entry.future.cancel()
                with contextlib.suppress(ValueError):
                    self._queue.remove(entry)
            raise

    def _retry_after(self, depth: int) -> float:
        """Estimate the seconds until the queue has drained: batches ahead x recent duration."""
        if not self._durations:
            return _MIN_RETRY_AFTER
        mean = sum(self._durations) / len(self._durations)
        batches_ahead = math.ceil(depth / self._max_batch_size)
        return max(_MIN_RETRY_AFTER, mean * batches_ahead)

    def _fail_queued(self) -> None:
        """Fail every queued item with ``ShuttingDownError``."""
        while self._queue:
            entry = self._queue.popleft()
            if not entry.future.done():
                entry.future.set_exception(
                    ShuttingDownError(
                        f"batcher {self._name!r} shut down before this request was run"
                    )
                )

    def _plan(self) -> tuple[list[_Entry[I, R]], bool]:
        """Return the live entries of the next batch and whether a limit (not the queue) ends it."""
        batch: list[_Entry[I, R]] = []
        tokens = 0
        for entry in self._queue:
            if entry.future.done():
                continue  # its caller was cancelled
            if len(batch) >= self._max_batch_size:
                return batch, True
            if self._max_batch_tokens and batch and tokens + entry.cost > self._max_batch_tokens:
                return batch, True
            batch.append(entry)
            tokens += entry.cost
        full = len(batch) >= self._max_batch_size or (
            self._max_batch_tokens > 0 and tokens >= self._max_batch_tokens
        )
        return batch, full

    def _take(self) -> list[_Entry[I, R]]:
        """Pop the next batch off the queue, discarding cancelled entries before it."""
        batch, _ = self._plan()
        if batch:
            last = batch[-1]
            # The batch is a prefix of the live entries, so popping up to its last one drops
            # only cancelled entries besides the batch itself.
            while self._queue.popleft() is not last:
                pass
        return batch

    async def _linger(self) -> None:
        """Wait for followers until the batch is full, the deadline passes, or shutdown."""
        while not self._closing:
            batch, full = self._plan()
            if full or not batch:
                return
            remaining = batch[0].enqueued_at + self._max_wait - self._clock.now()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _run(self) -> None:
        """The worker: wait for items, form a batch, run it, repeat until closed."""
        after_batch = False
        try:
            while await self._await_work(after_batch=after_batch):
                batch = self._take()
                after_batch = bool(batch)
                if batch:
                    await self._run_batch(batch)
        finally:
            # Nothing will serve the queue once the worker stops, whatever the reason.
            self._closing = True
            self._fail_queued()
            if self._own_executor is not None:
                # A batch abandoned after the grace period finishes in the background.
                self._own_executor.shutdown(wait=False)

    async def _await_work(self, *, after_batch: bool) -> bool:
        """Wait until a batch should start; False when the worker should stop instead."""
        if self._closing:
            return False
        if self.queue_depth == 0:
            # Idle: start the moment anything arrives, without lingering.
            self._wakeup.clear()
            await self._wakeup.wait()
        elif after_batch and self._max_wait > 0:
            # Items piled up while the last batch ran: the server is busy, so a short wait
            # for a fuller batch buys throughput.
            await self._linger()
        return not self._closing

    async def _run_batch(self, batch: list[_Entry[I, R]]) -> None:
        """Run one batch in a worker thread and hand each caller its own result."""
        started = self._clock.now()
        waits = [started - entry.enqueued_at for entry in batch]
        items = [entry.item for entry in batch]
        try:
            executor = self._executor or self._own_executor
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(executor, self._batch_fn, items)
            results: list[R | BaseException] = list(raw)
        except Exception as exc:  # batch_fn's own failure belongs to every caller of the batch
            self._record(started, batch, waits)
            for entry in batch:
                _settle_exception(entry, exc)
            return
        except BaseException:
            for entry in batch:
                _settle_exception(
                    entry,
                    ShuttingDownError(f"batcher {self._name!r} stopped while this batch ran"),
                )
            raise
        self._record(started, batch, waits)
        if len(results) != len(batch):
            error = InferenceError(
                f"batcher {self._name!r}: batch function returned {len(results)} results "
                f"for {len(batch)} items"
            )
            for entry in batch:
                _settle_exception(entry, error)
            return
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                _settle_exception(entry, result)
            elif not entry.future.done():
                entry.future.set_result(result)

    def _record(self, started: float, batch: list[_Entry[I, R]], waits: list[float]) -> None:
        """Remember the batch duration and report it to the observer."""
        run_seconds = max(0.0, self._clock.now() - started)
        self._durations.append(run_seconds)
        if self._observer is None:
            return
        try:
            self._observer.on_batch(self._name, len(batch), waits, run_seconds)
        except Exception:
            # Metrics must never break serving.
            _log.exception("batcher %r: observer failed", self._name)


def _settle_exception(entry: _Entry[I, R], exc: BaseException) -> None:
    """Fail one caller, unless it already went away."""
    if not entry.future.done():
        entry.future.set_exception(exc)
