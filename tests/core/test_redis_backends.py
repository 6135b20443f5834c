"""Redis backends against a real redis-server: same semantics as memory, shared, bounded."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hfserve.core.breaker import BreakerState, CircuitBreaker
from hfserve.core.clock import FakeClock
from hfserve.core.rate_limiter import (
    BucketSpec,
    MemoryRateLimitBackend,
    RateLimiter,
    RateLimits,
)
from hfserve.core.redis_backends import (
    RedisConnection,
    RedisRateLimitBackend,
    RedisResponseBackend,
    RedisRevocations,
    RevocationWatcher,
)
from hfserve.core.response_cache import ResponseCache
from hfserve.errors import UnavailableError
from tests.fixtures.redis_server import RedisServer

pytestmark = pytest.mark.integration

# Generous: these tests check behaviour, not latency, on a busy 2-core machine.
TIMEOUT = 2.0


@pytest.fixture
async def redis(redis_server_module: RedisServer) -> AsyncIterator[RedisConnection]:
    """A connection to the module's redis-server, emptied first."""
    redis_server_module.start()
    redis_server_module.flush()
    connection = RedisConnection(redis_server_module.url, timeout=TIMEOUT)
    yield connection
    await connection.aclose()


def _ns() -> str:
    return "t" + uuid.uuid4().hex


# --- rate limiting -----------------------------------------------------------------------------

_op = st.tuples(
    st.sampled_from(["acquire", "debit"]),
    st.sampled_from(["alice", "bob"]),
    st.floats(min_value=0, max_value=30, allow_nan=False),  # time advance (s)
    st.integers(min_value=0, max_value=4),  # requests
    st.integers(min_value=0, max_value=50),  # tokens
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rpm=st.integers(min_value=1, max_value=6),
    tpm=st.integers(min_value=1, max_value=60),
    ops=st.lists(_op, min_size=1, max_size=25),
)
def test_redis_buckets_match_memory_bit_for_bit(
    redis_server_module: RedisServer,
    rpm: int,
    tpm: int,
    ops: list[tuple[str, str, float, int, int]],
) -> None:
    """The Lua script and the in-memory backend are the same token bucket, float for float."""
    redis_server_module.start()

    async def scenario() -> None:
        connection = RedisConnection(redis_server_module.url, timeout=TIMEOUT)
        clock = FakeClock(1000.0)
        redis_backend = RedisRateLimitBackend(connection, namespace=_ns(), clock=clock)
        memory = MemoryRateLimitBackend()
        try:
            for kind, key, advance, requests, tokens in ops:
                clock.advance(advance)
                specs = [
                    BucketSpec("requests", float(rpm), rpm / 60.0, float(requests)),
                    BucketSpec("tokens", float(tpm), tpm / 60.0, float(tokens)),
                ]
                if kind == "acquire":
                    expected = await memory.acquire(key, specs, clock.now())
                    got = await redis_backend.acquire(key, specs, clock.now())
                else:
                    expected = await memory.debit(key, specs, clock.now())
                    got = await redis_backend.debit(key, specs, clock.now())
                assert list(got) == list(expected)
        finally:
            await connection.aclose()

    asyncio.run(scenario())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    budget=st.integers(min_value=1, max_value=12),
    clients=st.integers(min_value=2, max_value=4),
    calls=st.lists(st.integers(min_value=1, max_value=10), min_size=2, max_size=4),
)
def test_concurrent_clients_never_exceed_the_budget(
    redis_server_module: RedisServer, budget: int, clients: int, calls: list[int]
) -> None:
    """Several clients (replicas) racing allow() on one key are granted exactly one budget."""
    redis_server_module.start()
    namespace = _ns()

    async def scenario() -> int:
        clock = FakeClock(50.0)  # frozen: no refill while they race
        connections = [
            RedisConnection(redis_server_module.url, timeout=TIMEOUT) for _ in range(clients)
        ]
        limiters = [
            RateLimiter(RedisRateLimitBackend(c, namespace=namespace, clock=clock), clock=clock)
            for c in connections
        ]
        limits = RateLimits(requests_per_minute=budget)
        try:
            decisions = await asyncio.gather(
                *(
                    limiters[i % clients].allow("shared-key", limits)
                    for i, n in enumerate(calls)
                    for _ in range(n)
                )
            )
        finally:
            for c in connections:
                await c.aclose()
        return sum(d.allowed for d in decisions)

    granted = asyncio.run(scenario())
    assert granted == min(budget, sum(calls))


