"""Response cache: canonical keys, the memory backend's TTL and budget, failure tolerance."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfserve.core.clock import FakeClock
from hfserve.core.response_cache import (
    DEFAULT_MAX_VALUE_BYTES,
    MemoryResponseBackend,
    ResponseCache,
    ResponseCacheBackend,
    ResponseCacheStats,
    make_cache_key,
)

# --- make_cache_key ---------------------------------------------------------------------------


def test_key_is_a_sha256_hex_digest() -> None:
    key = make_cache_key("gpt2", {"prompt": "hi"})
    assert len(key) == 64
    assert int(key, 16) >= 0


def test_key_ignores_dict_order_at_every_depth() -> None:
    first = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "n": 1}
    second = {"n": 1, "temperature": 0, "messages": [{"content": "hi", "role": "user"}]}
    assert make_cache_key("m", first) == make_cache_key("m", second)


def test_key_is_stable_across_releases() -> None:
    # A shared (Redis) cache is read by several server versions: the encoding must not drift.
    canonical = '["v1","m",{"a":[1,2.5,null,true],"b":"é"}]'
    assert make_cache_key("m", {"b": "é", "a": [1, 2.5, None, True]}, namespace="v1") == (
        hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    )


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("m", {"a": 1}, ""), ("n", {"a": 1}, "")),
        (("m", {"a": 1}, ""), ("m", {"a": 2}, "")),
        (("m", {"a": 1}, ""), ("m", {"a": 1}, "tenant")),
        (("m", {"a": [1, 2]}, ""), ("m", {"a": [2, 1]}, "")),
        (("m", {"a": "1"}, ""), ("m", {"a": 1}, "")),
        # Naive concatenation of the parts would make these two collide.
        (("ab", {}, "c"), ("b", {}, "ca")),
    ],
)
def test_distinct_inputs_give_distinct_keys(
    left: tuple[str, dict[str, Any], str], right: tuple[str, dict[str, Any], str]
) -> None:
    assert make_cache_key(left[0], left[1], namespace=left[2]) != make_cache_key(
        right[0], right[1], namespace=right[2]
    )


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=50)
@given(request=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6))
def test_key_depends_only_on_content_not_insertion_order(request: dict[str, Any]) -> None:
    reversed_request = dict(reversed(list(request.items())))
    assert make_cache_key("m", request) == make_cache_key("m", reversed_request)


@given(
    a=st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    b=st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)
def test_key_equality_matches_request_equality(a: dict[str, int], b: dict[str, int]) -> None:
    assert (make_cache_key("m", a) == make_cache_key("m", b)) == (a == b)


def test_key_rejects_values_json_cannot_encode() -> None:
    with pytest.raises(TypeError):
        make_cache_key("m", {"x": object()})


# --- MemoryResponseBackend --------------------------------------------------------------------


def entry_size(key: str, value: bytes) -> int:
    return len(key.encode()) + len(value)


def test_memory_backend_satisfies_the_protocol() -> None:
    assert isinstance(MemoryResponseBackend(max_bytes=1), ResponseCacheBackend)


def test_memory_backend_rejects_negative_budget() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryResponseBackend(max_bytes=-1)


async def test_memory_backend_round_trip_and_miss() -> None:
    backend = MemoryResponseBackend(max_bytes=1000, clock=FakeClock())
    await backend.set("k", b"value", ttl=10)
    assert await backend.get("k") == b"value"
    assert await backend.get("other") is None
    assert len(backend) == 1
    assert backend.total_bytes == entry_size("k", b"value")


async def test_memory_backend_expires_entries_after_ttl() -> None:
    clock = FakeClock()
    backend = MemoryResponseBackend(max_bytes=1000, clock=clock)
    await backend.set("k", b"v", ttl=10)
    clock.advance(9.5)
    assert await backend.get("k") == b"v"
    clock.advance(0.5)
    assert await backend.get("k") is None
    # The expired entry was dropped, not just hidden.
    assert len(backend) == 0
    assert backend.total_bytes == 0


async def test_memory_backend_non_positive_ttl_stores_nothing_and_drops_old_value() -> None:
    backend = MemoryResponseBackend(max_bytes=1000, clock=FakeClock())
    await backend.set("k", b"old", ttl=10)
    await backend.set("k", b"new", ttl=0)
    assert await backend.get("k") is None
    assert backend.total_bytes == 0


async def test_memory_backend_overwrite_replaces_value_size_and_ttl() -> None:
    clock = FakeClock()
    backend = MemoryResponseBackend(max_bytes=1000, clock=clock)
    await backend.set("k", b"short", ttl=1)
    await backend.set("k", b"a longer value", ttl=100)
    clock.advance(50)
    assert await backend.get("k") == b"a longer value"
    assert backend.total_bytes == entry_size("k", b"a longer value")


async def test_memory_backend_evicts_least_recently_used_for_budget() -> None:
    clock = FakeClock()
    size = entry_size("k1", b"x" * 8)
    backend = MemoryResponseBackend(max_bytes=3 * size, clock=clock)
    for name in ("k1", "k2", "k3"):
        await backend.set(name, b"x" * 8, ttl=100)
    assert await backend.get("k1") is not None  # k2 is now the least recently used
    await backend.set("k4", b"x" * 8, ttl=100)
    assert await backend.get("k2") is None
    assert [await backend.get(k) is not None for k in ("k1", "k3", "k4")] == [True] * 3
    assert backend.total_bytes == 3 * size


async def test_memory_backend_evicts_expired_entries_before_live_ones() -> None:
    clock = FakeClock()
    size = entry_size("k1", b"x" * 8)
    backend = MemoryResponseBackend(max_bytes=2 * size, clock=clock)
    await backend.set("k1", b"x" * 8, ttl=100)
    await backend.set("k2", b"x" * 8, ttl=1)
    clock.advance(2)
    await backend.set("k3", b"x" * 8, ttl=100)
    # k1 is older but still valid; the expired k2 made the room.
    assert await backend.get("k1") == b"x" * 8
    assert await backend.get("k3") == b"x" * 8
    assert len(backend) == 2


async def test_memory_backend_evicts_several_entries_for_one_large_value() -> None:
    backend = MemoryResponseBackend(max_bytes=100, clock=FakeClock())
    for name in ("a", "b", "c", "d"):
        await backend.set(name, b"x" * 19, ttl=100)
    await backend.set("big", b"y" * 57, ttl=100)
    assert [await backend.get(k) is not None for k in ("a", "b", "c", "d", "big")] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert backend.total_bytes <= 100


async def test_memory_backend_skips_values_larger_than_the_budget() -> None:
    backend = MemoryResponseBackend(max_bytes=10, clock=FakeClock())
    await backend.set("k", b"fits", ttl=100)
    await backend.set("k", b"far too large to fit", ttl=100)
    assert await backend.get("k") is None
    assert backend.total_bytes == 0


async def test_memory_backend_with_zero_budget_stores_nothing() -> None:
    backend = MemoryResponseBackend(max_bytes=0)
    await backend.set("k", b"", ttl=100)
    assert await backend.get("k") is None


# --- ResponseCache ----------------------------------------------------------------------------


class FailingBackend:
    """A backend whose every call fails, like Redis during an outage."""

    def __init__(self) -> None:
        self.healthy = False
        self.store: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        if not self.healthy:
            raise ConnectionError("redis is down")
        return self.store.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if not self.healthy:
            raise ConnectionError("redis is down")
        self.store[key] = value


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"ttl": 0}, "ttl"), ({"ttl": 1, "max_value_bytes": -1}, "max_value")]
)
def test_response_cache_rejects_invalid_options(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResponseCache(MemoryResponseBackend(max_bytes=1), **kwargs)  # type: ignore[arg-type]


def test_response_cache_exposes_its_configuration() -> None:
    backend = MemoryResponseBackend(max_bytes=1)
    cache = ResponseCache(backend, ttl=30)
    assert cache.backend is backend
    assert cache.ttl == 30
    assert DEFAULT_MAX_VALUE_BYTES == 1024 * 1024


async def test_response_cache_hit_miss_and_store_counts() -> None:
    cache = ResponseCache(MemoryResponseBackend(max_bytes=10_000, clock=FakeClock()), ttl=60)
    assert await cache.get("k") is None
    assert await cache.put("k", b"body") is True
    assert await cache.get("k") == b"body"
    assert cache.stats == ResponseCacheStats(hits=1, misses=1, stores=1, skipped=0, errors=0)


async def test_response_cache_passes_its_ttl_to_the_backend() -> None:
    clock = FakeClock()
    cache = ResponseCache(MemoryResponseBackend(max_bytes=10_000, clock=clock), ttl=60)
    await cache.put("k", b"body")
    clock.advance(59)
    assert await cache.get("k") == b"body"
    clock.advance(1)
    assert await cache.get("k") is None


async def test_response_cache_skips_values_over_max_value_bytes() -> None:
    backend = MemoryResponseBackend(max_bytes=10_000, clock=FakeClock())
    cache = ResponseCache(backend, ttl=60, max_value_bytes=4)
    assert await cache.put("small", b"1234") is True
    assert await cache.put("large", b"12345") is False
    assert await backend.get("large") is None
    assert cache.stats == ResponseCacheStats(hits=0, misses=0, stores=1, skipped=1, errors=0)


async def test_response_cache_swallows_backend_failures(caplog: pytest.LogCaptureFixture) -> None:
    backend = FailingBackend()
    cache = ResponseCache(backend, ttl=60)
    with caplog.at_level(logging.INFO, logger="hfserve.core.response_cache"):
        assert await cache.get("k") is None
        assert await cache.put("k", b"body") is False
        assert await cache.get("k") is None
        assert cache.stats == ResponseCacheStats(hits=0, misses=2, stores=0, skipped=1, errors=3)
        # One warning for the outage, not one per request.
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "ConnectionError: redis is down" in warnings[0].getMessage()

        backend.healthy = True
        assert await cache.put("k", b"body") is True
        assert await cache.get("k") == b"body"
    assert "recovered" in caplog.text
    assert cache.stats == ResponseCacheStats(hits=1, misses=2, stores=1, skipped=1, errors=3)


async def test_response_cache_logs_a_new_outage_after_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FailingBackend()
    cache = ResponseCache(backend, ttl=60)
    with caplog.at_level(logging.WARNING, logger="hfserve.core.response_cache"):
        await cache.get("k")
        backend.healthy = True
        await cache.get("k")
        backend.healthy = False
        await cache.put("k", b"v")
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
