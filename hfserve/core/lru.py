"""Entries in recency order with their summed sizes: the bookkeeping of the byte-budgeted caches.

``ModelCache`` (loaded models: pins, idle expiry, an entry-count limit, eviction callbacks) and
``MemoryResponseBackend`` (encoded responses: TTLs) differ in what they evict and when, but both
keep entries least recently used first and must know how many bytes they hold at every step.
``SizedLRU`` is that shared part, so the byte accounting is written and tested once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["Sized", "SizedLRU"]


class Sized(Protocol):
    """An entry that knows how many bytes it accounts for."""

    @property
    def size_bytes(self) -> int:
        """Bytes this entry counts against its cache's budget."""
        ...


K = TypeVar("K", bound=Hashable)
E = TypeVar("E", bound=Sized)


class SizedLRU(Generic[K, E]):
    """A map from keys to entries, least recently used first, that keeps their byte total.

    Not locked: each owner guards it with its own lock, because each also decides under that
    lock what to evict (pins, TTLs, budgets) - more than this structure knows about. An entry's
    ``size_bytes`` must not change while it is stored; ``put`` it again instead.
    """

    def __init__(self) -> None:
        # Insertion order is recency order: first = least recently used.
        self._entries: OrderedDict[K, E] = OrderedDict()
        self._bytes = 0

    def get(self, key: K) -> E | None:
        """The entry for ``key``, or ``None``; recency is left alone (see ``touch``)."""
        return self._entries.get(key)

    def touch(self, key: K) -> None:
        """Mark ``key`` most recently used.

        Raises:
            KeyError: ``key`` is not stored.
        """
        self._entries.move_to_end(key)

    def put(self, key: K, entry: E) -> E | None:
        """Store ``entry`` as most recently used; return the entry it replaced, if any."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size_bytes
        self._entries[key] = entry
        self._bytes += entry.size_bytes
        return old

    def pop(self, key: K) -> E:
        """Remove and return the entry for ``key``.

        Raises:
            KeyError: ``key`` is not stored.
        """
        entry = self._entries.pop(key)
        self._bytes -= entry.size_bytes
        return entry

    def oldest(self) -> K:
        """The least recently used key.

        Raises:
            StopIteration: nothing is stored.
        """
        return next(iter(self._entries))

    def items(self) -> Iterator[tuple[K, E]]:
        """Keys and entries, least recently used first (do not change the map while iterating)."""
        return iter(self._entries.items())

    def keys_by_recency(self) -> list[K]:
        """A copy of the keys, least recently used first (safe to remove entries while using it)."""
        return list(self._entries)

    @property
    def total_bytes(self) -> int:
        """The summed ``size_bytes`` of every stored entry."""
        return self._bytes

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
