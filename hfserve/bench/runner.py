"""Drive a server with a closed or open (Poisson) loop and collect what happened."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from hfserve.bench.client import BenchClient
from hfserve.bench.config import BenchConfig
from hfserve.bench.record import RequestRecord
from hfserve.bench.stats import BenchMetrics, compute_metrics
from hfserve.bench.target import choose_target
from hfserve.bench.workload import Workload
from hfserve.core.clock import Clock, MonotonicClock

__all__ = ["BenchResult", "OnRecord", "Sleep", "run_benchmark"]

OnRecord = Callable[[RequestRecord], None]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BenchResult:
    """A finished run: its configuration, every measured request and their metrics."""

    config: BenchConfig
    model: str | None
    records: tuple[RequestRecord, ...]
    metrics: BenchMetrics
    started_at: float
    warmup_failed: int = 0

    @property
    def all_failed(self) -> bool:
        """Whether no measured request succeeded."""
        return self.metrics.completed == 0


async def run_benchmark(
    config: BenchConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock | None = None,
    sleep: Sleep | None = None,
    on_record: OnRecord | None = None,
) -> BenchResult:
    """Run one benchmark against ``config.url`` and return what it measured.

    A pre-flight ``GET /v1/models`` checks that the target answers and picks the model and
    endpoint (:func:`~hfserve.bench.target.choose_target`); the result's config is the one run. Warmup requests run next, closed loop, and
    are not counted; then the measured requests. The duration runs from the first measured
    request to the last one's end. ``transport``, ``clock`` and ``sleep`` exist for tests
    (``sleep`` must advance ``clock``); ``on_record`` sees each measured request as it ends.

    Raises:
        UnavailableError: nothing answers at ``config.url``.
        ConfigError: no listed model serves the endpoint.
    """
    clock = clock if clock is not None else MonotonicClock()
    sleep = sleep if sleep is not None else asyncio.sleep
    async with BenchClient(config, transport=transport, clock=clock) as client:
        config, model = choose_target(config, await client.listed_models())
        client.retarget(config)
        workload = Workload(config, model)
        warmup: list[RequestRecord] = []
        if config.warmup:
            loop = _Loop(client, workload, clock, first_index=-config.warmup, on_record=None)
            warmup = await loop.closed(config.workers, count=config.warmup, duration=None)
        started_at = time.time()
        loop = _Loop(client, workload, clock, first_index=0, on_record=on_record)
        if config.rate is not None:
            rng = random.Random(config.seed)
            records = await loop.open(
                config.rate, rng, sleep, config.concurrency, config.total_requests, config.duration
            )
        else:
            records = await loop.closed(
                config.workers, count=config.total_requests, duration=config.duration
            )
        duration = clock.now() - loop.origin
    records.sort(key=lambda r: r.start)
    return BenchResult(
        config=config,
        model=model,
        records=tuple(records),
        metrics=compute_metrics(records, duration),
        started_at=started_at,
        warmup_failed=sum(1 for r in warmup if not r.ok),
    )


class _Loop:
    """One phase of a run (warmup or measurement): numbers requests and keeps their records."""

    def __init__(
        self,
        client: BenchClient,
        workload: Workload,
        clock: Clock,
        *,
        first_index: int,
        on_record: OnRecord | None,
    ) -> None:
        self._client = client
        self._workload = workload
        self._clock = clock
        self._next_index = first_index
        self._on_record = on_record
        self.records: list[RequestRecord] = []
        self.origin = clock.now()

    async def _send_next(self) -> None:
        index = self._next_index
        self._next_index += 1
        record = await self._client.send(self._workload.request(index), self.origin)
        self.records.append(record)
        if self._on_record is not None:
            self._on_record(record)

    async def closed(
        self, workers: int, *, count: int | None, duration: float | None
    ) -> list[RequestRecord]:
        """Each worker sends its next request when its last one ended, until the bound."""
        self.origin = self._clock.now()
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while True:
                if count is not None and sent >= count:
                    return
                if duration is not None and self._clock.now() - self.origin >= duration:
                    return
                sent += 1
                await self._send_next()

        async with asyncio.TaskGroup() as group:
            for _ in range(min(workers, count) if count is not None else workers):
                group.create_task(worker())
        return self.records

    async def open(
        self,
        rate: float,
        rng: random.Random,
        sleep: Sleep,
        cap: int | None,
        count: int | None,
        duration: float | None,
    ) -> list[RequestRecord]:
        """Send requests at Poisson arrival times (the first at once), like ``vllm bench``.

        With ``cap``, a request due while ``cap`` are in flight waits for a free slot.
        """
        self.origin = self._clock.now()
        slots = asyncio.Semaphore(cap) if cap is not None else None

        async def one() -> None:
            try:
                await self._send_next()
            finally:
                if slots is not None:
                    slots.release()

        arrival = 0.0
        sent = 0
        async with asyncio.TaskGroup() as group:
            while count is None or sent < count:
                if duration is not None and arrival >= duration:
                    break
                delay = self.origin + arrival - self._clock.now()
                if delay > 0:
                    await sleep(delay)
                if slots is not None:
                    await slots.acquire()
                group.create_task(one())
                sent += 1
                arrival += rng.expovariate(rate)
        return self.records
