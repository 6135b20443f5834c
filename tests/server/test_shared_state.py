"""SharedState: memory by default, Redis when configured, and the failure policy in between."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from hfserve.core.clock import FakeClock
from hfserve.core.keystore import KeyStore
from hfserve.core.rate_limiter import (
    BucketSpec,
    BucketState,
    MemoryRateLimitBackend,
    RateLimiter,
    RateLimits,
)
from hfserve.core.redis_backends import RedisConnection, RedisRevocations
from hfserve.core.response_cache import MemoryResponseBackend
from hfserve.errors import UnavailableError
from hfserve.server.metrics import Metrics
from hfserve.server.shared_state import FailurePolicyBackend, RedisErrorReporter, SharedState
from hfserve.settings import Settings
from tests.fixtures.redis_server import RedisServer
from tests.server.conftest import ClientFactory


class _DownBackend:
    """A rate-limit backend whose store is unreachable."""

    async def acquire(
        self, key: str, buckets: Sequence[BucketSpec], now: float
    ) -> Sequence[BucketState]:
        raise UnavailableError("redis down")

    async def debit(
        self, key: str, buckets: Sequence[BucketSpec], now: float
    ) -> Sequence[BucketState]:
        raise UnavailableError("redis down")


def _metric(metrics: Metrics, op: str) -> float:
    value = metrics.registry.get_sample_value("hfserve_redis_errors_total", {"op": op})
    return value or 0.0


# --- memory (the default) ----------------------------------------------------------------------


async def test_memory_by_default(tmp_path: Path) -> None:
    """No redis_url: memory backends, nothing to start, nothing to add to readiness."""
    state = SharedState.from_settings(Settings(keys_file=tmp_path / "k.json"))
    assert not state.shared
    assert isinstance(state.rate_limiter.backend, MemoryRateLimitBackend)
    assert state.response_cache is not None
    assert isinstance(state.response_cache.backend, MemoryResponseBackend)
    await state.start()
    assert state.revoked_ids() == frozenset()
    report = await state.ready_report()
    assert (report.checks, report.ok) == ({}, True)
    await state.aclose()
    off = SharedState.from_settings(Settings(response_cache=False))
    assert off.response_cache is None


# --- failure policy ----------------------------------------------------------------------------


async def test_fail_open_admits_and_reports_the_full_budget() -> None:
    """Open: an unreachable store admits every request (and post-hoc charges are dropped)."""
    limiter = RateLimiter(FailurePolicyBackend(_DownBackend(), fail_open=True))
    limits = RateLimits(requests_per_minute=2, tokens_per_minute=100)
    decisions = [await limiter.allow("k", limits, tokens=10) for _ in range(5)]
    assert all(d.allowed for d in decisions)
    assert (decisions[0].remaining_requests, decisions[0].remaining_tokens) == (1, 90)
    await limiter.charge("k", limits, 50)


async def test_fail_closed_refuses_with_a_retry_after() -> None:
    """Closed: refused, told to retry once one request's worth would have refilled."""
    limiter = RateLimiter(FailurePolicyBackend(_DownBackend(), fail_open=False))
    decision = await limiter.allow("k", RateLimits(requests_per_minute=6))
    assert not decision.allowed
    assert decision.retry_after == pytest.approx(10.0)
    await limiter.charge("k", RateLimits(tokens_per_minute=6), 1)


async def test_policy_passes_through_a_healthy_backend() -> None:
    """While the store answers, the policy is invisible."""
    limiter = RateLimiter(
        FailurePolicyBackend(MemoryRateLimitBackend(), fail_open=True), clock=FakeClock()
    )
    limits = RateLimits(requests_per_minute=1, tokens_per_minute=10)
    assert (await limiter.allow("k", limits)).allowed
    await limiter.charge("k", limits, 10)
    assert not (await limiter.allow("k", limits)).allowed


def test_error_reporter_counts_every_error_and_logs_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every failure is a metric sample; the log says so once per interval, with a tally."""
    metrics = Metrics()
    clock = FakeClock()
    report = RedisErrorReporter(metrics, clock=clock, log_every=10.0)
    with caplog.at_level(logging.WARNING, logger="hfserve.server"):
        for _ in range(3):
            report("rate_limit", TimeoutError("slow"))
        report("cache_get", ConnectionError("refused"))
        clock.advance(10.0)
        report("cache_get", ConnectionError("refused"))
    assert _metric(metrics, "rate_limit") == 3
    assert _metric(metrics, "cache_get") == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "Redis rate_limit failed (TimeoutError: slow)" in messages[0]
    assert "(3 similar errors since the last warning)" in messages[1]
    RedisErrorReporter(None)("ping", OSError("no metrics"))


# --- Redis -------------------------------------------------------------------------------------


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A fresh real redis-server's URL."""
    return redis_server.url


@pytest.fixture
async def make_state(tmp_path: Path) -> AsyncIterator[Any]:
    """Build SharedStates from settings overrides; all closed at the end."""
    built: list[SharedState] = []

    def factory(clock: FakeClock | None = None, **overrides: Any) -> SharedState:
        settings = Settings(keys_file=tmp_path / "keys.json", redis_timeout_ms=1000, **overrides)
        state = SharedState.from_settings(settings, metrics=Metrics(), clock=clock)
        built.append(state)
        return state

    yield factory
    for state in built:
        await state.aclose()


