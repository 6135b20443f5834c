"""``release_memory``: garbage collection plus glibc's malloc_trim where there is one."""

from __future__ import annotations

import ctypes.util
import platform
import sys

import pytest

from hfserve.core import memory


@pytest.fixture(autouse=True)
def _fresh_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_trim", None)


def test_trims_the_heap_on_glibc() -> None:
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert memory.release_memory() is on_glibc
    assert memory.release_memory() is on_glibc  # the looked-up function is reused


def test_no_libc_means_no_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert memory.release_memory() is False


def test_a_libc_without_malloc_trim_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    class Musl:
        def __init__(self, name: str) -> None:
            self.name = name

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libc.musl.so")
    monkeypatch.setattr(memory.ctypes, "CDLL", Musl)
    assert memory.release_memory() is False
