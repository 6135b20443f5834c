"""CircuitBreaker: every transition, failure-rate mode, Retry-After, probes, and a model check."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hfserve.core.breaker import BreakerState, CircuitBreaker
from hfserve.core.clock import FakeClock
from hfserve.errors import CircuitOpenError


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """Read the state through a call, so the type checker does not pin it between reads."""
    return breaker.state


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.allow()
        breaker.record_failure()


def test_starts_closed_and_admits(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    breaker.allow()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.opened_count == 0


def test_opens_after_consecutive_failures_and_refuses_with_remaining_time(
    clock: FakeClock,
) -> None:
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=30.0, clock=clock, name="m")
    fail(breaker, 2)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 2
    fail(breaker, 1)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.opened_count == 1
    clock.advance(10.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.allow()
    assert info.value.retry_after == pytest.approx(20.0)
    assert breaker.name == "m"
    assert "'m'" in str(info.value)


def test_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    fail(breaker, 2)
    breaker.record_success()
    assert breaker.consecutive_failures == 0
    fail(breaker, 2)
    assert state_of(breaker) is BreakerState.CLOSED


def test_half_open_after_recovery_then_success_closes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5.0, clock=clock)
    fail(breaker, 1)
    clock.advance(4.999)
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(0.001)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.allow()
    breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    breaker.allow()


def test_probe_failure_reopens_with_a_new_timeout(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5.0, clock=clock)
    fail(breaker, 1)
    clock.advance(7.0)
    breaker.allow()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.opened_count == 2
    with pytest.raises(CircuitOpenError) as info:
        breaker.allow()
    assert info.value.retry_after == pytest.approx(5.0)


def test_half_open_admits_only_max_probes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        failure_threshold=1, recovery_timeout=10.0, half_open_max_calls=2, clock=clock
    )
    fail(breaker, 1)
    clock.advance(10.0)
    breaker.allow()
    breaker.allow()
    with pytest.raises(CircuitOpenError) as info:
        breaker.allow()
    assert info.value.retry_after == pytest.approx(1.0)
    assert "probing" in str(info.value)


def test_half_open_retry_after_is_capped_by_a_short_recovery(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=0.25, clock=clock)
    fail(breaker, 1)
    clock.advance(0.25)
    breaker.allow()
    with pytest.raises(CircuitOpenError) as info:
        breaker.allow()
    assert info.value.retry_after == pytest.approx(0.25)


def test_late_outcomes_while_open_are_ignored(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10.0, clock=clock)
    fail(breaker, 1)
    clock.advance(6.0)
    breaker.record_failure()  # must not push the recovery out
    breaker.record_success()  # must not close without a probe
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(4.0)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.opened_count == 1


def test_cancelled_probe_frees_its_slot(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1.0, clock=clock)
    fail(breaker, 1)
    clock.advance(1.0)
    breaker.allow()
    breaker.record_cancelled()
    breaker.allow()  # the slot is free again
    assert state_of(breaker) is BreakerState.HALF_OPEN


def test_cancelled_outside_half_open_changes_nothing(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=clock)
    fail(breaker, 1)
    breaker.record_cancelled()
    assert breaker.consecutive_failures == 1
    assert state_of(breaker) is BreakerState.CLOSED


def test_reset_closes_and_forgets(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    fail(breaker, 1)
    breaker.reset()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    breaker.allow()


def test_listener_sees_every_transition(clock: FakeClock) -> None:
    seen: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        failure_threshold=1,
        recovery_timeout=1.0,
        clock=clock,
        on_state_change=lambda old, new: seen.append((old, new)),
    )
    fail(breaker, 1)
    clock.advance(1.0)
    breaker.allow()
    breaker.record_failure()
    clock.advance(1.0)
    breaker.allow()
    breaker.record_success()
    breaker.reset()  # already closed: no change reported
    c, o, h = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
    assert seen == [(c, o), (o, h), (h, o), (o, h), (h, c)]


def test_failing_listener_does_not_break_the_breaker(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("metrics down")

    breaker = CircuitBreaker(failure_threshold=1, clock=clock, on_state_change=explode)
    fail(breaker, 1)
    assert state_of(breaker) is BreakerState.OPEN
    assert "state listener failed" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"recovery_timeout": -1.0}, "recovery_timeout"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
    ],
)
def test_rejects_invalid_configuration(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


async def test_call_records_success_and_failure(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=3.0, clock=clock, name="m")

    async def ok() -> int:
        return 7

    async def boom() -> int:
        raise ValueError("bad")

    assert await breaker.call(ok) == 7
    for _ in range(2):
        with pytest.raises(ValueError, match="bad"):
            await breaker.call(boom)
    calls = 0

    async def counted() -> int:
        nonlocal calls
        calls += 1
        return 1

    with pytest.raises(CircuitOpenError):
        await breaker.call(counted)
    assert calls == 0  # refused without running
    clock.advance(3.0)
    assert await breaker.call(counted) == 1
    assert state_of(breaker) is BreakerState.CLOSED


async def test_call_cancelled_probe_does_not_wedge_half_open(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1.0, clock=clock)
    fail(breaker, 1)
    clock.advance(1.0)
    entered = asyncio.Event()
    never = asyncio.Event()

    async def hang() -> None:
        entered.set()
        await never.wait()

    task = asyncio.create_task(breaker.call(hang))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.allow()  # the probe slot was released


def test_concurrent_failures_from_threads_are_all_counted(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=10_000, clock=clock)
    barrier = threading.Barrier(4)

    def hammer() -> None:
        barrier.wait()
        for _ in range(500):
            breaker.record_failure()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.consecutive_failures == 2000


# --- model-based check -----------------------------------------------------------------------


@dataclass
class _Model:
    """The breaker's specification, written as plainly as possible."""

    threshold: int
    recovery: float
    probes_max: int
    state: str = "closed"
    opened_at: float = 0.0
    consecutive: int = 0
    opened: int = 0
    probes: int = 0

    def tick(self, now: float) -> None:
        if self.state == "open" and now - self.opened_at >= self.recovery:
            self.state, self.probes = "half_open", 0

    def open(self, now: float) -> None:
        self.state, self.opened_at, self.probes = "open", now, 0
        self.opened += 1

    def close(self) -> None:
        self.state, self.consecutive, self.probes = "closed", 0, 0

    def outcome(self, now: float, failed: bool) -> None:
        self.tick(now)
        if self.state == "half_open":
            if failed:
                self.open(now)
            else:
                self.close()
        elif self.state == "closed":
            self.consecutive = self.consecutive + 1 if failed else 0
            if failed and self.consecutive >= self.threshold:
                self.open(now)


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, outcomes and time steps; the breaker must agree with ``_Model``."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.breaker: CircuitBreaker | None = None
        self.model: _Model | None = None

    @precondition(lambda self: self.breaker is None)
    @rule(
        threshold=st.integers(1, 4),
        recovery=st.sampled_from([0.0, 1.0, 5.0]),
        probes=st.integers(1, 3),
    )
    def configure(self, threshold: int, recovery: float, probes: int) -> None:
        self.breaker = CircuitBreaker(
            failure_threshold=threshold,
            recovery_timeout=recovery,
            half_open_max_calls=probes,
            clock=self.clock,
        )
        self.model = _Model(threshold, recovery, probes)

    @precondition(lambda self: self.breaker is not None)
    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def _pair(self) -> tuple[CircuitBreaker, _Model]:
        assert self.breaker is not None
        assert self.model is not None
        return self.breaker, self.model

    @precondition(lambda self: self.breaker is not None)
    @rule()
    def allow(self) -> None:
        breaker, model = self._pair()
        now = self.clock.now()
        model.tick(now)
        if model.state == "closed" or (
            model.state == "half_open" and model.probes < model.probes_max
        ):
            breaker.allow()
            if model.state == "half_open":
                model.probes += 1
            return
        with pytest.raises(CircuitOpenError) as info:
            breaker.allow()
        if model.state == "open":
            remaining = model.opened_at + model.recovery - now
            assert info.value.retry_after == pytest.approx(remaining)
            assert info.value.retry_after > 0
        else:
            assert info.value.retry_after == pytest.approx(min(1.0, model.recovery))

    @precondition(lambda self: self.breaker is not None)
    @rule(failed=st.booleans())
    def outcome(self, failed: bool) -> None:
        breaker, model = self._pair()
        if failed:
            breaker.record_failure()
        else:
            breaker.record_success()
        model.outcome(self.clock.now(), failed)

    @invariant()
    def agrees_with_model(self) -> None:
        if self.breaker is None or self.model is None:
            return
        self.model.tick(self.clock.now())
        assert self.breaker.state.value == self.model.state
        assert self.breaker.consecutive_failures == self.model.consecutive
        assert self.breaker.opened_count == self.model.opened


BreakerMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestBreakerMachine = BreakerMachine.TestCase