async def test_replicas_share_budget_cache_and_revocations(make_state: Any, redis_url: str) -> None:
    """Two SharedStates on one Redis act as one: one budget, one cache, one revocation list."""
    a: SharedState = make_state(redis_url=redis_url)
    b: SharedState = make_state(redis_url=redis_url)
    assert a.shared
    await a.start()
    await b.start()
    limits = RateLimits(requests_per_minute=3)
    granted = [await s.rate_limiter.allow("key_1", limits) for s in (a, b, a, b, a)]
    assert [d.allowed for d in granted] == [True, True, True, False, False]
    assert a.response_cache is not None
    assert b.response_cache is not None
    assert await a.response_cache.put("req", b"answer")
    assert await b.response_cache.get("req") == b"answer"
    assert a.connection is not None
    await RedisRevocations(a.connection).publish("key_9")
    assert b.watcher is not None
    await b.watcher.refresh()
    assert b.revoked_ids() == {"key_9"}
    report = await a.ready_report()
    assert (report.checks, report.ok) == ({"redis": True}, True)


@pytest.mark.parametrize("fail_open", [True, False])
async def test_outage_follows_the_policy_then_recovers(
    make_state: Any,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    fail_open: bool,
) -> None:
    """Redis down: limits fail open/closed, cache bypassed, readiness per policy; back: normal."""
    clock = FakeClock()
    state: SharedState = make_state(
        clock=clock, redis_url=redis_server.url, rate_limit_fail_open=fail_open
    )
    await state.start()
    limits = RateLimits(requests_per_minute=1)
    assert (await state.rate_limiter.allow("k", limits)).allowed
    assert state.response_cache is not None
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="hfserve.server"):
        decisions = [await state.rate_limiter.allow("k", limits) for _ in range(4)]
    assert [d.allowed for d in decisions] == [fail_open] * 4
    assert await state.response_cache.get("q") is None
    assert await state.response_cache.put("q", b"a") is False
    report = await state.ready_report()
    assert (report.checks, report.ok) == ({"redis": False}, fail_open)
    assert sum("Redis rate_limit failed" in r.getMessage() for r in caplog.records) == 1

    assert any("presumed down" in r.getMessage() for r in caplog.records)

    redis_server.start()
    clock.advance(1.0)  # the breaker's recovery time: the next call probes Redis
    with caplog.at_level(logging.INFO, logger="hfserve.server"):
        report = await state.ready_report()
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert (report.checks, report.ok) == ({"redis": True}, True)
    # Redis came back empty (no persistence): a fresh budget, enforced again.
    assert [(await state.rate_limiter.allow("k", limits)).allowed for _ in range(2)] == [
        True,
        False,
    ]
    assert await state.response_cache.put("q", b"a") is True


async def test_start_with_redis_down_is_not_fatal(
    make_state: Any, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica that starts during an outage serves on the policy and says so once."""
    redis_server.stop()
    state: SharedState = make_state(redis_url=redis_server.url)
    with caplog.at_level(logging.WARNING, logger="hfserve.server"):
        await state.start()
    assert any("unreachable at start" in r.getMessage() for r in caplog.records)
    assert state.revoked_ids() == frozenset()


# --- wired into the app ------------------------------------------------------------------------


@pytest.fixture
def redis_client(
    make_client: ClientFactory, redis_server: RedisServer, tiny_models: Any
) -> TestClient:
    """The real app on the tiny embedding model, with Redis shared state."""
    return make_client(  # type: ignore[no-any-return]
        redis_url=redis_server.url,
        redis_timeout_ms=1000,
        models=[f"tiny-bert={tiny_models.bert}"],
    )


def test_app_reports_redis_in_ready_and_metrics(
    redis_client: TestClient, redis_server: RedisServer
) -> None:
    """/ready shows Redis health (failing open, an outage keeps it 200); errors are counted."""
    body = redis_client.get("/ready").json()
    assert body["redis"] is True
    payload = {"model": "tiny-bert", "input": "hello"}
    assert redis_client.post("/v1/embeddings", json=payload).headers["x-cache"] == "miss"
    assert redis_client.post("/v1/embeddings", json=payload).headers["x-cache"] == "hit"
    redis_server.stop()
    response = redis_client.get("/ready")
    assert response.status_code == 200
    assert response.json()["redis"] is False
    embed = redis_client.post("/v1/embeddings", json=payload)
    assert embed.status_code == 200
    assert embed.headers["x-cache"] == "miss"
    scrape = redis_client.get("/metrics").text
    assert 'hfserve_redis_errors_total{op="ping"}' in scrape
    assert 'hfserve_redis_errors_total{op="cache_get"}' in scrape


def test_redis_revocation_reaches_the_app(
    make_client: ClientFactory, redis_server: RedisServer, tmp_path: Path, tiny_models: Any
) -> None:
    """A key revoked in Redis (not in this replica's file) is refused by the running app."""
    keys_file = tmp_path / "replica-keys.json"
    record, plaintext = KeyStore(keys_file).create("svc")
    client = make_client(
        redis_url=redis_server.url, keys_file=keys_file, models=[f"tiny-bert={tiny_models.bert}"]
    )
    auth = {"Authorization": f"Bearer {plaintext}"}
    assert client.get("/v1/models", headers=auth).status_code == 200

    async def revoke() -> None:
        connection = RedisConnection(redis_server.url, timeout=1.0)
        try:
            await RedisRevocations(connection).publish(record.id)
        finally:
            await connection.aclose()

    asyncio.run(revoke())
    deadline = time.monotonic() + 1.0
    status = 200
    while time.monotonic() < deadline and status == 200:
        status = client.get("/v1/models", headers=auth).status_code
    assert status == 401
    assert "revoked" in client.get("/v1/models", headers=auth).json()["error"]["message"]


def test_redis_without_response_cache(redis_url: str) -> None:
    """The cache switch is honoured with Redis too (no I/O happens at construction)."""
    state = SharedState.from_settings(Settings(redis_url=redis_url, response_cache=False))
    assert state.shared
    assert state.response_cache is None