async def test_server_time_refill_and_retry_after(redis: RedisConnection) -> None:
    """Without a caller clock the bucket runs on Redis TIME: 3 of 3, then a ~20 s wait."""
    limiter = RateLimiter(RedisRateLimitBackend(redis, namespace=_ns()))
    limits = RateLimits(requests_per_minute=3)
    results = [await limiter.allow("k", limits) for _ in range(4)]
    assert [d.allowed for d in results] == [True, True, True, False]
    assert results[2].remaining_requests == 0
    assert 19.0 < results[3].retry_after <= 20.0


async def test_acquire_is_all_or_nothing_and_debit_goes_negative(redis: RedisConnection) -> None:
    """A bucket that cannot pay blocks the others; debit always charges."""
    clock = FakeClock(10.0)
    backend = RedisRateLimitBackend(redis, namespace="ns", clock=clock)
    specs = [BucketSpec("requests", 5.0, 1.0, 1.0), BucketSpec("tokens", 10.0, 1.0, 11.0)]
    states = await backend.acquire("k", specs, clock.now())
    assert [s.debited for s in states] == [False, False]
    assert [s.level for s in states] == [5.0, 10.0]
    states = await backend.debit("k", specs, clock.now())
    assert [s.level for s in states] == [4.0, -1.0]
    assert await backend.acquire("k", [], clock.now()) == []
    # The hash lives under the namespace and expires once every bucket would be full again.
    ttl_ms = await redis.client.pttl("ns:rl:k")
    assert 11_000 < ttl_ms <= 12_000


async def test_time_never_runs_backwards(redis: RedisConnection) -> None:
    """A caller whose clock is behind the stored stamp refills nothing (and is not refunded)."""
    backend = RedisRateLimitBackend(redis, namespace=_ns(), clock=FakeClock())
    spec = [BucketSpec("requests", 2.0, 1.0, 1.0)]
    await backend.acquire("k", spec, 100.0)
    await backend.acquire("k", spec, 100.0)
    states = await backend.acquire("k", spec, 50.0)
    assert states[0].debited is False
    assert states[0].level == 0.0


# --- response cache ----------------------------------------------------------------------------


async def test_response_backend_round_trip_ttl_and_bounds(redis: RedisConnection) -> None:
    """Values round-trip under the namespace with a Redis TTL; refused stores drop the key."""
    backend = RedisResponseBackend(redis, namespace="app", max_value_bytes=8)
    assert await backend.get("k") is None
    await backend.set("k", b"value", 30.0)
    assert await backend.get("k") == b"value"
    assert 29_000 < await redis.client.pttl("app:cache:k") <= 30_000
    await backend.set("k", b"far too large", 30.0)
    assert await backend.get("k") is None
    await backend.set("k", b"v", 30.0)
    await backend.set("k", b"v", 0.0)
    assert await backend.get("k") is None
    with pytest.raises(ValueError, match="max_value_bytes"):
        RedisResponseBackend(redis, max_value_bytes=-1)


async def test_two_clients_share_one_cache(
    redis: RedisConnection, redis_server_module: RedisServer
) -> None:
    """A response stored through one connection is a hit through another (another replica)."""
    other = RedisConnection(redis_server_module.url, timeout=TIMEOUT)
    try:
        writer = ResponseCache(RedisResponseBackend(redis), ttl=60)
        reader = ResponseCache(RedisResponseBackend(other), ttl=60)
        assert await writer.put("abc", b'{"ok":true}')
        assert await reader.get("abc") == b'{"ok":true}'
    finally:
        await other.aclose()


# --- revocations -------------------------------------------------------------------------------


async def test_revocations_publish_and_watch(redis: RedisConnection) -> None:
    """A published id reaches a watcher at its next refresh; the version counts changes."""
    revocations = RedisRevocations(redis, namespace="v")
    watcher = RevocationWatcher(RedisRevocations(redis, namespace="v"), interval=60)
    assert await revocations.version() is None
    assert await watcher.refresh() is True
    assert watcher.revoked_ids() == frozenset()
    await revocations.publish("key_a")
    first = await revocations.version()
    await revocations.publish("key_a")
    assert first is not None
    assert await revocations.version() not in {None, first}
    assert await watcher.refresh() is True
    assert watcher.revoked_ids() == {"key_a"}
    assert watcher.healthy


