"""A circuit breaker: refuse a failing resource fast, then probe it carefully before trusting it.

closed --(N consecutive failures)--> open
open --(recovery_timeout elapsed)--> half_open
half_open --(probe succeeds)--> closed;  half_open --(probe fails)--> open (new timeout)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TypeVar

from hfserve.core.clock import Clock, MonotonicClock
from hfserve.errors import CircuitOpenError

__all__ = ["BreakerState", "CircuitBreaker", "StateListener"]

T = TypeVar("T")

_log = logging.getLogger(__name__)


class BreakerState(StrEnum):
    """The three states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


StateListener = Callable[[BreakerState, BreakerState], None]
"""Called with ``(old, new)`` after every state change, outside the breaker's lock."""


class CircuitBreaker:
    """Counts failures of one resource and refuses calls while it is presumed broken.

    Args:
        failure_threshold: consecutive failures that open the breaker.
        recovery_timeout: seconds the breaker stays open before admitting probes.
        half_open_max_calls: probes admitted at once while half-open.
        clock: monotonic time source.
        name: the resource, used in error messages (e.g. the model id).
        on_state_change: listener for metrics; called outside the lock.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        recovery_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        clock: Clock | None = None,
        name: str = "",
        on_state_change: StateListener | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if recovery_timeout < 0:
            raise ValueError("recovery_timeout must be >= 0")
        if half_open_max_calls < 1:
            raise ValueError("half_open_max_calls must be at least 1")
        self._failure_threshold = failure_threshold
        self._recovery_timeout = float(recovery_timeout)
        self._half_open_max_calls = half_open_max_calls
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._name = name
        self._on_state_change = on_state_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._consecutive_failures = 0
        self._opened_count = 0
        self._probes = 0

    @property
    def name(self) -> str:
        """The protected resource's name."""
        return self._name

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose recovery time has passed is half-open."""
        with self._lock:
            changes = self._advance()
            state = self._state
        self._notify(changes)
        return state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success (reset when the breaker closes)."""
        with self._lock:
            return self._consecutive_failures

    @property
    def opened_count(self) -> int:
        """How many times the breaker has opened since it was created."""
        with self._lock:
            return self._opened_count

    def allow(self) -> None:
        """Admit one call, or refuse it.

        Raises:
            CircuitOpenError: the breaker is open (``retry_after`` = recovery time left), or
                half-open with every probe slot taken.
        """
        with self._lock:
            changes = self._advance()
            error: CircuitOpenError | None = None
            if self._state is BreakerState.OPEN:
                remaining = self._opened_at + self._recovery_timeout - self._clock.now()
                error = CircuitOpenError(
                    f"circuit for {self._label} is open after repeated failures",
                    retry_after=remaining,
                )
            elif self._state is BreakerState.HALF_OPEN:
                if self._probes < self._half_open_max_calls:
                    self._probes += 1
                else:
                    # A probe is already out; its verdict comes within one call's time, so
                    # suggest a short wait rather than a full recovery period.
                    error = CircuitOpenError(
                        f"circuit for {self._label} is half-open and already probing",
                        retry_after=min(1.0, self._recovery_timeout),
                    )
        self._notify(changes)
        if error is not None:
            raise error

    def record_success(self) -> None:
        """Record a call that succeeded; a successful probe closes the breaker."""
        with self._lock:
            changes = self._advance()
            if self._state is BreakerState.HALF_OPEN:
                changes.append(self._transition(BreakerState.CLOSED))
            elif self._state is BreakerState.CLOSED:
                self._consecutive_failures = 0
            # A late success while open says nothing about the resource now: ignored.
        self._notify(changes)

    def record_failure(self) -> None:
        """Record a call that failed; may open (or re-open) the breaker."""
        with self._lock:
            changes = self._advance()
            if self._state is BreakerState.HALF_OPEN:
                changes.append(self._transition(BreakerState.OPEN))
            elif self._state is BreakerState.CLOSED:
                self._consecutive_failures += 1
                if self._consecutive_failures >= self._failure_threshold:
                    changes.append(self._transition(BreakerState.OPEN))
            # A late failure while open must not extend the recovery timeout: ignored.
        self._notify(changes)

    def record_cancelled(self) -> None:
        """Record a call that ended without a verdict (cancelled); frees its probe slot."""
        with self._lock:
            changes = self._advance()
            if self._state is BreakerState.HALF_OPEN and self._probes > 0:
                self._probes -= 1
        self._notify(changes)

    def reset(self) -> None:
        """Close the breaker and forget all history (e.g. after the resource was replaced)."""
        with self._lock:
            changes = [self._transition(BreakerState.CLOSED)]
        self._notify(changes)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` through the breaker: allow, await, record the outcome.

        Raises:
            CircuitOpenError: the call was refused without running ``fn``.
            Exception: whatever ``fn`` raised (recorded as a failure).
        """
        self.allow()
        try:
            result = await fn()
        except Exception:
            self.record_failure()
            raise
        except BaseException:
            # Cancellation says nothing about the resource, but must not leak a probe slot.
            self.record_cancelled()
            raise
        self.record_success()
        return result

    @property
    def _label(self) -> str:
        return repr(self._name) if self._name else "resource"

    def _advance(self) -> list[tuple[BreakerState, BreakerState]]:
        """Apply the time-driven open -> half_open transition (lock held)."""
        if (
            self._state is BreakerState.OPEN
            and self._clock.now() - self._opened_at >= self._recovery_timeout
        ):
            return [self._transition(BreakerState.HALF_OPEN)]
        return []

    def _transition(self, new: BreakerState) -> tuple[BreakerState, BreakerState]:
        """Enter ``new`` and reset what that state starts from (lock held)."""
        old = self._state
        self._state = new
        self._probes = 0
        if new is BreakerState.OPEN:
            self._opened_at = self._clock.now()
            self._opened_count += 1
        elif new is BreakerState.CLOSED:
            self._consecutive_failures = 0
        return old, new

    def _notify(self, changes: list[tuple[BreakerState, BreakerState]]) -> None:
        """Tell the listener about state changes (outside the lock, so it may call back)."""
        if self._on_state_change is None:
            return
        for old, new in changes:
            if old is new:
                continue
            try:
                self._on_state_change(old, new)
            except Exception:
                # Metrics must never break the protected call path.
                _log.exception("circuit breaker %s: state listener failed", self._label)
