"""RateLimiter: two token buckets per key, all-or-nothing admission, post-hoc charges."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hfserve.core.clock import FakeClock
from hfserve.core.rate_limiter import (
    BucketSpec,
    BucketState,
    MemoryRateLimitBackend,
    RateDecision,
    RateLimitBackend,
    RateLimiter,
    RateLimits,
)
from hfserve.errors import InvalidRequestError
from tests.fixtures.rate_limits import CountingBackend

# 60 requests/min refills 1 request/s; 600 tokens/min refills 10 tokens/s: exact in floats.
LIMITS = RateLimits(requests_per_minute=60, tokens_per_minute=600)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def limiter(clock: FakeClock) -> RateLimiter:
    return RateLimiter(clock=clock)


async def test_fresh_key_starts_with_a_full_budget(limiter: RateLimiter) -> None:
    decision = await limiter.allow("k", LIMITS, tokens=100)
    assert decision == RateDecision(
        allowed=True,
        retry_after=0.0,
        limit_requests=60,
        remaining_requests=59,
        reset_requests=1.0,
        limit_tokens=600,
        remaining_tokens=500,
        reset_tokens=10.0,
    )


async def test_requests_bucket_refuses_when_empty_and_refills(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    limits = RateLimits(requests_per_minute=3)
    for _ in range(3):
        assert (await limiter.allow("k", limits)).allowed
    refused = await limiter.allow("k", limits)
    assert not refused.allowed
    assert refused.retry_after == 20.0  # 3/min = one request per 20 s
    assert refused.remaining_requests == 0
    assert refused.reset_requests == 60.0
    clock.advance(19.0)
    assert not (await limiter.allow("k", limits)).allowed
    clock.advance(1.0)
    admitted = await limiter.allow("k", limits)
    assert admitted.allowed
    assert admitted.remaining_requests == 0


async def test_refill_never_exceeds_capacity(limiter: RateLimiter, clock: FakeClock) -> None:
    await limiter.allow("k", LIMITS, tokens=600)
    clock.advance(3600.0)
    decision = await limiter.allow("k", LIMITS, requests=0, tokens=0)
    assert decision.remaining_tokens == 600
    assert decision.remaining_requests == 60
    assert decision.reset_tokens == 0.0


async def test_refusal_is_all_or_nothing(limiter: RateLimiter, clock: FakeClock) -> None:
    # Leave 100 tokens; a request wanting 150 is refused and must not spend a request either.
    await limiter.allow("k", LIMITS, tokens=500)
    refused = await limiter.allow("k", LIMITS, tokens=150)
    assert not refused.allowed
    assert refused.retry_after == 5.0  # 50 tokens short at 10 tokens/s
    assert refused.remaining_requests == 59
    assert refused.remaining_tokens == 100
    # Nothing was taken: the same budget still admits a request that fits.
    fits = await limiter.allow("k", LIMITS, tokens=100)
    assert fits.allowed
    assert fits.remaining_requests == 58
    assert fits.remaining_tokens == 0


async def test_retry_after_is_the_slowest_bucket(limiter: RateLimiter) -> None:
    limits = RateLimits(requests_per_minute=1, tokens_per_minute=60)
    await limiter.allow("k", limits, tokens=60)
    refused = await limiter.allow("k", limits, tokens=30)
    assert not refused.allowed
    assert refused.retry_after == 60.0  # requests: 60 s; tokens: 30 s
    assert refused.reset_requests == 60.0
    assert refused.reset_tokens == 60.0


async def test_charge_can_drive_tokens_negative_and_delays_later_requests(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    await limiter.allow("k", LIMITS, tokens=100)
    await limiter.charge("k", LIMITS, 800)  # 500 left - 800 = -300
    refused = await limiter.allow("k", LIMITS, tokens=0)
    assert not refused.allowed
    assert refused.remaining_tokens == 0
    assert refused.retry_after == 30.0  # 300 tokens of debt at 10/s
    assert refused.reset_tokens == 90.0  # from -300 to 600
    assert refused.remaining_requests == 59  # the refused request was not counted
    clock.advance(30.0)
    assert (await limiter.allow("k", LIMITS, tokens=0)).allowed


async def test_charge_without_a_token_budget_or_tokens_is_a_no_op(limiter: RateLimiter) -> None:
    backend = limiter.backend
    assert isinstance(backend, MemoryRateLimitBackend)
    await limiter.charge("k", RateLimits(requests_per_minute=5), 10_000)
    await limiter.charge("k", LIMITS, 0)
    assert len(backend) == 0
    assert (await limiter.allow("k", LIMITS, tokens=600)).allowed


async def test_unlimited_budgets_never_refuse_and_report_zero(limiter: RateLimiter) -> None:
    for _ in range(1000):
        decision = await limiter.allow("k", RateLimits(), tokens=10**9)
        assert decision == RateDecision(True, 0.0, 0, 0, 0.0, 0, 0, 0.0)


async def test_one_unlimited_budget_reports_zero_for_it(limiter: RateLimiter) -> None:
    decision = await limiter.allow("k", RateLimits(tokens_per_minute=600), tokens=60)
    assert decision.allowed
    assert (decision.limit_requests, decision.remaining_requests, decision.reset_requests) == (
        0,
        0,
        0.0,
    )
    assert (decision.limit_tokens, decision.remaining_tokens, decision.reset_tokens) == (
        600,
        540,
        6.0,
    )


async def test_keys_have_separate_budgets(limiter: RateLimiter) -> None:
    limits = RateLimits(requests_per_minute=1)
    assert (await limiter.allow("a", limits)).allowed
    assert not (await limiter.allow("a", limits)).allowed
    assert (await limiter.allow("b", limits)).allowed


async def test_a_request_larger_than_the_whole_budget_is_invalid(limiter: RateLimiter) -> None:
    with pytest.raises(InvalidRequestError, match="needs 601 tokens") as info:
        await limiter.allow("k", LIMITS, tokens=601)
    assert info.value.code == "request_too_large"
    # Nothing was debited by the rejected call.
    assert (await limiter.allow("k", LIMITS, tokens=600)).allowed


@pytest.mark.parametrize(("requests", "tokens"), [(-1, 0), (1, -1)])
async def test_negative_costs_are_rejected(
    limiter: RateLimiter, requests: int, tokens: int
) -> None:
    with pytest.raises(ValueError, match="negative"):
        await limiter.allow("k", LIMITS, requests=requests, tokens=tokens)


async def test_negative_charge_is_rejected(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="negative"):
        await limiter.charge("k", LIMITS, -5)


def test_negative_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        RateLimits(requests_per_minute=-1)


async def test_default_clock_and_backend_admit() -> None:
    limiter = RateLimiter()
    assert isinstance(limiter.backend, MemoryRateLimitBackend)
    assert isinstance(limiter.backend, RateLimitBackend)
    assert (await limiter.allow("k", RateLimits(requests_per_minute=1))).allowed


async def test_a_clock_read_out_of_order_does_not_run_time_backwards() -> None:
    backend = MemoryRateLimitBackend()
    spec = [BucketSpec("requests", 10.0, 1.0, 10.0)]
    assert (await backend.acquire("k", spec, 100.0))[0].debited
    # A thread that read the clock earlier arrives late: no refill, no rewind.
    late = await backend.acquire("k", [BucketSpec("requests", 10.0, 1.0, 1.0)], 95.0)
    assert late == [BucketState(level=0.0, debited=False)]
    on_time = await backend.acquire("k", [BucketSpec("requests", 10.0, 1.0, 1.0)], 101.0)
    assert on_time == [BucketState(level=0.0, debited=True)]


async def test_full_buckets_are_forgotten_so_memory_tracks_active_keys() -> None:
    backend = MemoryRateLimitBackend()
    spec = [BucketSpec("requests", 10.0, 1.0, 1.0)]
    for i in range(1023):
        await backend.acquire(f"key-{i}", spec, 0.0)
    assert len(backend) == 1023
    # The 1024th operation sweeps; by t=1 every earlier bucket has refilled its one request.
    await backend.acquire("late", spec, 1.0)
    assert len(backend) == 1


async def test_unconditional_debit_applies_to_every_bucket() -> None:
    backend = MemoryRateLimitBackend()
    specs = [BucketSpec("requests", 5.0, 1.0, 7.0), BucketSpec("tokens", 5.0, 1.0, 2.0)]
    states = await backend.debit("k", specs, 0.0)
    assert states == [BucketState(-2.0, True), BucketState(3.0, True)]


async def test_concurrent_tasks_never_overspend(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    limits = RateLimits(requests_per_minute=50)
    decisions = await asyncio.gather(*(limiter.allow("k", limits) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 50


def test_concurrent_threads_never_overspend(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    limits = RateLimits(requests_per_minute=500, tokens_per_minute=5000)

    def worker(n: int) -> int:
        async def run() -> int:
            admitted = 0
            for _ in range(n):
                admitted += (await limiter.allow("k", limits, tokens=10)).allowed
            return admitted

        return asyncio.run(run())

    with ThreadPoolExecutor(max_workers=8) as pool:
        admitted = sum(pool.map(worker, [200] * 8))
    assert admitted == 500  # 1600 attempts; the requests and token budgets both allow 500


class LimiterMachine(RuleBasedStateMachine):
    """Random allow/charge/advance sequences: never more than the budget in any window."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.limiter = RateLimiter(clock=self.clock)
        self.limits = RateLimits()
        self.admitted: list[tuple[float, int, int]] = []

    @initialize(rpm=st.integers(1, 120), tpm=st.integers(1, 2000))
    def configure(self, rpm: int, tpm: int) -> None:
        self.limits = RateLimits(requests_per_minute=rpm, tokens_per_minute=tpm)

    @rule(seconds=st.floats(0.0, 30.0, allow_nan=False))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(requests=st.integers(0, 3), tokens=st.integers(0, 2000))
    def allow(self, requests: int, tokens: int) -> None:
        if requests > self.limits.requests_per_minute or tokens > self.limits.tokens_per_minute:
            return
        decision = asyncio.run(
            self.limiter.allow("k", self.limits, requests=requests, tokens=tokens)
        )
        if decision.allowed:
            assert decision.retry_after == 0.0
            self.admitted.append((self.clock.now(), requests, tokens))
        else:
            assert decision.retry_after > 0.0

    @rule(tokens=st.integers(0, 3000))
    def charge(self, tokens: int) -> None:
        asyncio.run(self.limiter.charge("k", self.limits, tokens))

    @rule(requests=st.integers(0, 3), tokens=st.integers(0, 2000))
    def retry_after_is_honest(self, requests: int, tokens: int) -> None:
        """A refused request is admitted once its retry_after has passed (and not before)."""
        if requests > self.limits.requests_per_minute or tokens > self.limits.tokens_per_minute:
            return
        decision = asyncio.run(
            self.limiter.allow("k", self.limits, requests=requests, tokens=tokens)
        )
        if not decision.allowed:
            self.clock.advance(decision.retry_after)
            decision = asyncio.run(
                self.limiter.allow("k", self.limits, requests=requests, tokens=tokens)
            )
            assert decision.allowed
        self.admitted.append((self.clock.now(), requests, tokens))

    @invariant()
    def never_more_than_budget_in_any_window(self) -> None:
        for index, budget in (
            (1, self.limits.requests_per_minute),
            (2, self.limits.tokens_per_minute),
        ):
            _assert_windows(self.admitted, index, budget)


