"""MicroBatcher: batch formation, result routing, overload, cancellation, shutdown.

No test sleeps or measures wall time: batch functions are gated by events, and time that
matters (queue waits, run times, linger deadlines) comes from a ``FakeClock``. The only
timeouts are guards that turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfserve.core.batcher import MicroBatcher
from hfserve.core.clock import FakeClock
from hfserve.errors import InferenceError, OverloadedError, ShuttingDownError

GUARD = 30.0  # seconds before a hang becomes a test failure; never reached when green


async def next_tick() -> None:
    """Let every ready task run one step (a yield to the loop, not a timed wait)."""
    await asyncio.sleep(0)


class Model:
    """A fake batch function: records batches, can block until released, can take fake time."""

    def __init__(
        self,
        *,
        gated: bool = False,
        fn: Callable[[int], int | BaseException] = lambda x: x * 10,
        clock: FakeClock | None = None,
        run_seconds: float = 0.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()
        self.started = asyncio.Event()
        self.release = threading.Event()
        if not gated:
            self.release.set()
        self.fn = fn
        self.clock = clock
        self.run_seconds = run_seconds

    def __call__(self, items: Sequence[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        self.loop.call_soon_threadsafe(self.started.set)
        if not self.release.wait(GUARD):
            raise AssertionError("batch was never released")
        if self.clock is not None:
            self.clock.advance(self.run_seconds)
        return [self.fn(x) for x in items]

    async def wait_started(self) -> None:
        """Wait until a batch has entered the batch function."""
        async with asyncio.timeout(GUARD):
            await self.started.wait()
        self.started.clear()


def submit_all(batcher: MicroBatcher[int, int], items: Sequence[int]) -> list[asyncio.Task[int]]:
    return [asyncio.create_task(batcher.submit(item)) for item in items]


async def test_lone_request_runs_at_once_despite_a_long_linger() -> None:
    model = Model()
    async with MicroBatcher(model, max_wait_ms=600_000) as batcher:
        # Lingering would take ten minutes and trip the guard.
        async with asyncio.timeout(GUARD):
            assert await batcher.submit(4) == 40
    assert model.batches == [[4]]


async def test_requests_arriving_together_share_a_batch() -> None:
    model = Model()
    async with MicroBatcher(model, max_wait_ms=0) as batcher:
        assert await asyncio.gather(*submit_all(batcher, [1, 2, 3])) == [10, 20, 30]
    assert model.batches == [[1, 2, 3]]


async def test_batch_fn_runs_off_the_event_loop_thread() -> None:
    model = Model(gated=True)
    async with MicroBatcher(model) as batcher:
        task = asyncio.create_task(batcher.submit(1))
        await model.wait_started()
        # The loop is free while the batch blocks: this very line runs.
        assert batcher.running
        assert threading.get_ident() not in model.threads
        model.release.set()
        assert await task == 10


async def test_every_batch_runs_on_one_thread_of_its_own_until_closed() -> None:
    # A model kept on one thread keeps its OpenMP team and caches warm; the loop's shared
    # executor would hand consecutive batches to whichever of its threads is idle.
    threads: list[threading.Thread] = []

    def batch_fn(items: Sequence[int]) -> list[int]:
        threads.append(threading.current_thread())
        return list(items)

    busy = [asyncio.create_task(asyncio.to_thread(threading.Event().wait, 0.05)) for _ in range(4)]
    async with MicroBatcher(batch_fn, name="m1", max_wait_ms=0) as batcher:
        for n in range(6):
            assert await batcher.submit(n) == n
    await asyncio.gather(*busy)
    assert len(set(threads)) == 1
    assert threads[0].name.startswith("hfserve-batch-m1")
    threads[0].join(timeout=5)  # closing the batcher stops its thread
    assert not threads[0].is_alive()


async def test_custom_executor_runs_the_batches() -> None:
    names: list[str] = []

    def batch_fn(items: Sequence[int]) -> list[int]:
        names.append(threading.current_thread().name)
        return list(items)

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="infer") as pool:
        async with MicroBatcher(batch_fn, executor=pool) as batcher:
            assert await batcher.submit(5) == 5
    assert names[0].startswith("infer")


async def test_flushes_at_max_batch_size() -> None:
    model = Model(gated=True)
    async with MicroBatcher(model, max_batch_size=2, max_wait_ms=0) as batcher:
        first = asyncio.create_task(batcher.submit(0))
        await model.wait_started()
        rest = submit_all(batcher, [1, 2, 3, 4, 5])
        await next_tick()
        assert batcher.queue_depth == 5
        model.release.set()
        assert await asyncio.gather(first, *rest) == [0, 10, 20, 30, 40, 50]
    assert model.batches == [[0], [1, 2], [3, 4], [5]]


async def test_flushes_at_max_batch_tokens_and_runs_an_oversized_item_alone() -> None:
    model = Model(gated=True)
    async with MicroBatcher(
        model, max_batch_tokens=10, max_wait_ms=0, cost_fn=lambda x: x
    ) as batcher:
        first = asyncio.create_task(batcher.submit(1))
        await model.wait_started()
        rest = submit_all(batcher, [3, 4, 5, 20, 2])
        await next_tick()
        model.release.set()
        await asyncio.gather(first, *rest)
    assert model.batches == [[1], [3, 4], [5], [20], [2]]


async def test_lingers_for_followers_while_busy() -> None:
    model = Model(gated=True)
    async with MicroBatcher(model, max_batch_size=3, max_wait_ms=600_000) as batcher:
        first = asyncio.create_task(batcher.submit(0))
        await model.wait_started()
        second = asyncio.create_task(batcher.submit(1))
        await next_tick()
        model.release.set()
        assert await first == 0
        # The worker found [1] waiting after a batch and lingers for a fuller one.
        assert model.batches == [[0]]
        followers = submit_all(batcher, [2, 3])
        assert await asyncio.gather(second, *followers) == [10, 20, 30]
    assert model.batches == [[0], [1, 2, 3]]


async def test_without_linger_the_waiting_item_runs_right_after() -> None:
    model = Model(gated=True)
    async with MicroBatcher(model, max_batch_size=3, max_wait_ms=0) as batcher:
        first = asyncio.create_task(batcher.submit(0))
        await model.wait_started()
        second = asyncio.create_task(batcher.submit(1))
        await next_tick()
        model.release.set()
        assert [await first, await second] == [0, 10]
    assert model.batches == [[0], [1]]


async def test_linger_ends_at_the_deadline_measured_from_the_oldest_item() -> None:
    clock = FakeClock()
    model = Model(gated=True)
    async with MicroBatcher(model, max_batch_size=3, max_wait_ms=1000, clock=clock) as batcher:
        first = asyncio.create_task(batcher.submit(0))
        await model.wait_started()
        second = asyncio.create_task(batcher.submit(1))
        await next_tick()
        clock.advance(1.0)  # the waiting item has used up its linger budget
        model.release.set()
        async with asyncio.timeout(GUARD):
            assert [await first, await second] == [0, 10]
    assert model.batches == [[0], [1]]


async def test_item_exception_fails_only_its_caller() -> None:
    def fn(x: int) -> int | BaseException:
        return ValueError(f"bad {x}") if x % 2 else x

    async with MicroBatcher(Model(fn=fn)) as batcher:
        results = await asyncio.gather(*submit_all(batcher, [1, 2]), return_exceptions=True)
    assert isinstance(results[0], ValueError)
    assert str(results[0]) == "bad 1"
    assert results[1] == 2


async def test_batch_exception_fails_every_caller_of_the_batch() -> None:
    boom = RuntimeError("model exploded")

    def batch_fn(items: Sequence[int]) -> list[int]:
        raise boom

    async with MicroBatcher(batch_fn) as batcher:
        results = await asyncio.gather(*submit_all(batcher, [1, 2]), return_exceptions=True)
    assert results == [boom, boom]


async def test_wrong_result_count_fails_every_caller_clearly() -> None:
    def batch_fn(items: Sequence[int]) -> list[int]:
        return [1]

    async with MicroBatcher(batch_fn, name="emb") as batcher:
        results = await asyncio.gather(*submit_all(batcher, [1, 2]), return_exceptions=True)
    for result in results:
        assert isinstance(result, InferenceError)
        assert "returned 1 results for 2 items" in str(result)
        assert "'emb'" in str(result)


async def test_full_queue_raises_overloaded_at_once() -> None:
    model = Model(gated=True)
    async with MicroBatcher(model, max_queue=2) as batcher:
        first = asyncio.create_task(batcher.submit(0))
        await model.wait_started()
        queued = submit_all(batcher, [1, 2])
        await next_tick()
        with pytest.raises(OverloadedError) as info:
            await batcher.submit(3)
        assert info.value.retry_after == pytest.approx(0.1)  # no history yet: the floor
        model.release.set()
        assert await asyncio.gather(first, *queued) == [0, 10, 20]
    assert [3] not in model.batches


async def test_retry_after_estimates_from_recent_batch_durations() -> None:
    clock = FakeClock()
    model = Model(gated=True, clock=clock, run_seconds=2.0)
    async with MicroBatcher(model, max_queue=3, max_batch_size=2, clock=clock) as batcher:
        model.release.set()
        assert await batcher.submit(0) == 0  # one batch of 2.0 fake seconds
        await model.wait_started()  # consume that batch's start signal
        model.release.clear()
        first = asyncio.create_task(batcher.submit(1))
        await model.wait_started()
        queued = submit_all(batcher, [2, 3, 4])
        await next_tick()
        with pytest.raises(OverloadedError) as info:
            await batcher.submit(5)
        # Three waiting items are two batches of two seconds each.
        assert info.value.retry_after == pytest.approx(4.0)
        model.release.set()
        await asyncio.gather(first, *queued)


async def test_cancelled_queued_caller_never_reaches_the_batch_fn() -> None:
    model = Model(gated=True)
    async with MicroBatcher(model, max_wait_ms=0) as batcher:
        first = asyncio.create_task(batcher.submit(0))
        await model.wait_started()
        doomed, kept = submit_all(batcher, [1, 2])
        await next_tick()
        assert batcher.queue_depth == 2
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert batcher.queue_depth == 1
        model.release.set()
        assert [await first, await kept] == [0, 20]
    assert model.batches == [[0], [2]]


async def test_item_cancelled_just_before_the_worker_takes_it_is_skipped() -> None:
    model = Model()
    async with MicroBatcher(model, max_wait_ms=0) as batcher:
        doomed, kept = submit_all(batcher, [1, 2])
        await next_tick()  # both queued; the idle worker is woken but has not run yet
        doomed.cancel()  # its future is cancelled now, its cleanup runs after the worker
        assert batcher.queue_depth == 1
        assert await kept == 20
        assert doomed.cancelled()
    assert model.batches == [[2]]


async def test_caller_cancelled_during_its_batch_leaves_the_others_intact() -> None:
    def fn(x: int) -> int | BaseException:
        return ValueError("bad") if x == 2 else x

    model = Model(gated=True, fn=fn)
    async with MicroBatcher(model) as batcher:
        gone_ok, gone_err, stays = submit_all(batcher, [1, 2, 3])
        await model.wait_started()
        gone_ok.cancel()
        gone_err.cancel()
        model.release.set()
        assert await stays == 3
    assert gone_ok.cancelled()
    assert gone_err.cancelled()
    assert model.batches == [[1, 2, 3]]


async def test_aclose_fails_queued_items_and_lets_the_running_batch_finish() -> None:
    model = Model(gated=True)
    batcher: MicroBatcher[int, int] = MicroBatcher(model, name="m")
    await batcher.start()
    first = asyncio.create_task(batcher.submit(0))
    await model.wait_started()
    queued = submit_all(batcher, [1, 2])
    await next_tick()
    closing = asyncio.create_task(batcher.aclose())
    await next_tick()
    assert not batcher.running
    for task in queued:
        with pytest.raises(ShuttingDownError, match="shut down before this request was run"):
            await task
    with pytest.raises(ShuttingDownError, match="closing"):
        await batcher.submit(3)
    model.release.set()
    assert await first == 0
    await closing
    assert model.batches == [[0]]
    assert batcher.queue_depth == 0


async def test_aclose_grace_abandons_a_stuck_batch_with_a_clear_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = Model(gated=True)
    batcher: MicroBatcher[int, int] = MicroBatcher(model)
    await batcher.start()
    stuck = asyncio.create_task(batcher.submit(0))
    await model.wait_started()
    await batcher.aclose(grace=0)
    with pytest.raises(ShuttingDownError, match="stopped while this batch ran"):
        await stuck
    assert "abandoned" in caplog.text
    model.release.set()  # let the worker thread finish before the loop closes


async def test_submit_before_start_and_restart_after_close_are_refused() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(Model())
    with pytest.raises(ShuttingDownError, match="not started"):
        await batcher.submit(1)
    await batcher.aclose()  # closing a never-started batcher is harmless
    with pytest.raises(ShuttingDownError, match="cannot be restarted"):
        await batcher.start()


async def test_start_twice_keeps_one_worker() -> None:
    model = Model()
    batcher: MicroBatcher[int, int] = MicroBatcher(model)
    await batcher.start()
    await batcher.start()
    assert await batcher.submit(1) == 10
    await batcher.aclose()
    await batcher.aclose()
    assert not batcher.running


@dataclass
class Report:
    model: str
    size: int
    queue_waits: list[float]
    run_seconds: float


class RecordingObserver:
    def __init__(self) -> None:
        self.reports: list[Report] = []

    def on_batch(
        self, model: str, size: int, queue_waits: Sequence[float], run_seconds: float
    ) -> None:
        self.reports.append(Report(model, size, list(queue_waits), run_seconds))


async def test_observer_gets_size_queue_waits_and_run_time() -> None:
    clock = FakeClock()
    observer = RecordingObserver()
    model = Model(gated=True, clock=clock, run_seconds=2.0)
    async with MicroBatcher(
        model, max_wait_ms=0, clock=clock, name="m", observer=observer
    ) as batcher:
        first = asyncio.create_task(batcher.submit(0))
        await model.wait_started()
        followers = submit_all(batcher, [1, 2])
        await next_tick()
        clock.advance(1.5)
        model.release.set()
        await asyncio.gather(first, *followers)
    assert observer.reports == [
        Report("m", 1, [0.0], 3.5),  # 1.5 s passed while it ran, then it took 2.0 s more
        Report("m", 2, [3.5, 3.5], 2.0),  # queued at 0, started when the first batch ended
    ]


async def test_failing_observer_does_not_break_serving(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def on_batch(
            self, model: str, size: int, queue_waits: Sequence[float], run_seconds: float
        ) -> None:
            raise RuntimeError("metrics down")

    async with MicroBatcher(Model(), observer=Broken()) as batcher:
        assert await batcher.submit(1) == 10
        assert await batcher.submit(2) == 20
    assert "observer failed" in caplog.text


async def test_cost_fn_must_not_be_negative() -> None:
    async with MicroBatcher(Model(), cost_fn=lambda x: -x) as batcher:
        with pytest.raises(ValueError, match="negative cost"):
            await batcher.submit(1)
        assert batcher.queue_depth == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_tokens": -1}, "max_batch_tokens"),
        ({"max_wait_ms": -1.0}, "max_wait_ms"),
        ({"max_queue": 0}, "max_queue"),
    ],
)
async def test_rejects_invalid_configuration(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MicroBatcher(Model(), **kwargs)  # type: ignore[arg-type]


# --- property: nothing lost, duplicated or mis-routed -------------------------------------------


class ItemError(Exception):
    """The batch function's verdict on one item."""

    def __init__(self, item: int) -> None:
        super().__init__(f"item {item} failed")
        self.item = item


