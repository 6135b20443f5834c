"""Drain on SIGTERM (DrainingServer) and cancellation when a client goes away."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette

from hfserve.server.app import _client_gone
from hfserve.server.lifecycle import DrainingServer
from hfserve.server.metrics import Metrics
from hfserve.server.requests import STATE_SCOPE_KEY, ClientDisconnectedError, run_until_disconnect


class _State:
    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False
        self.preload_error: str | None = None

    def begin_drain(self) -> None:
        self.draining = True


def _server(grace: float) -> tuple[DrainingServer, _State]:
    state = _State()
    server = DrainingServer(uvicorn.Config(Starlette()), state=state, grace_period=grace)  # type: ignore[arg-type]
    return server, state


async def test_first_signal_drains_and_exits_when_idle() -> None:
    server, state = _server(grace=30)
    state.in_flight = 1
    server.handle_exit(15, None)
    assert state.draining and not server.should_exit
    assert await server.on_tick(1) is False  # a request is still in flight
    state.in_flight = 0
    assert await server.on_tick(1) is True


async def test_a_failed_preload_stops_the_server_without_a_signal() -> None:
    server, state = _server(grace=30)
    assert await server.on_tick(1) is False
    state.preload_error = "cannot load model 'x': no skill handles ./x"
    assert await server.on_tick(1) is True and not state.draining


async def test_grace_period_over_cancels_the_rest() -> None:
    server, state = _server(grace=0)
    state.in_flight = 2
    server.handle_exit(15, None)
    time.sleep(0.001)  # the deadline is now in the past (grace 0); no waiting on real work
    assert await server.on_tick(1) is True


def test_second_signal_forces_exit() -> None:
    server, _ = _server(grace=30)
    server.handle_exit(15, None)
    server.handle_exit(2, None)
    assert server.should_exit and server.force_exit
    assert server._captured_signals == []  # never re-raised: the process exits 0


class _Request:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self._messages = messages
        self.metrics = Metrics()
        self.scope = {STATE_SCOPE_KEY: SimpleNamespace(metrics=self.metrics)}

    async def receive(self) -> dict[str, Any]:
        if self._messages:
            return self._messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")


async def test_disconnect_cancels_the_work() -> None:
    cancelled = asyncio.Event()

    async def work() -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    request = _Request(
        [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]
    )
    with pytest.raises(ClientDisconnectedError):
        await run_until_disconnect(request, work())  # type: ignore[arg-type]
    assert cancelled.is_set()


async def test_work_that_finishes_first_returns_its_result() -> None:
    async def work() -> int:
        return 7

    assert await run_until_disconnect(_Request([]), work()) == 7  # type: ignore[arg-type]


async def test_client_gone_answers_499_and_counts_it() -> None:
    request = _Request([])
    response = await _client_gone(request, ClientDisconnectedError())  # type: ignore[arg-type]
    assert response.status_code == 499
    metrics = request.metrics.render().decode()
    assert "hfserve_client_disconnects_total 1.0" in metrics