def _assert_windows(admitted: Sequence[tuple[float, int, int]], index: int, budget: int) -> None:
    """Every window [t_i, t_j] admits at most capacity + refill * (t_j - t_i)."""
    for i, start in enumerate(admitted):
        total = 0.0
        for end in admitted[i:]:
            total += end[index]
            allowance = budget + budget / 60.0 * (end[0] - start[0])
            assert total <= allowance + 1e-6, (start, end, total, allowance)


TestLimiterMachine = LimiterMachine.TestCase
TestLimiterMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


async def test_another_backend_is_awaited_and_decides_like_memory(clock: FakeClock) -> None:
    backend = CountingBackend()
    other = RateLimiter(backend, clock=clock)
    memory = RateLimiter(clock=clock)
    limits = RateLimits(requests_per_minute=2, tokens_per_minute=100)
    for tokens in (10, 50, 60, 0):
        assert await other.allow("k", limits, tokens=tokens) == await memory.allow(
            "k", limits, tokens=tokens
        )
    assert backend.acquired == 4
    clock.advance(30)
    assert await other.allow("k", limits) == await memory.allow("k", limits)


@settings(max_examples=60, deadline=None)
@given(
    limits=st.sampled_from(
        [RateLimits(3, 0), RateLimits(0, 50), RateLimits(3, 50), RateLimits(120, 1000)]
    ),
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=40),
            st.integers(min_value=0, max_value=2),
            st.integers(min_value=0, max_value=40),
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_the_memory_fast_path_decides_exactly_like_the_awaited_backend(
    limits: RateLimits, steps: list[tuple[float, int, int]]
) -> None:
    # allow_now's flat decide() and the protocol path (acquire, then the decision built from
    # the bucket states) must agree on every field of every decision, refusals included.
    async def run() -> None:
        clock = FakeClock()
        backend = CountingBackend()
        awaited = RateLimiter(backend, clock=clock)
        memory = RateLimiter(clock=clock)
        for seconds, requests, tokens in steps:
            clock.advance(seconds)
            assert await memory.allow("k", limits, requests=requests, tokens=tokens) == (
                await awaited.allow("k", limits, requests=requests, tokens=tokens)
            )
            await memory.charge("k", limits, tokens)
            await awaited.charge("k", limits, tokens)
        assert backend.acquired == len(steps)

    asyncio.run(run())