async def test_watcher_background_loop_picks_up_revocations(redis: RedisConnection) -> None:
    """Started, the watcher refreshes by itself every interval; aclose stops it."""
    watcher = RevocationWatcher(RedisRevocations(redis), interval=0.02)
    await watcher.start()
    await watcher.start()  # idempotent
    await RedisRevocations(redis).publish("key_b")
    async with asyncio.timeout(5):
        while "key_b" not in watcher.revoked_ids():
            await asyncio.sleep(0.01)
    await watcher.aclose()
    await watcher.aclose()
    with pytest.raises(ValueError, match="interval"):
        RevocationWatcher(RedisRevocations(redis), interval=0)


async def test_watcher_keeps_revocations_through_outage_and_data_loss(
    redis: RedisConnection, redis_server_module: RedisServer
) -> None:
    """Down: the last known ids stay; back up but empty: they are still not forgotten."""
    watcher = RevocationWatcher(RedisRevocations(redis), interval=60)
    await RedisRevocations(redis).publish("key_c")
    await watcher.refresh()
    redis_server_module.stop()
    assert await watcher.refresh() is False
    assert not watcher.healthy
    assert watcher.revoked_ids() == {"key_c"}
    redis_server_module.start()
    redis.breaker.reset()
    await RedisRevocations(redis).publish("key_d")
    assert await watcher.refresh() is True
    assert watcher.revoked_ids() == {"key_c", "key_d"}


# --- failures ----------------------------------------------------------------------------------


async def test_outage_is_unavailable_then_fast_then_recovers(
    redis_server_module: RedisServer,
) -> None:
    """Down: each op fails as UnavailableError and is reported; the breaker then fails fast;
    back up: after the recovery time a probe succeeds and calls flow again."""
    redis_server_module.start()
    clock = FakeClock()
    errors: list[tuple[str, str]] = []
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=1.0, clock=clock)
    connection = RedisConnection(
        redis_server_module.url,
        timeout=TIMEOUT,
        breaker=breaker,
        on_error=lambda op, exc: errors.append((op, type(exc).__name__)),
    )
    cache = RedisResponseBackend(connection)
    try:
        assert await connection.ping() is True
        redis_server_module.stop()
        for _ in range(2):
            with pytest.raises(UnavailableError, match="cache_get failed"):
                await cache.get("k")
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(UnavailableError, match="presumed down"):
            await cache.set("k", b"v", 10)
        assert await connection.ping() is False
        assert [op for op, _ in errors] == ["cache_get", "cache_get", "cache_set", "ping"]
        assert errors[-1][1] == "CircuitOpenError"
        redis_server_module.start()
        clock.advance(1.0)
        assert await connection.ping() is True
        assert breaker.state is BreakerState.CLOSED
        await cache.set("k", b"v", 10)
        assert await cache.get("k") == b"v"
    finally:
        redis_server_module.start()
        await connection.aclose()


async def test_slow_redis_times_out_within_the_bound(redis_server_module: RedisServer) -> None:
    """A Redis that stops answering costs one timeout, reported as such."""
    redis_server_module.start()
    connection = RedisConnection(redis_server_module.url, timeout=0.2)
    assert await connection.ping() is True
    assert redis_server_module.proc is not None
    redis_server_module.proc.send_signal(signal.SIGSTOP)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UnavailableError, match="timed out after 200 ms"):
            await RedisRateLimitBackend(connection).acquire(
                "k", [BucketSpec("requests", 1.0, 1.0, 1.0)], 0.0
            )
        assert asyncio.get_running_loop().time() - started < 2.0
    finally:
        redis_server_module.proc.send_signal(signal.SIGCONT)
        await connection.aclose()


def test_invalid_timeout_is_refused() -> None:
    """A zero timeout would fail every call: refused at construction."""
    with pytest.raises(ValueError, match="timeout"):
        RedisConnection("redis://127.0.0.1:1/0", timeout=0)


async def test_a_restart_costs_no_failed_call(redis_server_module: RedisServer) -> None:
    """Pooled connections die with a Redis restart; the next call still succeeds first time."""
    redis_server_module.start()
    errors: list[str] = []
    connection = RedisConnection(
        redis_server_module.url, timeout=TIMEOUT, on_error=lambda op, exc: errors.append(op)
    )
    try:
        assert await connection.ping() is True
        redis_server_module.stop()
        redis_server_module.start()
        assert await connection.ping() is True
        assert errors == []
    finally:
        await connection.aclose()