class BatchError(Exception):
    """The batch function failed as a whole."""

    def __init__(self, batch: list[int]) -> None:
        super().__init__(f"batch {batch} failed")
        self.batch = batch


BLOCKER = -1
KINDS = ["ok", "ok", "err", "cancel", "poison"]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(0, 24))
    return {
        "kinds": draw(st.lists(st.sampled_from(KINDS), min_size=n, max_size=n)),
        "costs": draw(st.lists(st.integers(1, 8), min_size=n, max_size=n)),
        "first_wave": draw(st.integers(0, n)),
        "max_batch_size": draw(st.integers(1, 6)),
        "max_batch_tokens": draw(st.sampled_from([0, 5, 12])),
        "max_queue": draw(st.integers(1, 30)),
        "max_wait_ms": draw(st.sampled_from([0.0, 1.0])),
    }


async def _run_scenario(
    kinds: list[str],
    costs: list[int],
    first_wave: int,
    max_batch_size: int,
    max_batch_tokens: int,
    max_queue: int,
    max_wait_ms: float,
) -> None:
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    blocked = asyncio.Event()
    seen: list[list[int]] = []

    def batch_fn(items: Sequence[int]) -> list[int | BaseException]:
        batch = list(items)
        seen.append(batch)
        if batch == [BLOCKER]:
            loop.call_soon_threadsafe(blocked.set)
            gate.wait(GUARD)
            return [0]
        if any(kinds[i] == "poison" for i in batch):
            raise BatchError(batch)
        return [ItemError(i) if kinds[i] == "err" else i * 10 for i in batch]

    def cost(i: int) -> int:
        return 1 if i == BLOCKER else costs[i]

    batcher: MicroBatcher[int, int] = MicroBatcher(
        batch_fn,
        max_batch_size=max_batch_size,
        max_batch_tokens=max_batch_tokens,
        max_queue=max_queue,
        max_wait_ms=max_wait_ms,
        cost_fn=cost,
    )
    n = len(kinds)
    async with asyncio.timeout(GUARD), batcher:
        # Hold the worker on a blocker so the first wave queues up deterministically.
        blocker = asyncio.create_task(batcher.submit(BLOCKER))
        await blocked.wait()
        tasks = submit_all(batcher, range(first_wave))
        await next_tick()
        for i in range(first_wave):
            if kinds[i] == "cancel":
                tasks[i].cancel()
        gate.set()
        # A second wave races with the running batches.
        tasks += submit_all(batcher, range(first_wave, n))
        await next_tick()
        for i in range(first_wave, n):
            if kinds[i] == "cancel":
                tasks[i].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert await blocker == 0

    ran = [i for batch in seen for i in batch if i != BLOCKER]
    assert len(ran) == len(set(ran)), "an item reached the batch function twice"
    batch_of = {i: batch for batch in seen for i in batch}
    for batch in seen:
        assert len(batch) <= max_batch_size
        if max_batch_tokens and len(batch) > 1:
            assert sum(cost(i) for i in batch) <= max_batch_tokens
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, OverloadedError):
            # In the first wave only the items beyond the queue bound are refused.
            assert i >= max_queue or i >= first_wave
            assert i not in batch_of
            continue
        if isinstance(outcome, asyncio.CancelledError):
            assert kinds[i] == "cancel"
            if i < first_wave:
                assert i not in batch_of, "a cancelled queued item reached the batch function"
            continue
        assert i < max_queue or i >= first_wave, "an item beyond the queue bound was accepted"
        assert i in batch_of, "an accepted item was lost"
        if any(kinds[j] == "poison" for j in batch_of[i]):
            assert isinstance(outcome, BatchError)
            assert outcome.batch == batch_of[i]
        elif kinds[i] == "err":
            assert isinstance(outcome, ItemError)
            assert outcome.item == i
        else:
            assert outcome == i * 10


