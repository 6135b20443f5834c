"""Per-key token buckets: a requests-per-minute and a tokens-per-minute budget.

A bucket holds at most its per-minute budget and refills at budget/60 per second. The storage
sits behind :class:`RateLimitBackend`, a two-operation async interface: ``acquire`` debits every
bucket only if every bucket can pay (all or nothing), ``debit`` charges unconditionally (tokens
counted after a response, which may drive a bucket negative). Both are single atomic steps, so a
Redis backend can implement each as one Lua script and share budgets across replicas.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Protocol, runtime_checkable

from hfserve.core.clock import Clock, MonotonicClock
from hfserve.errors import InvalidRequestError

__all__ = [
    "BucketSpec",
    "BucketState",
    "MemoryRateLimitBackend",
    "RateDecision",
    "RateLimitBackend",
    "RateLimiter",
    "RateLimits",
]

# Refill arithmetic is in floats: a bucket that is a rounding error short of a cost still pays,
# so waiting exactly ``retry_after`` seconds always gets the request admitted.
_EPSILON = 1e-9
# How many backend operations pass between sweeps of buckets that have refilled to full
# (a full bucket is the same as no bucket, so forgetting it bounds memory to active keys).
_SWEEP_EVERY = 1024


@dataclass(frozen=True)
class RateLimits:
    """One key's budgets per minute; 0 means unlimited."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0

    def __post_init__(self) -> None:
        if self.requests_per_minute < 0 or self.tokens_per_minute < 0:
            raise ValueError("rate limits cannot be negative (0 means unlimited)")


class RateDecision(NamedTuple):
    """The outcome of :meth:`RateLimiter.allow`, with what the ``x-ratelimit-*`` headers need.

    ``retry_after`` is how long until this same request would be admitted (0 when allowed);
    ``reset_*`` is how long until that bucket is full again; ``remaining_*`` is never negative.
    Unlimited budgets report 0s.
    """

    allowed: bool
    retry_after: float
    limit_requests: int
    remaining_requests: int
    reset_requests: float
    limit_tokens: int
    remaining_tokens: int
    reset_tokens: float


_UNLIMITED = RateDecision(True, 0.0, 0, 0, 0.0, 0, 0, 0.0)


class BucketSpec(NamedTuple):
    """One bucket an operation touches: its name, shape, and what the operation costs."""

    name: str
    capacity: float
    refill_per_second: float
    cost: float


class BucketState(NamedTuple):
    """A bucket after an operation: its level, and whether the cost was taken."""

    level: float
    debited: bool


@runtime_checkable
class RateLimitBackend(Protocol):
    """Where bucket levels live; each call is one atomic step across all its buckets.

    A missing bucket starts full. ``now`` is the caller's clock in seconds; a backend shared
    by several processes may use its own clock instead (e.g. Redis ``TIME``).
    """

    async def acquire(
        self, key: str, buckets: Sequence[BucketSpec], now: float
    ) -> Sequence[BucketState]:
        """Refill, then debit every bucket's cost only if every bucket holds at least it."""
        ...

    async def debit(
        self, key: str, buckets: Sequence[BucketSpec], now: float
    ) -> Sequence[BucketState]:
        """Refill, then debit every bucket's cost unconditionally (levels may go negative)."""
        ...


class _Bucket:
    # ``spec``: the shape it last refilled with, for the sweep to tell when it is full again.
    __slots__ = ("level", "spec", "updated")

    def __init__(self, level: float, updated: float, spec: BucketSpec) -> None:
        self.level = level
        self.updated = updated
        self.spec = spec

    def full_at(self) -> float:
        """When this bucket is full again (a full bucket is the same as no bucket)."""
        return self.updated + _time_to(self.spec.capacity, self.level, self.spec)


