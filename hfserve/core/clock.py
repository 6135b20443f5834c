"""Injected time sources, so time-dependent components are tested without sleeping."""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "MonotonicClock", "WallClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time in seconds."""

    def now(self) -> float:
        """Return the current time in seconds (monotonic unless stated otherwise)."""
        ...


class MonotonicClock:
    """Monotonic time: for durations, TTLs, deadlines and token buckets."""

    def now(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()


class WallClock:
    """Wall-clock (epoch) time: for timestamps that are stored or shown (key expiry)."""

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()


class FakeClock:
    """A clock that only moves when told to; thread-safe."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return the current fake time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (must be >= 0)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += seconds

    def set(self, value: float) -> None:
        """Jump to an absolute time not earlier than now."""
        with self._lock:
            if value < self._now:
                raise ValueError("a clock cannot go backwards")
            self._now = float(value)