@settings(max_examples=120, deadline=None)
@given(scenario=scenarios())
def test_never_loses_duplicates_or_misroutes_results(scenario: dict[str, object]) -> None:
    asyncio.run(_run_scenario(**scenario))  # type: ignore[arg-type]


async def test_submit_many_returns_results_in_order_in_one_batch() -> None:
    model = Model()
    async with MicroBatcher(model, max_batch_size=8) as batcher:
        async with asyncio.timeout(GUARD):
            assert await batcher.submit_many([1, 2, 3]) == [10, 20, 30]
    assert model.batches == [[1, 2, 3]]


async def test_submit_many_is_all_or_nothing_when_the_queue_is_busy() -> None:
    model = Model(gated=True)
    async with MicroBatcher(model, max_batch_size=1, max_queue=3) as batcher:
        running = asyncio.create_task(batcher.submit(0))
        await model.wait_started()
        waiting = asyncio.create_task(batcher.submit_many([1, 2]))
        await next_tick()
        assert batcher.queue_depth == 2
        with pytest.raises(OverloadedError):
            await batcher.submit_many([3, 4])
        assert batcher.queue_depth == 2  # nothing of the refused request was queued
        model.release.set()
        async with asyncio.timeout(GUARD):
            assert await running == 0
            assert await waiting == [10, 20]