class MemoryRateLimitBackend:
    """Buckets in this process's memory, guarded by a lock (safe across threads)."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()
        self._ops = 0

    def __len__(self) -> int:
        """How many buckets are held (those not yet known to be full again)."""
        with self._lock:
            return len(self._buckets)

    async def acquire(
        self, key: str, buckets: Sequence[BucketSpec], now: float
    ) -> Sequence[BucketState]:
        """Debit all buckets if all can pay; otherwise change nothing."""
        return self._apply(key, buckets, now, conditional=True)

    async def debit(
        self, key: str, buckets: Sequence[BucketSpec], now: float
    ) -> Sequence[BucketState]:
        """Debit all buckets unconditionally."""
        return self._apply(key, buckets, now, conditional=False)

    def _apply(
        self, key: str, specs: Sequence[BucketSpec], now: float, *, conditional: bool
    ) -> list[BucketState]:
        levels, pay = self._take(key, specs, now, conditional)
        return [BucketState(level, pay) for level in levels]

    def decide(self, key: str, specs: Sequence[BucketSpec], now: float) -> RateDecision:
        """``acquire`` and its decision in one synchronous step (what ``allow_now`` uses).

        The same arithmetic as ``_take`` followed by ``_decision_of``, in one flat pass with
        no intermediate lists: this runs on every rate-limited request (a share of the
        cheapest routes' cost that benchmarks/overhead.py measures).
        """
        with self._lock:
            self._ops += 1
            if self._ops % _SWEEP_EVERY == 0:
                self._sweep(now)
            held = self._buckets
            pay = True
            first = second = None
            for spec in specs:
                capacity, refill, cost = spec[1], spec[2], spec[3]
                bucket = held.get((key, spec[0]))
                if bucket is None:
                    bucket = held[key, spec[0]] = _Bucket(capacity, now, spec)
                elif now > bucket.updated:
                    level = bucket.level + (now - bucket.updated) * refill
                    bucket.level = level if level < capacity else capacity
                    bucket.updated = now
                bucket.spec = spec
                if bucket.level + _EPSILON < cost:
                    pay = False
                if first is None:
                    first = bucket
                else:
                    second = bucket
            retry_after = 0.0
            req: tuple[int, int, float] = (0, 0, 0.0)
            tok = req
            for spec, bucket in ((specs[0], first), (specs[-1], second)):
                if bucket is None:
                    continue
                name, capacity, refill, cost = spec
                if pay:
                    bucket.level -= cost
                level = bucket.level
                if not pay:
                    wait = (cost - level) / refill
                    if wait > retry_after:
                        retry_after = wait
                remaining = int(level + _EPSILON)
                reset = (capacity - level) / refill
                report = (
                    int(capacity),
                    remaining if remaining > 0 else 0,
                    reset if reset > 0 else 0.0,
                )
                if name == "requests":
                    req = report
                else:
                    tok = report
        return _new_decision(RateDecision, (pay, retry_after, *req, *tok))

    def _take(
        self, key: str, specs: Sequence[BucketSpec], now: float, conditional: bool
    ) -> tuple[list[float], bool]:
        """Refill, then debit (all or nothing when ``conditional``): the levels after, and
        whether the cost was taken."""
        # Runs on every rate-limited request: written flat (no helper calls, no comprehensions,
        # the specs unpacked once rather than read by attribute).
        with self._lock:
            self._ops += 1
            if self._ops % _SWEEP_EVERY == 0:
                self._sweep(now)
            held = self._buckets
            buckets = []
            pay = True
            for spec in specs:
                name, capacity, refill, cost = spec
                bucket = held.get((key, name))
                if bucket is None:
                    bucket = held[key, name] = _Bucket(capacity, now, spec)
                elif now > bucket.updated:
                    # Threads may read the clock in one order and take the lock in another:
                    # time seen by a bucket never runs backwards.
                    level = bucket.level + (now - bucket.updated) * refill
                    bucket.level = level if level < capacity else capacity
                    bucket.updated = now
                bucket.spec = spec
                if conditional and bucket.level + _EPSILON < cost:
                    pay = False
                buckets.append(bucket)
            levels = []
            for bucket, spec in zip(buckets, specs, strict=True):
                if pay:
                    bucket.level -= spec[3]
                levels.append(bucket.level)
            return levels, pay

    def _sweep(self, now: float) -> None:
        for name in [n for n, b in self._buckets.items() if b.full_at() <= now]:
            del self._buckets[name]


def _time_to(target: float, level: float, spec: BucketSpec) -> float:
    """Seconds until a bucket at ``level`` refills to ``target`` (0 if already there)."""
    return max(0.0, (target - level) / spec.refill_per_second)


class RateLimiter:
    """Admits or refuses requests per API key against its requests/min and tokens/min budgets.

    Args:
        backend: where buckets live; default: this process's memory.
        clock: a monotonic time source; inject a ``FakeClock`` in tests.
    """

    def __init__(
        self, backend: RateLimitBackend | None = None, *, clock: Clock | None = None
    ) -> None:
        self.backend: RateLimitBackend = (
            backend if backend is not None else MemoryRateLimitBackend()
        )
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        # In-process buckets involve no I/O: allow_now() decides with them directly.
        self._memory = self.backend if isinstance(self.backend, MemoryRateLimitBackend) else None

    async def allow(
        self, key: str, limits: RateLimits, *, requests: int = 1, tokens: int = 0
    ) -> RateDecision:
        """Take ``requests`` and ``tokens`` from ``key``'s budgets if both can pay, else nothing.

        ``tokens`` is what is known up front (e.g. the prompt); :meth:`charge` adds the rest.

        Raises:
            InvalidRequestError: the request alone is larger than a whole minute's budget, so
                no amount of waiting would admit it.
            ValueError: a negative ``requests`` or ``tokens``.
        """
        decision = self.allow_now(key, limits, requests=requests, tokens=tokens)
        if decision is not None:
            return decision
        specs = _specs(limits, requests=requests, tokens=tokens)
        states = await self.backend.acquire(key, specs, self._clock.now())
        return _decision(specs, states)

    def allow_now(
        self, key: str, limits: RateLimits, *, requests: int = 1, tokens: int = 0
    ) -> RateDecision | None:
        """:meth:`allow` without awaiting anything, or None when the backend must be awaited.

        In-process buckets (and unlimited budgets) are decided here at once; a shared backend
        (Redis) returns None and the caller awaits :meth:`allow`. Per request, skipping the
        coroutine is a measurable share of a cheap route's cost.

        Raises:
            InvalidRequestError: as :meth:`allow`.
            ValueError: as :meth:`allow`.
        """
        if requests < 0 or tokens < 0:
            raise ValueError("requests and tokens cannot be negative")
        specs, oversized = _plan(
            limits.requests_per_minute, limits.tokens_per_minute, requests, tokens
        )
        if oversized is not None:
            raise InvalidRequestError(
                f"this request needs {oversized.cost:.0f} {oversized.name} but the API key "
                f"allows {oversized.capacity:.0f} {oversized.name} per minute",
                code="request_too_large",
            )
        if not specs:
            return _UNLIMITED
        if self._memory is None:
            return None
        return self._memory.decide(key, specs, self._clock.now())

    async def charge(self, key: str, limits: RateLimits, tokens: int) -> None:
        """Debit ``tokens`` counted after a response; a bucket driven negative delays later calls.

        Raises:
            ValueError: ``tokens`` is negative.
        """
        if tokens < 0:
            raise ValueError("tokens cannot be negative")
        if tokens == 0 or limits.tokens_per_minute == 0:
            return
        specs = _specs(RateLimits(tokens_per_minute=limits.tokens_per_minute), tokens=tokens)
        await self.backend.debit(key, specs, self._clock.now())


@lru_cache(maxsize=4096)
def _plan(
    rpm: int, tpm: int, requests: int, tokens: int
) -> tuple[tuple[BucketSpec, ...], BucketSpec | None]:
    """The buckets a call touches, and the first whose cost exceeds its capacity (or None).

    Cached: nearly every call asks for the same few shapes (one request, a key's limits).
    """
    specs = []
    if rpm:
        specs.append(BucketSpec("requests", float(rpm), rpm / 60.0, float(requests)))
    if tpm:
        specs.append(BucketSpec("tokens", float(tpm), tpm / 60.0, float(tokens)))
    oversized = next((spec for spec in specs if spec.cost > spec.capacity), None)
    return tuple(specs), oversized


def _specs(limits: RateLimits, *, requests: int = 0, tokens: int = 0) -> tuple[BucketSpec, ...]:
    return _plan(limits.requests_per_minute, limits.tokens_per_minute, requests, tokens)[0]


def _decision(specs: Sequence[BucketSpec], states: Sequence[BucketState]) -> RateDecision:
    return _decision_of(specs, [state.level for state in states], all(s.debited for s in states))


_new_decision = tuple.__new__  # RateDecision without NamedTuple's Python-level __new__


def _decision_of(
    specs: Sequence[BucketSpec], levels: Sequence[float], allowed: bool
) -> RateDecision:
    # Per request: written flat, with _time_to inlined.
    retry_after = 0.0
    req: tuple[int, int, float] = (0, 0, 0.0)
    tok = req
    for spec, level in zip(specs, levels, strict=True):
        name, capacity, refill, cost = spec
        if not allowed:
            wait = (cost - level) / refill
            if wait > retry_after:
                retry_after = wait
        # int() truncates towards zero: the same as floor() for the positive levels it keeps.
        remaining = int(level + _EPSILON)
        reset = (capacity - level) / refill
        report = (int(capacity), remaining if remaining > 0 else 0, reset if reset > 0 else 0.0)
        if name == "requests":
            req = report
        else:
            tok = report
    return _new_decision(RateDecision, (allowed, retry_after, *req, *tok))
