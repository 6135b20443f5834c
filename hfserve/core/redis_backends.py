"""Redis backends for state that N replicas must share: rate limits, responses, revocations.

The ``redis`` package is imported lazily (when a :class:`RedisConnection` is built), so the
core still imports only the standard library. Every operation is bounded by one timeout and
guarded by a circuit breaker: a Redis that is down or slow costs a request at most one timeout,
and after a few failures nothing at all until a probe finds it back. Failures surface as
:class:`~hfserve.errors.UnavailableError`; what to do about them (fail open, bypass the cache,
keep the last known revocations) is the caller's policy, not this module's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from hfserve.core.breaker import CircuitBreaker
from hfserve.core.clock import Clock
from hfserve.core.rate_limiter import BucketSpec, BucketState
from hfserve.core.response_cache import DEFAULT_MAX_VALUE_BYTES
from hfserve.errors import CircuitOpenError, UnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "DEFAULT_NAMESPACE",
    "RedisConnection",
    "RedisRateLimitBackend",
    "RedisResponseBackend",
    "RedisRevocations",
    "RevocationWatcher",
]

T = TypeVar("T")
ErrorHook = Callable[[str, Exception], None]
"""Called with ``(operation, error)`` for every failed Redis operation (metrics, logs)."""

DEFAULT_NAMESPACE = "hfserve"
_log = logging.getLogger(__name__)

# One atomic step over all of a key's buckets, the same arithmetic as MemoryRateLimitBackend
# (IEEE doubles in both, so results match bit for bit). Levels travel as "%.17g" strings: Lua
# numbers returned to Redis are truncated to integers, and Redis formats stored numbers with
# only 14 digits. Time is Redis's own clock unless the caller passes one (tests): replicas'
# monotonic clocks are not comparable, the one server's clock is. The hash expires once every
# bucket would have refilled, since a full bucket is the same as no bucket.
_BUCKET_SCRIPT = """
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[2])
end
local conditional = ARGV[1] == '1'
local n = (#ARGV - 2) / 4
local names, caps, rates, costs, levels, stamps = {}, {}, {}, {}, {}, {}
local pay = true
for i = 1, n do
  local b = 2 + (i - 1) * 4
  names[i] = ARGV[b + 1]
  caps[i] = tonumber(ARGV[b + 2])
  rates[i] = tonumber(ARGV[b + 3])
  costs[i] = tonumber(ARGV[b + 4])
  local stored = redis.call('HMGET', KEYS[1], names[i] .. ':level', names[i] .. ':updated')
  local level, updated = tonumber(stored[1]), tonumber(stored[2])
  if level == nil or updated == nil then
    level, updated = caps[i], now
  else
    level = math.min(caps[i], level + math.max(0, now - updated) * rates[i])
    updated = math.max(updated, now)
  end
  levels[i], stamps[i] = level, updated
  if conditional and level + 1e-9 < costs[i] then
    pay = false
  end
end
local out = {pay and 1 or 0}
local ttl = 0
for i = 1, n do
  if pay then
    levels[i] = levels[i] - costs[i]
  end
  redis.call('HSET', KEYS[1], names[i] .. ':level', string.format('%.17g', levels[i]),
    names[i] .. ':updated', string.format('%.17g', stamps[i]))
  ttl = math.max(ttl, (caps[i] - levels[i]) / rates[i])
  out[i + 1] = string.format('%.17g', levels[i])
end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000) + 1000)
return out
"""


class RedisConnection:
    """One Redis client (a connection pool) whose every operation is bounded and guarded.

    Args:
        url: ``redis://[user:password@]host:port/db`` (also ``rediss://``, ``unix://``).
        timeout: seconds any one operation may take, connecting included.
        max_connections: size of the connection pool.
        on_error: told about every failed operation (for metrics and logs).
        breaker: refuses calls fast after repeated failures; default: opens after 3, probes
            again after 1 s.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        max_connections: int = 64,
        on_error: ErrorHook | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        self.timeout = float(timeout)
        # One immediate retry: a pooled connection that died with a Redis restart fails once
        # on its next use, and a fresh connection should answer for it. The outer timeout still
        # bounds the whole operation, and the breaker (not a retry loop) rides out an outage.
        self.client: Redis = Redis.from_url(
            url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1),
            max_connections=max_connections,
        )
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._on_error = on_error
        self.breaker = (
            breaker
            if breaker is not None
            else CircuitBreaker(failure_threshold=3, recovery_timeout=1.0, name="redis")
        )

    async def call(self, op: str, fn: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``fn(client)`` within the timeout, through the breaker.

        Raises:
            UnavailableError: Redis failed, timed out, or is presumed down (breaker open).
        """
        try:
            return await self.breaker.call(lambda: self._bounded(fn))
        except CircuitOpenError as exc:
            error: Exception = exc
            message = f"Redis is presumed down ({op} not attempted)"
        except TimeoutError as exc:
            error = exc
            message = f"Redis {op} timed out after {self.timeout * 1000:.0f} ms"
        except self._errors as exc:
            error = exc  # type: ignore[assignment]
            message = f"Redis {op} failed: {type(exc).__name__}: {exc}"
        if self._on_error is not None:
            self._on_error(op, error)
        raise UnavailableError(message, retry_after=1.0) from error

    async def _bounded(self, fn: Callable[[Redis], Awaitable[T]]) -> T:
        async with asyncio.timeout(self.timeout):
            return await fn(self.client)

    async def ping(self) -> bool:
        """Whether Redis answers now (a failed ping is also counted and reported)."""
        try:
            await self.call("ping", lambda client: client.ping())
        except UnavailableError:
            return False
        return True

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        await self.client.aclose()


class RedisRateLimitBackend:
    """Token buckets in Redis, one Lua script per operation: replicas share one budget per key.

    Args:
        connection: the bounded Redis connection.
        namespace: prefix of every key (``<namespace>:rl:<key>``).
        clock: use the caller's ``now`` instead of Redis ``TIME`` (deterministic tests only:
            replicas' clocks disagree).
    """

    def __init__(
        self,
        connection: RedisConnection,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        clock: Clock | None = None,
    ) -> None:
        self._connection = connection
        self._prefix = f"{namespace}:rl:"
        self._use_caller_time = clock is not None
        self._script = connection.client.register_script(_BUCKET_SCRIPT)

    async def acquire(
        self, key: str, buckets: Sequence[BucketSpec], now: float
    ) -> Sequence[BucketState]:
        """Debit all buckets if all can pay; otherwise change nothing but the refill."""
        return await self._run("rate_limit", key, buckets, now, conditional=True)

    async def debit(
        self, key: str, buckets: Sequence[BucketSpec], now: float
    ) -> Sequence[BucketState]:
        """Debit all buckets unconditionally."""
        return await self._run("rate_limit", key, buckets, now, conditional=False)

    async def _run(
        self, op: str, key: str, specs: Sequence[BucketSpec], now: float, *, conditional: bool
    ) -> list[BucketState]:
        if not specs:
            return []
        args: list[str] = ["1" if conditional else "0", repr(now) if self._use_caller_time else ""]
        for spec in specs:
            args += [spec.name, repr(spec.capacity), repr(spec.refill_per_second), repr(spec.cost)]

        async def run(client: Redis) -> Any:
            return await self._script(keys=[self._prefix + key], args=args, client=client)

        reply = await self._connection.call(op, run)
        debited = int(reply[0]) == 1
        return [BucketState(level=float(raw), debited=debited) for raw in reply[1:]]


class RedisResponseBackend:
    """Cached responses in Redis under ``<namespace>:cache:<key>``, with Redis-side TTLs.

    Keys from :func:`~hfserve.core.response_cache.make_cache_key` already fold in the model and
    its version; the namespace separates deployments sharing one Redis.
    """

    def __init__(
        self,
        connection: RedisConnection,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        if max_value_bytes < 0:
            raise ValueError(f"max_value_bytes must be >= 0, got {max_value_bytes}")
        self._connection = connection
        self._prefix = f"{namespace}:cache:"
        self._max_value_bytes = max_value_bytes

    async def get(self, key: str) -> bytes | None:
        """The stored value, or ``None`` when absent or expired.

        Raises:
            UnavailableError: Redis failed or is presumed down.
        """
        value = await self._connection.call("cache_get", lambda c: c.get(self._prefix + key))
        # The client does not decode responses, so a value is always bytes.
        return cast("bytes | None", value)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds; an oversized value or ``ttl <= 0`` drops the key.

        Raises:
            UnavailableError: Redis failed or is presumed down.
        """
        name = self._prefix + key
        if ttl <= 0 or len(value) > self._max_value_bytes:
            # Never leave an older answer behind a refused store: it would be served stale.
            await self._connection.call("cache_set", lambda c: c.delete(name))
            return
        ttl_ms = max(1, math.ceil(ttl * 1000))
        await self._connection.call("cache_set", lambda c: c.set(name, value, px=ttl_ms))


class RedisRevocations:
    """Revoked key ids in Redis: a set, plus a version token replaced on every change."""

    def __init__(self, connection: RedisConnection, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._connection = connection
        self._set_key = f"{namespace}:revoked"
        self._version_key = f"{namespace}:revoked:version"

    async def publish(self, key_id: str) -> None:
        """Record ``key_id`` as revoked for every replica.

        Raises:
            UnavailableError: Redis failed or is presumed down.
        """

        async def run(client: Redis) -> Any:
            async with client.pipeline(transaction=True) as pipe:
                pipe.sadd(self._set_key, key_id)
                # A fresh random token, not a counter: after Redis restarts empty, a counter
                # would count up to values watchers have already seen and hide new ids.
                pipe.set(self._version_key, secrets.token_hex(8))
                return await pipe.execute()

        await self._connection.call("revocations", run)

    async def version(self) -> str | None:
        """The version token (``None`` before any revocation).

        Raises:
            UnavailableError: Redis failed or is presumed down.
        """
        raw = await self._connection.call("revocations", lambda c: c.get(self._version_key))
        return _text(raw)

    async def snapshot(self) -> tuple[str | None, frozenset[str]]:
        """The version and the revoked ids, read together in one transaction.

        Raises:
            UnavailableError: Redis failed or is presumed down.
        """

        async def run(client: Redis) -> Any:
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(self._version_key)
                pipe.smembers(self._set_key)
                return await pipe.execute()

        raw_version, members = await self._connection.call("revocations", run)
        return _text(raw_version), frozenset(m.decode("utf-8", "replace") for m in members)


class RevocationWatcher:
    """Keeps this process's view of revoked key ids within ``interval`` seconds of Redis.

    A version key is polled rather than a pub/sub channel listened to: a message published
    while a replica is disconnected is lost, a counter is not. While Redis is unreachable the
    last known ids stay in force (a revocation is never forgotten by an outage).
    """

    def __init__(self, revocations: RedisRevocations, *, interval: float = 0.25) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self._revocations = revocations
        self._interval = float(interval)
        self._ids: frozenset[str] = frozenset()
        self._version: str | None = None
        self._seen = False
        self._healthy = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def revoked_ids(self) -> frozenset[str]:
        """The revoked ids last seen in Redis (the ``KeyStore`` ``revoked_ids`` hook)."""
        return self._ids

    @property
    def healthy(self) -> bool:
        """Whether the last refresh reached Redis."""
        return self._healthy

    async def refresh(self) -> bool:
        """Re-read the ids if their version moved; return whether Redis answered."""
        try:
            version = await self._revocations.version()
            if not self._seen or version != self._version:
                version, ids = await self._revocations.snapshot()
                # A union, never a replacement: revocations are permanent, and a Redis that
                # restarted empty must not give a revoked key a second life.
                self._ids = self._ids | ids
                self._version = version
                self._seen = True
        except UnavailableError:
            self._healthy = False
            return False
        self._healthy = True
        return True

    async def start(self) -> None:
        """Load the ids once (best effort), then keep refreshing them in the background."""
        if self._task is not None:
            return
        self._stop.clear()
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="hfserve-revocation-watcher")

    async def _run(self) -> None:
        while not self._stop.is_set():
            # Waiting on the stop event (not sleeping) lets aclose() end the loop at once.
            try:
                async with asyncio.timeout(self._interval):
                    await self._stop.wait()
            except TimeoutError:
                await self.refresh()

    async def aclose(self) -> None:
        """Stop refreshing."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None


def _text(raw: Any) -> str | None:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None
