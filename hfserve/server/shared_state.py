"""State a server shares with its replicas: rate limits, cached responses, revoked keys.

Memory backends when ``redis_url`` is unset (one process is the whole truth); Redis backends
when it is set, so N replicas grant one budget per key, share one cache and refuse a revoked
key within a second.

Failure policy when Redis is down or slower than ``redis_timeout_ms``:

- rate limiting fails open (admit) or closed (refuse with 429) per ``rate_limit_fail_open``;
- the response cache is bypassed (a miss, a skipped store), never an error;
- auth keeps working from the keys file and the last revocations seen in Redis;
- each failed operation counts in ``hfserve_redis_errors_total{op}``, and a warning is logged
  at most once per ``log_every`` seconds;
- recovery is automatic: a circuit breaker stops calling a dead Redis, probes it again after a
  second, and everything flows again once it answers; no restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from hfserve.core.breaker import BreakerState, CircuitBreaker
from hfserve.core.clock import Clock, MonotonicClock
from hfserve.core.rate_limiter import (
    BucketSpec,
    BucketState,
    RateLimitBackend,
    RateLimiter,
)
from hfserve.core.redis_backends import (
    RedisConnection,
    RedisRateLimitBackend,
    RedisResponseBackend,
    RedisRevocations,
    RevocationWatcher,
)
from hfserve.core.response_cache import MemoryResponseBackend, ResponseCache
from hfserve.errors import UnavailableError
from hfserve.server.metrics import Metrics
from hfserve.settings import Settings

__all__ = ["FailurePolicyBackend", "ReadyReport", "RedisErrorReporter", "SharedState"]

log = logging.getLogger("hfserve.server")


@dataclass(frozen=True)
class ReadyReport:
    """What a readiness dependency says: details for ``/ready``, and whether it blocks it."""

    checks: dict[str, bool]
    ok: bool


class FailurePolicyBackend:
    """A rate-limit backend that turns its inner backend's outage into the configured policy.

    Open: every bucket pays (nothing is recorded, so nothing is owed later). Closed: nothing
    pays, and the caller is told to retry once one request's worth would have refilled.
    """

    def __init__(self, inner: RateLimitBackend, *, fail_open: bool) -> None:
        self.inner = inner
        self.fail_open = fail_open

    async def acquire(
        self, key: str, buckets: Sequence[BucketSpec], now: float
    ) -> Sequence[BucketState]:
        """The inner backend's answer, or the policy's when it is unavailable."""
        try:
            return await self.inner.acquire(key, buckets, now)
        except UnavailableError:
            return self._fallback(buckets)

    async def debit(
        self, key: str, buckets: Sequence[BucketSpec], now: float
    ) -> Sequence[BucketState]:
        """The inner backend's answer, or the policy's when it is unavailable."""
        try:
            return await self.inner.debit(key, buckets, now)
        except UnavailableError:
            return self._fallback(buckets)

    def _fallback(self, buckets: Sequence[BucketSpec]) -> list[BucketState]:
        if self.fail_open:
            return [BucketState(level=b.capacity - b.cost, debited=True) for b in buckets]
        return [BucketState(level=0.0, debited=False) for b in buckets]


class RedisErrorReporter:
    """Counts every failed Redis operation and logs a warning at most once per ``log_every``."""

    def __init__(
        self, metrics: Metrics | None, *, clock: Clock | None = None, log_every: float = 10.0
    ) -> None:
        self._metrics = metrics
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._log_every = log_every
        self._lock = threading.Lock()
        self._next_log = float("-inf")
        self._suppressed = 0

    def __call__(self, op: str, error: Exception) -> None:
        """Record one failed operation ``op``."""
        if self._metrics is not None:
            self._metrics.redis_errors.labels(op).inc()
        with self._lock:
            now = self._clock.now()
            if now < self._next_log:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next_log = now + self._log_every
        log.warning(
            "Redis %s failed (%s: %s); serving on the failure policy "
            "(%d similar errors since the last warning)",
            op,
            type(error).__name__,
            error,
            suppressed,
        )


def _log_redis_state(old: BreakerState, new: BreakerState) -> None:
    """Say when Redis is given up on and when it is back (the transitions, not every call)."""
    if new is BreakerState.OPEN and old is BreakerState.CLOSED:
        log.warning("Redis presumed down after repeated failures; probing it every second")
    elif new is BreakerState.CLOSED:
        log.info("Redis is reachable again: rate limits, cache and revocations are shared again")


class SharedState:
    """The rate limiter, response cache and revocation view a server shares with replicas.

    Build it with :meth:`from_settings`; :meth:`start` and :meth:`aclose` run in the app's
    lifespan. Without Redis both are no-ops and readiness has nothing to add.
    """

    def __init__(
        self,
        *,
        rate_limiter: RateLimiter,
        response_cache: ResponseCache | None,
        connection: RedisConnection | None = None,
        watcher: RevocationWatcher | None = None,
        fail_open: bool = True,
    ) -> None:
        self.rate_limiter = rate_limiter
        self.response_cache = response_cache
        self.connection = connection
        self.watcher = watcher
        self.fail_open = fail_open

    @classmethod
    def from_settings(
        cls, settings: Settings, *, metrics: Metrics | None = None, clock: Clock | None = None
    ) -> SharedState:
        """Memory backends, or Redis ones when ``settings.redis_url`` is set (no I/O here)."""
        if settings.redis_url is None:
            cache = None
            if settings.response_cache:
                cache = ResponseCache(
                    MemoryResponseBackend(max_bytes=settings.response_cache_memory, clock=clock),
                    ttl=settings.response_cache_ttl,
                )
            return cls(rate_limiter=RateLimiter(clock=clock), response_cache=cache)
        connection = RedisConnection(
            settings.redis_url,
            timeout=settings.redis_timeout_ms / 1000,
            on_error=RedisErrorReporter(metrics, clock=clock),
            # After 3 failures in a row stop calling Redis; probe it again a second later.
            breaker=CircuitBreaker(
                failure_threshold=3,
                recovery_timeout=1.0,
                clock=clock,
                name="redis",
                on_state_change=_log_redis_state,
            ),
        )
        backend = FailurePolicyBackend(
            RedisRateLimitBackend(connection), fail_open=settings.rate_limit_fail_open
        )
        cache = None
        if settings.response_cache:
            # Redis's own maxmemory policy bounds the total; each value is bounded here.
            cache = ResponseCache(RedisResponseBackend(connection), ttl=settings.response_cache_ttl)
        return cls(
            rate_limiter=RateLimiter(backend, clock=clock),
            response_cache=cache,
            connection=connection,
            watcher=RevocationWatcher(RedisRevocations(connection)),
            fail_open=settings.rate_limit_fail_open,
        )

    @property
    def shared(self) -> bool:
        """Whether state lives in Redis (shared with replicas) rather than this process."""
        return self.connection is not None

    def revoked_ids(self) -> frozenset[str]:
        """Key ids revoked through Redis (the ``KeyStore`` hook); empty without Redis."""
        return self.watcher.revoked_ids() if self.watcher is not None else frozenset()

    async def start(self) -> None:
        """Load revocations and start watching them; a Redis down now is not fatal."""
        if self.watcher is not None:
            await self.watcher.start()
            if not self.watcher.healthy:
                log.warning("Redis is unreachable at start; serving on the failure policy")

    async def aclose(self) -> None:
        """Stop watching and close the Redis connection pool."""
        if self.watcher is not None:
            await self.watcher.aclose()
        if self.connection is not None:
            await self.connection.aclose()

    async def ready_report(self) -> ReadyReport:
        """Redis health for ``/ready``; only a fail-closed replica is unready without Redis.

        Failing open, a replica serves fine without Redis, and taking every replica out of
        rotation at once would turn a Redis outage into a full one.
        """
        if self.connection is None:
            return ReadyReport({}, ok=True)
        healthy = await self.connection.ping()
        return ReadyReport({"redis": healthy}, ok=healthy or self.fail_open)
