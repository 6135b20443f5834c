"""ModelCache: LRU by count and bytes, pinning, idle expiry, eviction callbacks, threads."""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hfserve.core.clock import FakeClock
from hfserve.core.model_cache import CacheStats, ModelCache
from hfserve.errors import OverloadedError


class Model:
    """A stand-in for a loaded model: compared by identity, like the real thing."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Model({self.name})"


@dataclass
class Recorder:
    """Collects on_evict calls in order."""

    calls: list[tuple[str, Model, str]] = field(default_factory=list)

    def __call__(self, key: str, value: Model, reason: str) -> None:
        self.calls.append((key, value, reason))

    def reasons(self) -> list[tuple[str, str]]:
        return [(key, reason) for key, _, reason in self.calls]


def make(
    *, max_entries: int = 3, max_bytes: int = 0, idle_ttl: float = 0.0
) -> tuple[ModelCache[str, Model], FakeClock, Recorder]:
    clock = FakeClock()
    recorder = Recorder()
    cache: ModelCache[str, Model] = ModelCache(
        max_entries=max_entries,
        max_bytes=max_bytes,
        idle_ttl=idle_ttl,
        clock=clock,
        on_evict=recorder,
    )
    return cache, clock, recorder


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_entries": 0}, "max_entries"),
        ({"max_entries": 1, "max_bytes": -1}, "max_bytes"),
        ({"max_entries": 1, "idle_ttl": -0.5}, "idle_ttl"),
    ],
)
def test_rejects_invalid_limits(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelCache[str, Model](**kwargs)  # type: ignore[arg-type]


def test_exposes_its_limits() -> None:
    cache, _, _ = make(max_entries=2, max_bytes=50, idle_ttl=7.5)
    assert (cache.max_entries, cache.max_bytes, cache.idle_ttl) == (2, 50, 7.5)


def test_works_with_the_default_clock_and_no_callback() -> None:
    cache: ModelCache[str, Model] = ModelCache(max_entries=1, idle_ttl=3600)
    first, second = Model("a"), Model("b")
    cache.put("a", first, size_bytes=1)
    assert cache.put("b", second, size_bytes=1) == ["a"]
    cache.clear()
    assert cache.evict_idle() == []
    assert len(cache) == 0


def test_rejects_negative_size() -> None:
    cache, _, _ = make()
    with pytest.raises(ValueError, match="size_bytes"):
        cache.put("a", Model("a"), size_bytes=-1)
    assert len(cache) == 0


# --- LRU by count -----------------------------------------------------------------------------


def test_evicts_least_recently_used_when_full() -> None:
    cache, _, recorder = make(max_entries=2)
    a, b, c = Model("a"), Model("b"), Model("c")
    assert cache.put("a", a, size_bytes=1) == []
    assert cache.put("b", b, size_bytes=1) == []
    assert cache.put("c", c, size_bytes=1) == ["a"]
    assert cache.keys() == ["b", "c"]
    assert recorder.calls == [("a", a, "lru")]
    assert "a" not in cache
    assert "b" in cache


def test_get_refreshes_recency_and_counts() -> None:
    cache, _, _ = make(max_entries=2)
    a = Model("a")
    cache.put("a", a, size_bytes=1)
    cache.put("b", Model("b"), size_bytes=1)
    assert cache.get("a") is a
    assert cache.get("missing") is None
    assert cache.keys() == ["b", "a"]
    assert cache.put("c", Model("c"), size_bytes=1) == ["b"]
    assert cache.stats.hits == 1
    assert cache.stats.misses == 1


def test_peek_touches_neither_recency_nor_stats() -> None:
    cache, _, _ = make(max_entries=2)
    a = Model("a")
    cache.put("a", a, size_bytes=1)
    cache.put("b", Model("b"), size_bytes=1)
    assert cache.peek("a") is a
    assert cache.peek("missing") is None
    assert cache.keys() == ["a", "b"]
    assert (cache.stats.hits, cache.stats.misses) == (0, 0)


# --- byte budget ------------------------------------------------------------------------------


def test_evicts_for_bytes_until_the_new_entry_fits() -> None:
    cache, _, recorder = make(max_entries=10, max_bytes=100)
    cache.put("a", Model("a"), size_bytes=40)
    cache.put("b", Model("b"), size_bytes=40)
    cache.put("c", Model("c"), size_bytes=20)
    assert cache.total_bytes == 100
    assert cache.put("d", Model("d"), size_bytes=70) == ["a", "b"]
    assert recorder.reasons() == [("a", "bytes"), ("b", "bytes")]
    assert cache.keys() == ["c", "d"]
    assert cache.total_bytes == 90


def test_count_overflow_is_reported_before_bytes() -> None:
    cache, _, recorder = make(max_entries=2, max_bytes=100)
    cache.put("a", Model("a"), size_bytes=50)
    cache.put("b", Model("b"), size_bytes=50)
    assert cache.put("c", Model("c"), size_bytes=100) == ["a", "b"]
    # "a" goes because the cache is full of entries; "b" only because of bytes.
    assert recorder.reasons() == [("a", "lru"), ("b", "bytes")]


def test_zero_max_bytes_means_no_byte_limit() -> None:
    cache, _, _ = make(max_entries=2, max_bytes=0)
    cache.put("a", Model("a"), size_bytes=10**12)
    cache.put("b", Model("b"), size_bytes=10**12)
    assert cache.total_bytes == 2 * 10**12


# --- pinning ----------------------------------------------------------------------------------


def test_pinned_entries_are_skipped_by_lru() -> None:
    cache, _, recorder = make(max_entries=2)
    cache.put("a", Model("a"), size_bytes=1, pinned=True)
    cache.put("b", Model("b"), size_bytes=1)
    assert cache.put("c", Model("c"), size_bytes=1) == ["b"]
    assert cache.keys() == ["a", "c"]
    assert recorder.reasons() == [("b", "lru")]
    assert cache.is_pinned("a")
    assert not cache.is_pinned("c")
    assert not cache.is_pinned("missing")


def test_pin_and_unpin_change_evictability() -> None:
    cache, _, _ = make(max_entries=2)
    cache.put("a", Model("a"), size_bytes=1)
    cache.put("b", Model("b"), size_bytes=1)
    cache.pin("a")
    assert cache.put("c", Model("c"), size_bytes=1) == ["b"]
    cache.unpin("a")
    assert cache.put("d", Model("d"), size_bytes=1) == ["a"]


def test_pin_and_unpin_of_absent_key_raise_key_error() -> None:
    cache, _, _ = make()
    with pytest.raises(KeyError):
        cache.pin("missing")
    with pytest.raises(KeyError):
        cache.unpin("missing")


def test_all_slots_pinned_raises_overloaded_and_leaves_cache_unchanged() -> None:
    cache, _, recorder = make(max_entries=2)
    cache.put("a", Model("a"), size_bytes=1, pinned=True)
    cache.put("b", Model("b"), size_bytes=1, pinned=True)
    before = cache.stats
    with pytest.raises(OverloadedError, match="pinned") as info:
        cache.put("c", Model("c"), size_bytes=1)
    assert info.value.code == "overloaded"
    assert cache.keys() == ["a", "b"]
    assert cache.stats == before
    assert recorder.calls == []


def test_pinned_bytes_leave_too_little_room_raises_overloaded() -> None:
    cache, _, recorder = make(max_entries=5, max_bytes=100)
    cache.put("a", Model("a"), size_bytes=70, pinned=True)
    cache.put("b", Model("b"), size_bytes=20)
    with pytest.raises(OverloadedError, match="only 30 of the 100-byte"):
        cache.put("c", Model("c"), size_bytes=40)
    # Nothing was evicted on the way to discovering it cannot fit.
    assert cache.keys() == ["a", "b"]
    assert cache.total_bytes == 90
    assert recorder.calls == []


def test_entry_larger_than_the_whole_budget_raises_overloaded() -> None:
    cache, _, _ = make(max_entries=5, max_bytes=100)
    cache.put("a", Model("a"), size_bytes=10)
    with pytest.raises(OverloadedError, match="more than the whole 100-byte"):
        cache.put("big", Model("big"), size_bytes=101)
    assert cache.keys() == ["a"]


# --- replacement ------------------------------------------------------------------------------


def test_replacing_a_value_evicts_the_old_one_as_replaced() -> None:
    cache, _, recorder = make(max_entries=2)
    old, new = Model("old"), Model("new")
    cache.put("a", old, size_bytes=10)
    cache.put("b", Model("b"), size_bytes=1)
    assert cache.put("a", new, size_bytes=5) == []
    assert recorder.calls == [("a", old, "replaced")]
    assert cache.peek("a") is new
    assert cache.keys() == ["b", "a"]
    assert cache.total_bytes == 6
    assert cache.stats.evictions == 1


def test_re_putting_the_same_value_updates_size_and_pin_without_callback() -> None:
    cache, _, recorder = make(max_entries=2)
    a = Model("a")
    cache.put("a", a, size_bytes=10, pinned=True)
    cache.put("b", Model("b"), size_bytes=1)
    assert cache.put("a", a, size_bytes=3) == []
    assert recorder.calls == []
    assert not cache.is_pinned("a")
    assert cache.total_bytes == 4
    assert cache.keys() == ["b", "a"]


def test_replacement_does_not_count_its_own_old_size_against_the_budget() -> None:
    cache, _, recorder = make(max_entries=3, max_bytes=100)
    cache.put("a", Model("a"), size_bytes=60)
    cache.put("b", Model("b"), size_bytes=10)
    assert cache.put("a", Model("a2"), size_bytes=90) == []
    assert recorder.reasons() == [("a", "replaced")]
    assert cache.total_bytes == 100


def test_failed_replacement_keeps_the_old_value() -> None:
    cache, _, recorder = make(max_entries=3, max_bytes=100)
    old = Model("old")
    cache.put("p", Model("p"), size_bytes=50, pinned=True)
    cache.put("a", old, size_bytes=10)
    with pytest.raises(OverloadedError):
        cache.put("a", Model("new"), size_bytes=60)
    assert cache.peek("a") is old
    assert cache.total_bytes == 60
    assert recorder.calls == []


# --- explicit eviction, idle expiry, clear ----------------------------------------------------


def test_evict_removes_even_pinned_entries() -> None:
    cache, _, recorder = make()
    a = Model("a")
    cache.put("a", a, size_bytes=5, pinned=True)
    assert cache.evict("a") is True
    assert cache.evict("a") is False
    assert recorder.calls == [("a", a, "explicit")]
    assert cache.total_bytes == 0
    assert cache.stats.pinned == 0


def test_evict_idle_is_a_no_op_without_ttl() -> None:
    cache, clock, _ = make(idle_ttl=0)
    cache.put("a", Model("a"), size_bytes=1)
    clock.advance(10**9)
    assert cache.evict_idle() == []
    assert "a" in cache


def test_evict_idle_removes_only_unpinned_entries_idle_past_ttl() -> None:
    cache, clock, recorder = make(max_entries=5, idle_ttl=10)
    cache.put("old", Model("old"), size_bytes=1)
    cache.put("pinned", Model("pinned"), size_bytes=1, pinned=True)
    clock.advance(5)
    cache.put("fresh", Model("fresh"), size_bytes=1)
    clock.advance(5)
    # Exactly ttl seconds idle is not yet "more than" ttl.
    assert cache.evict_idle() == []
    clock.advance(0.5)
    assert cache.evict_idle() == ["old"]
    assert recorder.reasons() == [("old", "idle")]
    assert cache.keys() == ["pinned", "fresh"]


def test_get_resets_idle_time_but_peek_does_not() -> None:
    cache, clock, _ = make(idle_ttl=10)
    cache.put("got", Model("got"), size_bytes=1)
    cache.put("peeked", Model("peeked"), size_bytes=1)
    clock.advance(8)
    cache.get("got")
    cache.peek("peeked")
    clock.advance(8)
    assert cache.evict_idle() == ["peeked"]


def test_unpin_starts_the_idle_clock_afresh() -> None:
    cache, clock, _ = make(idle_ttl=10)
    cache.put("a", Model("a"), size_bytes=1, pinned=True)
    clock.advance(100)
    cache.unpin("a")
    assert cache.evict_idle() == []
    clock.advance(11)
    assert cache.evict_idle() == ["a"]


def test_clear_removes_everything_including_pinned() -> None:
    cache, _, recorder = make()
    cache.put("a", Model("a"), size_bytes=3, pinned=True)
    cache.put("b", Model("b"), size_bytes=4)
    cache.clear()
    assert len(cache) == 0
    assert cache.total_bytes == 0
    assert recorder.reasons() == [("a", "clear"), ("b", "clear")]
    assert cache.stats == CacheStats(hits=0, misses=0, evictions=2, entries=0, bytes=0, pinned=0)


def test_stats_snapshot() -> None:
    cache, _, _ = make(max_entries=2)
    cache.put("a", Model("a"), size_bytes=3, pinned=True)
    cache.put("b", Model("b"), size_bytes=4)
    cache.get("a")
    cache.get("zzz")
    cache.put("c", Model("c"), size_bytes=5)
    assert cache.stats == CacheStats(hits=1, misses=1, evictions=1, entries=2, bytes=8, pinned=1)


# --- on_evict discipline ----------------------------------------------------------------------


def test_on_evict_runs_outside_the_lock() -> None:
    seen: list[tuple[int, bool]] = []
    cache: ModelCache[str, Model]

    def on_evict(key: str, value: Model, reason: str) -> None:
        # Re-entering the cache would deadlock if the callback ran under its lock.
        seen.append((len(cache), key in cache))

    cache = ModelCache(max_entries=1, on_evict=on_evict)
    cache.put("a", Model("a"), size_bytes=1)
    worker = threading.Thread(
        target=cache.put, args=("b", Model("b")), kwargs={"size_bytes": 1}, daemon=True
    )
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "on_evict was called while the cache lock was held"
    assert seen == [(1, False)]


def test_failing_on_evict_is_logged_and_does_not_corrupt_the_cache(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def on_evict(key: str, value: Model, reason: str) -> None:
        calls.append(key)
        if key == "a":
            raise RuntimeError("cuda error while freeing")

    cache: ModelCache[str, Model] = ModelCache(max_entries=2, max_bytes=10, on_evict=on_evict)
    cache.put("a", Model("a"), size_bytes=5)
    cache.put("b", Model("b"), size_bytes=5)
    with caplog.at_level(logging.ERROR, logger="hfserve.core.model_cache"):
        assert cache.put("c", Model("c"), size_bytes=10) == ["a", "b"]
    assert calls == ["a", "b"]
    assert "on_evict failed for 'a'" in caplog.text
    assert cache.keys() == ["c"]
    assert cache.total_bytes == 10
    assert cache.stats.evictions == 2


# --- threads ----------------------------------------------------------------------------------


def test_concurrent_put_and_get_keep_the_cache_consistent() -> None:
    evicted: Counter[int] = Counter()
    evicted_lock = threading.Lock()

    def on_evict(key: int, value: object, reason: str) -> None:
        with evicted_lock:
            evicted[id(value)] += 1

    cache: ModelCache[int, object] = ModelCache(max_entries=8, max_bytes=200, on_evict=on_evict)
    threads, ops = 4, 2000
    barrier = threading.Barrier(threads)
    inserted: list[list[object]] = [[] for _ in range(threads)]
    gets = [0] * threads
    errors: list[BaseException] = []

    def hammer(index: int) -> None:
        rng = random.Random(index)
        try:
            barrier.wait()
            for _ in range(ops):
                key = rng.randrange(16)
                if rng.random() < 0.5:
                    value = object()
                    inserted[index].append(value)
                    cache.put(key, value, size_bytes=rng.randint(1, 60))
                else:
                    gets[index] += 1
                    cache.get(key)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    stats = cache.stats
    assert stats.entries == len(cache.keys()) <= 8
    assert stats.bytes == cache.total_bytes <= 200
    assert stats.hits + stats.misses == sum(gets)
    cached = cache.keys()
    live = {id(cache.peek(key)) for key in cached}
    every = [id(value) for values in inserted for value in values]
    # Every value ever stored was either still cached or handed to on_evict exactly once.
    assert all(evicted[v] == (0 if v in live else 1) for v in every)
    assert stats.evictions == sum(evicted.values()) == len(every) - len(live)


# --- state machine against a reference model --------------------------------------------------


@dataclass
class _RefEntry:
    value: Model
    size: int
    pinned: bool
    last_used: float


class _ReferenceCache:
    """The obvious, slow implementation the real cache must agree with."""

    def __init__(self, max_entries: int, max_bytes: int, idle_ttl: float) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.idle_ttl = idle_ttl
        self.entries: OrderedDict[str, _RefEntry] = OrderedDict()
        self.hits = self.misses = self.evictions = 0
        self.log: list[tuple[str, Model, str]] = []

    def _drop(self, key: str, reason: str) -> None:
        entry = self.entries.pop(key)
        self.evictions += 1
        self.log.append((key, entry.value, reason))

    def _over(self, count: int, size: int) -> tuple[bool, bool]:
        return count > self.max_entries, bool(self.max_bytes) and size > self.max_bytes

    def put(self, key: str, value: Model, size: int, pinned: bool, now: float) -> list[str]:
        others = {k: e for k, e in self.entries.items() if k != key}
        kept = [e for e in others.values() if e.pinned]
        if any(self._over(len(kept) + 1, sum(e.size for e in kept) + size)):
            raise OverloadedError("reference: cannot fit")
        count, total = len(others) + 1, sum(e.size for e in others.values()) + size
        evicted: list[str] = []
        while any(self._over(count, total)):
            over_count, _ = self._over(count, total)
            victim = next(k for k, e in self.entries.items() if k != key and not e.pinned)
            count, total = count - 1, total - self.entries[victim].size
            self._drop(victim, "lru" if over_count else "bytes")
            evicted.append(victim)
        old = self.entries.get(key)
        if old is not None and old.value is not value:
            self._drop(key, "replaced")
        self.entries.pop(key, None)
        self.entries[key] = _RefEntry(value, size, pinned, now)
        return evicted


KEYS = st.sampled_from(["a", "b", "c", "d", "e"])


class ModelCacheMachine(RuleBasedStateMachine):
    """Random operations on ModelCache and the reference; their observable states must match."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.recorder = Recorder()
        self.serial = 0
        self.values: list[Model] = []

    @initialize(
        max_entries=st.integers(1, 4),
        max_bytes=st.one_of(st.just(0), st.integers(1, 120)),
        idle_ttl=st.sampled_from([0, 1, 2, 4]),
    )
    def setup(self, max_entries: int, max_bytes: int, idle_ttl: int) -> None:
        self.cache: ModelCache[str, Model] = ModelCache(
            max_entries=max_entries,
            max_bytes=max_bytes,
            idle_ttl=idle_ttl,
            clock=self.clock,
            on_evict=self.recorder,
        )
        self.ref = _ReferenceCache(max_entries, max_bytes, idle_ttl)

    @rule(key=KEYS, size=st.integers(0, 70), pinned=st.booleans(), reuse=st.booleans())
    def put(self, key: str, size: int, pinned: bool, reuse: bool) -> None:
        existing = self.ref.entries.get(key)
        if reuse and existing is not None:
            value = existing.value
        else:
            self.serial += 1
            value = Model(f"{key}{self.serial}")
        now = self.clock.now()
        try:
            expected = self.ref.put(key, value, size, pinned, now)
        except OverloadedError:
            with pytest.raises(OverloadedError):
                self.cache.put(key, value, size_bytes=size, pinned=pinned)
            return
        assert self.cache.put(key, value, size_bytes=size, pinned=pinned) == expected
        if value not in self.values:
            self.values.append(value)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        entry = self.ref.entries.get(key)
        if entry is None:
            self.ref.misses += 1
            assert self.cache.get(key) is None
        else:
            self.ref.hits += 1
            entry.last_used = self.clock.now()
            self.ref.entries.move_to_end(key)
            assert self.cache.get(key) is entry.value

    @rule(key=KEYS)
    def peek(self, key: str) -> None:
        entry = self.ref.entries.get(key)
        assert self.cache.peek(key) is (None if entry is None else entry.value)

    @rule(key=KEYS)
    def pin(self, key: str) -> None:
        entry = self.ref.entries.get(key)
        if entry is None:
            with pytest.raises(KeyError):
                self.cache.pin(key)
        else:
            entry.pinned = True
            self.cache.pin(key)

    @rule(key=KEYS)
    def unpin(self, key: str) -> None:
        entry = self.ref.entries.get(key)
        if entry is None:
            with pytest.raises(KeyError):
                self.cache.unpin(key)
        else:
            entry.pinned = False
            entry.last_used = self.clock.now()
            self.cache.unpin(key)

    @rule(key=KEYS)
    def evict(self, key: str) -> None:
        present = key in self.ref.entries
        if present:
            self.ref._drop(key, "explicit")
        assert self.cache.evict(key) is present

    @rule()
    def evict_idle(self) -> None:
        expected: list[str] = []
        if self.ref.idle_ttl:
            now = self.clock.now()
            expected = [
                k
                for k, e in self.ref.entries.items()
                if not e.pinned and now - e.last_used > self.ref.idle_ttl
            ]
        for key in expected:
            self.ref._drop(key, "idle")
        assert self.cache.evict_idle() == expected

    @rule(seconds=st.integers(0, 2))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: len(self.ref.entries) > 2)
    @rule()
    def clear(self) -> None:
        for key in list(self.ref.entries):
            self.ref._drop(key, "clear")
        self.cache.clear()

    @invariant()
    def matches_reference(self) -> None:
        ref = self.ref
        assert self.cache.keys() == list(ref.entries)
        assert [self.cache.is_pinned(k) for k in ref.entries] == [
            e.pinned for e in ref.entries.values()
        ]
        assert self.recorder.calls == ref.log
        assert self.cache.stats == CacheStats(
            hits=ref.hits,
            misses=ref.misses,
            evictions=ref.evictions,
            entries=len(ref.entries),
            bytes=sum(e.size for e in ref.entries.values()),
            pinned=sum(e.pinned for e in ref.entries.values()),
        )

    @invariant()
    def respects_budgets(self) -> None:
        assert len(self.cache) <= self.ref.max_entries
        if self.ref.max_bytes:
            assert self.cache.total_bytes <= self.ref.max_bytes

    @invariant()
    def on_evict_once_per_removed_value(self) -> None:
        cached = self.cache.keys()
        live = {id(self.cache.peek(k)) for k in cached}
        counts = Counter(id(value) for _, value, _ in self.recorder.calls)
        for value in self.values:
            assert counts[id(value)] == (0 if id(value) in live else 1), value
        assert self.cache.stats.evictions == len(self.recorder.calls)


ModelCacheMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestModelCacheMachine = ModelCacheMachine.TestCase
