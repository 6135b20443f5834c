"""Fixtures for the load-generator tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bench.fake_openai import FakeServer, serve


@pytest.fixture(scope="session")
def fake_server_session() -> Iterator[FakeServer]:
    """One loopback fake server for the whole session (uvicorn start/stop is not free)."""
    yield from serve()


@pytest.fixture
def fake_server(fake_server_session: FakeServer) -> FakeServer:
    """The shared fake server with its behaviour reset for this test."""
    fake_server_session.reset()
    return fake_server_session
