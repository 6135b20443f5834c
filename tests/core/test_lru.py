"""SizedLRU: recency order and a byte total that stays exact through every change."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hfserve.core.lru import SizedLRU


@dataclass(frozen=True)
class Item:
    size_bytes: int


def test_put_touch_pop_keep_order_and_bytes() -> None:
    lru: SizedLRU[str, Item] = SizedLRU()
    assert lru.put("a", Item(3)) is None
    lru.put("b", Item(5))
    lru.put("c", Item(7))
    assert lru.keys_by_recency() == ["a", "b", "c"] and lru.total_bytes == 15
    lru.touch("a")
    assert lru.oldest() == "b"
    replaced = lru.put("b", Item(1))  # replacing moves it to the most recent end
    assert replaced == Item(5)
    assert lru.keys_by_recency() == ["c", "a", "b"] and lru.total_bytes == 11
    assert lru.pop("c") == Item(7)
    assert lru.total_bytes == 4 and len(lru) == 2 and "c" not in lru and "a" in lru
    assert lru.get("a") == Item(3) and lru.get("c") is None
    assert [k for k, _ in lru.items()] == ["a", "b"]


def test_missing_keys_raise() -> None:
    lru: SizedLRU[str, Item] = SizedLRU()
    with pytest.raises(KeyError):
        lru.touch("x")
    with pytest.raises(KeyError):
        lru.pop("x")
    with pytest.raises(StopIteration):
        lru.oldest()


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 100), st.booleans())))
def test_total_is_the_sum_of_what_is_stored(ops: list[tuple[str, int, bool]]) -> None:
    lru: SizedLRU[str, Item] = SizedLRU()
    for key, size, remove in ops:
        if remove and key in lru:
            lru.pop(key)
        else:
            lru.put(key, Item(size))
        assert lru.total_bytes == sum(item.size_bytes for _, item in lru.items())
