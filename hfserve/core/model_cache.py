"""A thread-safe LRU cache of loaded models, bounded by entry count and by bytes.

Entries can be pinned (never evicted automatically) and expire after sitting unused for
``idle_ttl`` seconds. Evicted values are handed to ``on_evict`` *outside* the lock: freeing a
model may take a while, and the event loop must not wait on a worker thread doing it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from hfserve.core.clock import Clock, MonotonicClock
from hfserve.core.lru import SizedLRU
from hfserve.errors import OverloadedError

__all__ = ["CacheStats", "EvictReason", "ModelCache"]

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

EvictReason = Literal["lru", "bytes", "idle", "explicit", "replaced", "clear"]


@dataclass(frozen=True)
class CacheStats:
    """A consistent snapshot of a ``ModelCache``'s counters and occupancy."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    pinned: int


@dataclass
class _Entry(Generic[V]):
    value: V
    size_bytes: int
    pinned: bool
    last_used: float


class ModelCache(Generic[K, V]):
    """An LRU cache bounded by ``max_entries`` and ``max_bytes`` (0 = no byte limit).

    Pinned entries are never evicted by ``put`` or ``evict_idle`` but count toward both budgets.
    ``on_evict(key, value, reason)`` is called once for every value that leaves the cache, with
    ``reason`` one of ``"lru"``, ``"bytes"``, ``"idle"``, ``"explicit"``, ``"replaced"`` or
    ``"clear"``; ``stats.evictions`` counts those calls.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int = 0,
        idle_ttl: float = 0.0,
        clock: Clock | None = None,
        on_evict: Callable[[K, V, str], None] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0 = no limit), got {max_bytes}")
        if idle_ttl < 0:
            raise ValueError(f"idle_ttl must be >= 0 (0 = never), got {idle_ttl}")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._idle_ttl = idle_ttl
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._on_evict = on_evict
        self._lock = threading.Lock()
        self._entries: SizedLRU[K, _Entry[V]] = SizedLRU()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @property
    def max_entries(self) -> int:
        """The most entries the cache holds at once."""
        return self._max_entries

    @property
    def max_bytes(self) -> int:
        """The byte budget; 0 means no byte limit."""
        return self._max_bytes

    @property
    def idle_ttl(self) -> float:
        """Seconds an unpinned entry may sit unused before ``evict_idle`` removes it; 0 = never."""
        return self._idle_ttl

    def get(self, key: K) -> V | None:
        """Return the value for ``key`` and mark it most recently used, or ``None``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            entry.last_used = self._clock.now()
            self._entries.touch(key)
            return entry.value

    def peek(self, key: K) -> V | None:
        """Return the value for ``key`` without touching recency, idle time or stats."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.value

    def put(self, key: K, value: V, *, size_bytes: int, pinned: bool = False) -> list[K]:
        """Insert or replace ``key`` as most recently used; return the keys evicted for room.

        Replacing ``key`` with a different value hands the old one to ``on_evict`` with reason
        ``"replaced"`` (``key`` is not in the returned list); re-putting the same value object
        only updates its size and pin. ``pinned`` sets the entry's pin either way.

        Raises:
            ValueError: ``size_bytes`` is negative.
            OverloadedError: the entry cannot fit even after evicting every unpinned entry;
                the cache is left unchanged.
        """
        if size_bytes < 0:
            raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
        removed: list[tuple[K, V, str]] = []
        with self._lock:
            victims = self._plan_room(key, size_bytes)
            for victim, reason in victims:
                removed.append(self._remove(victim, reason))
            old = self._entries.get(key)
            if old is not None and old.value is not value:
                removed.append(self._remove(key, "replaced"))
            # The same value re-put only changes its size and pin: not an eviction.
            self._entries.put(key, _Entry(value, size_bytes, pinned, self._clock.now()))
        self._notify(removed)
        return [victim for victim, _ in victims]

    def pin(self, key: K) -> None:
        """Protect ``key`` from automatic eviction.

        Raises:
            KeyError: ``key`` is not cached.
        """
        with self._lock:
            self._entry(key).pinned = True

    def unpin(self, key: K) -> None:
        """Make ``key`` evictable again; its idle time starts now.

        Raises:
            KeyError: ``key`` is not cached.
        """
        with self._lock:
            entry = self._entry(key)
            entry.pinned = False
            # A pinned model was in use (or reserved) until now: it is not idle yet.
            entry.last_used = self._clock.now()

    def is_pinned(self, key: K) -> bool:
        """Return whether ``key`` is cached and pinned."""
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.pinned

    def evict(self, key: K) -> bool:
        """Remove ``key`` even if pinned (an explicit unload); return whether it was cached."""
        with self._lock:
            if key not in self._entries:
                return False
            removed = [self._remove(key, "explicit")]
        self._notify(removed)
        return True

    def evict_idle(self) -> list[K]:
        """Remove unpinned entries unused for more than ``idle_ttl`` seconds; return their keys."""
        if self._idle_ttl <= 0:
            return []
        with self._lock:
            now = self._clock.now()
            stale = [
                key
                for key, entry in self._entries.items()
                if not entry.pinned and now - entry.last_used > self._idle_ttl
            ]
            removed = [self._remove(key, "idle") for key in stale]
        self._notify(removed)
        return stale

    def clear(self) -> None:
        """Remove every entry, pinned ones included (shutdown)."""
        with self._lock:
            removed = [self._remove(key, "clear") for key in self._entries.keys_by_recency()]
        self._notify(removed)

    def keys(self) -> list[K]:
        """Return the cached keys from least to most recently used."""
        with self._lock:
            return self._entries.keys_by_recency()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def total_bytes(self) -> int:
        """The summed ``size_bytes`` of every cached entry."""
        with self._lock:
            return self._entries.total_bytes

    @property
    def stats(self) -> CacheStats:
        """A snapshot of hits, misses, evictions and current occupancy."""
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                entries=len(self._entries),
                bytes=self._entries.total_bytes,
                pinned=sum(1 for _, entry in self._entries.items() if entry.pinned),
            )

    def _plan_room(self, key: K, size_bytes: int) -> list[tuple[K, str]]:
        """Choose the LRU victims that make room for ``key``; raise before changing anything."""
        old = self._entries.get(key)
        count = len(self._entries) + (0 if old is not None else 1)
        total = self._entries.total_bytes - (old.size_bytes if old is not None else 0) + size_bytes
        victims: list[tuple[K, str]] = []
        for other, entry in self._entries.items():
            over_count = count > self._max_entries
            over_bytes = self._max_bytes > 0 and total > self._max_bytes
            if not (over_count or over_bytes):
                break
            if other == key or entry.pinned:
                continue
            victims.append((other, "lru" if over_count else "bytes"))
            count -= 1
            total -= entry.size_bytes
        if count > self._max_entries:
            raise OverloadedError(
                f"model cache is full: all {self._max_entries} slots hold pinned models; "
                f"unpin or evict one before loading {key!r}"
            )
        if self._max_bytes > 0 and size_bytes > self._max_bytes:
            raise OverloadedError(
                f"model {key!r} needs {size_bytes} bytes, more than the whole "
                f"{self._max_bytes}-byte cache budget"
            )
        if self._max_bytes > 0 and total > self._max_bytes:
            raise OverloadedError(
                f"model {key!r} needs {size_bytes} bytes but only "
                f"{self._max_bytes - (total - size_bytes)} of the {self._max_bytes}-byte cache "
                "budget can be freed (the rest is pinned)"
            )
        return victims

    def _entry(self, key: K) -> _Entry[V]:
        entry = self._entries.get(key)
        if entry is None:
            raise KeyError(key)
        return entry

    def _remove(self, key: K, reason: str) -> tuple[K, V, str]:
        entry = self._entries.pop(key)
        self._evictions += 1
        return key, entry.value, reason

    def _notify(self, removed: list[tuple[K, V, str]]) -> None:
        """Call ``on_evict`` for each removed value, outside the lock, isolating failures."""
        if self._on_evict is None:
            return
        for key, value, reason in removed:
            try:
                self._on_evict(key, value, reason)
            except Exception:
                # The entry is already gone; a failing cleanup must not undo that or stop the
                # other callbacks, so it is reported and the cache stays consistent.
                logger.exception("on_evict failed for %r (reason %s)", key, reason)