async def test_submit_many_admits_a_large_request_into_an_empty_queue() -> None:
    model = Model()
    async with MicroBatcher(model, max_batch_size=2, max_queue=2) as batcher:
        async with asyncio.timeout(GUARD):
            assert await batcher.submit_many([1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]


async def test_submit_many_failure_of_one_item_drops_the_queued_rest() -> None:
    def fn(x: int) -> int | BaseException:
        return ValueError("bad item") if x == 1 else x

    model = Model(fn=fn)
    async with MicroBatcher(model, max_batch_size=1) as batcher:
        with pytest.raises(ValueError, match="bad item"):
            async with asyncio.timeout(GUARD):
                await batcher.submit_many([1, 2, 3])
        assert batcher.queue_depth == 0
    assert [1] in model.batches


async def test_submit_many_cancelled_caller_drops_its_items() -> None:
    model = Model(gated=True)
    async with MicroBatcher(model, max_batch_size=1) as batcher:
        running = asyncio.create_task(batcher.submit(0))
        await model.wait_started()
        many = asyncio.create_task(batcher.submit_many([1, 2]))
        await next_tick()
        many.cancel()
        with pytest.raises(asyncio.CancelledError):
            await many
        assert batcher.queue_depth == 0
        model.release.set()
        async with asyncio.timeout(GUARD):
            assert await running == 0
    assert model.batches == [[0]]


async def test_submit_many_refused_when_not_started() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(Model())
    with pytest.raises(ShuttingDownError):
        await batcher.submit_many([1])
