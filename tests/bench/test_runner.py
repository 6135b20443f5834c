"""run_benchmark on a fake clock: closed and open loops, bounds, warmup, failures."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable

import httpx
import pytest

from hfserve.bench.config import BenchConfig
from hfserve.bench.record import RequestRecord
from hfserve.bench.runner import run_benchmark
from hfserve.bench.workload import build_prompt
from hfserve.core.clock import FakeClock
from tests.bench.fake_openai import MODEL, Script, ScriptedTransport

URL = "http://fake"


def _sleeper(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        # Yield first, as a real sleep would: requests just started get to send before time moves.
        await asyncio.sleep(0)
        clock.advance(seconds)

    return sleep


async def test_closed_loop_duration_and_throughput_come_from_the_clock() -> None:
    clock = FakeClock(50.0)
    scripted = ScriptedTransport(clock, [Script(first=0.1, gaps=(0.01, 0.02, 0.03))])
    config = BenchConfig(url=URL, requests=6)
    result = await run_benchmark(config, transport=scripted.transport(), clock=clock)
    metrics = result.metrics
    assert result.model == MODEL
    assert metrics.completed == 6 and metrics.failed == 0
    assert metrics.duration == pytest.approx(0.96)
    assert metrics.request_throughput == pytest.approx(6 / 0.96)
    assert metrics.output_throughput == pytest.approx(24 / 0.96)
    assert [r.start for r in result.records] == pytest.approx([0.16 * i for i in range(6)])
    assert metrics.ttft is not None and metrics.ttft.p99 == pytest.approx(0.1)
    assert metrics.itl is not None and metrics.itl.median == pytest.approx(0.02)
    assert metrics.tpot is not None and metrics.tpot.mean == pytest.approx(0.02)
    assert not result.all_failed


async def test_warmup_requests_are_sent_first_and_not_counted() -> None:
    clock = FakeClock()
    scripted = ScriptedTransport(clock, [Script(status=503)] + [Script() for _ in range(6)])
    seen: list[RequestRecord] = []
    config = BenchConfig(url=URL, requests=4, warmup=3, seed=5, prompt_tokens=6)
    result = await run_benchmark(
        config, transport=scripted.transport(), clock=clock, on_record=seen.append
    )
    assert len(scripted.requests) == 7
    prompts = [body["messages"][0]["content"] for _, body in scripted.requests]
    assert prompts[:3] == [build_prompt(5, i, 6) for i in (-3, -2, -1)]
    assert prompts[3:] == [build_prompt(5, i, 6) for i in range(4)]
    assert result.warmup_failed == 1  # the scripted 503 hit a warmup request
    assert result.metrics.total == 4 and result.metrics.completed == 4
    assert len(seen) == 4
    # Duration starts after the warmup: four requests of 0.16 s each.
    assert result.metrics.duration == pytest.approx(0.64)


async def test_closed_loop_keeps_exactly_concurrency_requests_in_flight() -> None:
    gate = asyncio.Event()
    three_in = asyncio.Event()
    in_flight = 0
    peak = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        if request.method == "GET":
            return httpx.Response(200, json={"data": []})
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 3:
            three_in.set()
        await gate.wait()
        in_flight -= 1
        return httpx.Response(200, json={"choices": [{"message": {"content": "a b"}}]})

    config = BenchConfig(url=URL, requests=10, concurrency=3, stream=False)
    task = asyncio.create_task(run_benchmark(config, transport=httpx.MockTransport(handle)))
    await three_in.wait()
    for _ in range(20):  # let any over-eager worker run; none may start a fourth request
        await asyncio.sleep(0)
    assert in_flight == 3
    gate.set()
    result = await task
    assert peak == 3
    assert result.model is None and result.metrics.completed == 10
    assert result.metrics.total_output_tokens == 20


async def test_closed_loop_bounded_by_duration_finishes_in_flight_requests() -> None:
    clock = FakeClock()
    scripted = ScriptedTransport(clock, [Script(first=0.3, gaps=())])
    config = BenchConfig(url=URL, duration=1.0)
    result = await run_benchmark(config, transport=scripted.transport(), clock=clock)
    # Requests start at 0, 0.3, 0.6, 0.9; the last ends at 1.2 and is counted.
    assert result.metrics.completed == 4
    assert result.metrics.duration == pytest.approx(1.2)


def _poisson(seed: int, rate: float, count: int) -> list[float]:
    rng = random.Random(seed)
    arrivals = [0.0]
    for _ in range(count - 1):
        arrivals.append(arrivals[-1] + rng.expovariate(rate))
    return arrivals


@pytest.mark.parametrize("seed", [0, 42])
async def test_open_loop_sends_at_seeded_poisson_arrival_times(seed: int) -> None:
    clock = FakeClock(10.0)
    scripted = ScriptedTransport(clock, [Script(first=0.0, gaps=())])
    config = BenchConfig(url=URL, rate=4.0, requests=8, seed=seed)
    result = await run_benchmark(
        config, transport=scripted.transport(), clock=clock, sleep=_sleeper(clock)
    )
    expected = _poisson(seed, 4.0, 8)
    assert [t - 10.0 for t, _ in scripted.requests] == pytest.approx(expected)
    assert [r.start for r in result.records] == pytest.approx(expected)
    assert result.metrics.duration == pytest.approx(expected[-1])


async def test_open_loop_bounded_by_duration() -> None:
    clock = FakeClock()
    scripted = ScriptedTransport(clock, [Script(first=0.0, gaps=())])
    config = BenchConfig(url=URL, rate=20.0, duration=1.0, seed=3)
    result = await run_benchmark(
        config, transport=scripted.transport(), clock=clock, sleep=_sleeper(clock)
    )
    arrivals = _poisson(3, 20.0, 200)
    assert result.metrics.total == sum(1 for t in arrivals if t < 1.0)


async def test_open_loop_cap_delays_requests_until_a_slot_frees() -> None:
    clock = FakeClock()
    scripted = ScriptedTransport(clock, [Script(first=0.5, gaps=())])
    config = BenchConfig(url=URL, rate=1000.0, requests=3, concurrency=1, stream=False)
    result = await run_benchmark(
        config, transport=scripted.transport(), clock=clock, sleep=_sleeper(clock)
    )
    records = result.records
    assert [r.latency for r in records] == pytest.approx([0.5, 0.5, 0.5])
    # Due almost at once, yet each waited for the one before it to end.
    assert all(b.start >= a.start + a.latency for a, b in itertools.pairwise(records))


async def test_failures_are_counted_by_status() -> None:
    clock = FakeClock()
    scripts = [Script(), Script(status=429), Script(), Script(status=503), Script(status=503)]
    scripted = ScriptedTransport(clock, scripts)
    config = BenchConfig(url=URL, requests=5, model="explicit")
    result = await run_benchmark(config, transport=scripted.transport(), clock=clock)
    assert result.model == "explicit"
    assert all(body["model"] == "explicit" for _, body in scripted.requests)
    assert result.metrics.completed == 2
    assert result.metrics.failures == {"HTTP 429": 1, "HTTP 503": 2}


async def test_every_request_failing_is_reported() -> None:
    clock = FakeClock()
    scripted = ScriptedTransport(clock, [Script(status=401)])
    result = await run_benchmark(
        BenchConfig(url=URL, requests=3), transport=scripted.transport(), clock=clock
    )
    assert result.all_failed
    assert result.metrics.failures == {"HTTP 401": 3}
