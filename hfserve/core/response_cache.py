"""A cache of encoded responses to deterministic requests, in front of a pluggable backend.

The backend is memory here and Redis elsewhere; both sit behind ``ResponseCacheBackend``.
``ResponseCache`` treats its backend as optional infrastructure: a backend that fails turns
into a miss or a skipped store, never into a failed request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from hfserve.core.clock import Clock, MonotonicClock
from hfserve.core.lru import SizedLRU

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "MemoryResponseBackend",
    "ResponseCache",
    "ResponseCacheBackend",
    "ResponseCacheStats",
    "make_cache_key",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_VALUE_BYTES = 1024 * 1024


def make_cache_key(model: str, request: Mapping[str, Any], *, namespace: str = "") -> str:
    """Return the SHA-256 hex digest of the canonical JSON of ``(namespace, model, request)``.

    Keys are independent of dict ordering. A JSON array keeps the three parts apart, so no
    choice of strings can make two different triples collide on their text.

    Raises:
        TypeError: ``request`` holds a value JSON cannot encode.
    """
    canonical = json.dumps(
        [namespace, model, request],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@runtime_checkable
class ResponseCacheBackend(Protocol):
    """Where cached responses live: bytes by key, each with a time to live."""

    async def get(self, key: str) -> bytes | None:
        """Return the stored value for ``key``, or ``None`` when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds."""
        ...


@dataclass(frozen=True)
class _Stored:
    value: bytes
    expires_at: float
    size_bytes: int


class MemoryResponseBackend:
    """An in-process backend: per-entry TTL and an LRU byte budget; thread-safe.

    An entry's size is the UTF-8 length of its key plus the length of its value, so the
    budget bounds what the cache really holds. A budget of 0 stores nothing.
    """

    def __init__(self, *, max_bytes: int, clock: Clock | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._max_bytes = max_bytes
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._lock = threading.Lock()
        self._entries: SizedLRU[str, _Stored] = SizedLRU()

    async def get(self, key: str) -> bytes | None:
        """Return the value for ``key`` and mark it recently used; expired entries are dropped."""
        with self._lock:
            stored = self._entries.get(key)
            if stored is None:
                return None
            if self._clock.now() >= stored.expires_at:
                self._entries.pop(key)
                return None
            self._entries.touch(key)
            return stored.value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds, evicting expired then least-recent entries.

        A value that can never fit the budget, or a ``ttl`` <= 0, is not stored (and any older
        value under ``key`` is dropped, so a stale answer is never served).
        """
        size = len(key.encode("utf-8")) + len(value)
        with self._lock:
            if key in self._entries:
                self._entries.pop(key)
            if ttl <= 0 or size > self._max_bytes:
                return
            now = self._clock.now()
            if self._entries.total_bytes + size > self._max_bytes:
                self._purge_expired(now)
            while self._entries.total_bytes + size > self._max_bytes:
                self._entries.pop(self._entries.oldest())
            self._entries.put(key, _Stored(value, now + ttl, size))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def total_bytes(self) -> int:
        """Bytes held now (keys and values), expired-but-not-yet-dropped entries included."""
        with self._lock:
            return self._entries.total_bytes

    def _purge_expired(self, now: float) -> None:
        for key in [k for k, stored in self._entries.items() if now >= stored.expires_at]:
            self._entries.pop(key)


@dataclass(frozen=True)
class ResponseCacheStats:
    """Counters of a ``ResponseCache``.

    ``errors`` counts backend failures; each one is also counted as a miss (on ``get``) or as
    skipped (on ``put``), so ``hits + misses`` equals the number of lookups.
    """

    hits: int
    misses: int
    stores: int
    skipped: int
    errors: int


class ResponseCache:
    """Get and put encoded responses through a backend that is allowed to fail."""

    def __init__(
        self,
        backend: ResponseCacheBackend,
        *,
        ttl: float,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        if max_value_bytes < 0:
            raise ValueError(f"max_value_bytes must be >= 0, got {max_value_bytes}")
        self._backend = backend
        self._ttl = ttl
        self._max_value_bytes = max_value_bytes
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._stores = 0
        self._skipped = 0
        self._errors = 0
        # Logged on the transition only, so a Redis outage is one warning, not one per request.
        self._failing = False

    @property
    def ttl(self) -> float:
        """Seconds a stored response stays valid."""
        return self._ttl

    @property
    def backend(self) -> ResponseCacheBackend:
        """The backend responses are stored in."""
        return self._backend

    async def get(self, key: str) -> bytes | None:
        """Return the cached response for ``key``, or ``None`` on a miss or a backend failure."""
        try:
            value = await self._backend.get(key)
        except Exception as exc:
            self._record_failure("get", exc)
            self._count(misses=1)
            return None
        self._record_success()
        if value is None:
            self._count(misses=1)
            return None
        self._count(hits=1)
        return value

    async def put(self, key: str, value: bytes) -> bool:
        """Store ``value`` under ``key``; return False when skipped (too big or backend error)."""
        if len(value) > self._max_value_bytes:
            self._count(skipped=1)
            return False
        try:
            await self._backend.set(key, value, self._ttl)
        except Exception as exc:
            self._record_failure("set", exc)
            self._count(skipped=1)
            return False
        self._record_success()
        self._count(stores=1)
        return True

    @property
    def stats(self) -> ResponseCacheStats:
        """A snapshot of the counters."""
        with self._lock:
            return ResponseCacheStats(
                hits=self._hits,
                misses=self._misses,
                stores=self._stores,
                skipped=self._skipped,
                errors=self._errors,
            )

    def _count(self, *, hits: int = 0, misses: int = 0, stores: int = 0, skipped: int = 0) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses
            self._stores += stores
            self._skipped += skipped

    def _record_failure(self, operation: str, exc: Exception) -> None:
        with self._lock:
            self._errors += 1
            first = not self._failing
            self._failing = True
        if first:
            logger.warning(
                "response cache backend failed on %s (%s: %s); serving without cache",
                operation,
                type(exc).__name__,
                exc,
            )

    def _record_success(self) -> None:
        with self._lock:
            recovered = self._failing
            self._failing = False
        if recovered:
            logger.info("response cache backend recovered")
