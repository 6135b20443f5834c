"""Graceful shutdown: uvicorn's server with a drain phase before it stops."""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn

from hfserve.server.state import ServerState

__all__ = ["DrainingServer"]

log = logging.getLogger("hfserve.server")


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain phase before shutdown.

    On the first SIGTERM/SIGINT the server keeps listening but turns ``/ready`` 503 and
    refuses new work, waits for in-flight requests (streams included) up to the grace
    period, then lets uvicorn shut down (the app's lifespan then cancels what is left with a
    clear error). A second signal forces exit. The exit status is 0.

    A pinned model that fails to preload stops the server right away: a server that can never
    become ready should say so and exit, not sit unready until a probe gives up on it.
    """

    def __init__(self, config: uvicorn.Config, *, state: ServerState, grace_period: float) -> None:
        super().__init__(config)
        self.hf_state = state
        self.grace_period = grace_period
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start draining on the first signal; force exit on the second."""
        # Deliberately not recorded in _captured_signals: uvicorn would re-raise it after
        # shutdown and the process would die by the signal instead of exiting 0.
        if self.drain_deadline is not None:
            log.warning("second signal: exiting now")
            self.should_exit = True
            self.force_exit = True
            return
        self.drain_deadline = time.monotonic() + self.grace_period
        self.hf_state.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's periodic tick: end the drain when idle or when the grace period is over;
        stop at once when a ``--model`` failed to preload (the CLI then exits non-zero)."""
        if self.hf_state.preload_error is not None and not self.should_exit:
            self.should_exit = True
        deadline = self.drain_deadline
        if deadline is not None and not self.should_exit:
            if self.hf_state.in_flight <= 0:
                self.should_exit = True
            elif time.monotonic() >= deadline:
                log.warning(
                    "grace period over: cancelling %d request(s) still in flight",
                    self.hf_state.in_flight,
                )
                self.should_exit = True
        return bool(await super().on_tick(counter))
