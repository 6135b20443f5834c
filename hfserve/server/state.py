"""Everything one running server shares across requests, built once by ``create_app``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hfserve.core.rate_limiter import RateLimiter, RateLimits
from hfserve.core.response_cache import ResponseCache
from hfserve.errors import ShuttingDownError
from hfserve.server.metrics import BREAKER_STATE_VALUES, Metrics
from hfserve.settings import Settings

if TYPE_CHECKING:
    from starlette.responses import Response

    from hfserve.core.keystore import ApiKey, KeyStore
    from hfserve.runtime.loader import ModelLoader
    from hfserve.server.shared_state import ReadyReport

__all__ = ["ServerState"]

log = logging.getLogger("hfserve.server")
# A bound on cached RateLimits objects (one per distinct key limit pair; keys are few).
_MAX_LIMIT_SHAPES = 1024


@dataclass
class ServerState:
    """Shared state of one server: its components and its lifecycle flags."""

    settings: Settings
    loader: ModelLoader
    keystore: KeyStore
    rate_limiter: RateLimiter
    response_cache: ResponseCache | None
    metrics: Metrics
    ready: bool = False
    draining: bool = False
    preload_error: str | None = None
    in_flight: int = 0
    started_at: int = 0
    # The ``/v1/models`` response and the state it was built from (see routes/ops.py).
    models_listing: tuple[object, Response] | None = None
    # Extra readiness dependencies (Redis): details for /ready and whether they block it.
    extra_ready_checks: Callable[[], Awaitable[ReadyReport]] | None = None
    # Whether keys turned auth on when last looked at (None: not yet), to log when it flips.
    _keys_auth: bool | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _limits: dict[tuple[int, int], RateLimits] = field(default_factory=dict)

    # --- auth and limits --------------------------------------------------------------------
    def auth_enabled(self) -> bool:
        """Whether requests must carry a key (re-evaluated: creating the first key turns it on)."""
        if self.settings.auth is not None:
            return self.settings.auth
        on = self.keystore.has_keys()
        if on != self._keys_auth:
            if self._keys_auth is not None:
                # A running server changing its auth must never be a surprise: say so loudly.
                log.warning(
                    "%s (changed while running); %s",
                    self.auth_status(),
                    "requests without a key now get 401" if on else "requests need no key",
                )
            self._keys_auth = on
        return on

    def auth_status(self) -> str:
        """``auth on: 3 keys in FILE``, ``auth off: --no-auth`` or ``auth off: no keys yet …``."""
        return self.settings.auth_status(len(self.keystore.list_keys()))

    def limits_for(self, key: ApiKey | None) -> RateLimits:
        """The key's own limits, else the configured defaults."""
        rpm = key.rpm if key is not None and key.rpm is not None else self.settings.default_rpm
        tpm = key.tpm if key is not None and key.tpm is not None else self.settings.default_tpm
        # Asked on every request; the distinct (rpm, tpm) pairs are as few as the keys' limits.
        limits = self._limits.get((rpm, tpm))
        if limits is None:
            if len(self._limits) >= _MAX_LIMIT_SHAPES:
                self._limits.clear()
            limits = self._limits[rpm, tpm] = RateLimits(rpm, tpm)
        return limits

    # --- lifecycle --------------------------------------------------------------------------
    def check_accepting(self) -> None:
        """Refuse new work while draining.

        Raises:
            ShuttingDownError: the server is shutting down.
        """
        if self.draining:
            raise ShuttingDownError(
                "the server is shutting down; retry on another replica", retry_after=1
            )

    def request_started(self) -> None:
        """Count a request in flight (drain waits for these)."""
        # The in-flight gauge is set when metrics are read (refresh_gauges), not here: two
        # gauge writes per request would be a measurable share of a cheap request's cost.
        self.in_flight += 1

    def request_finished(self) -> None:
        """A request in flight has ended."""
        self.in_flight -= 1

    def begin_drain(self) -> None:
        """Turn readiness off and refuse new requests; in-flight ones continue."""
        if not self.draining:
            log.info(
                "draining: /ready is 503, new requests are refused, %d in flight", self.in_flight
            )
        self.draining = True

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a background task, keeping a strong reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_tasks(self) -> None:
        """Cancel background tasks and wait for them."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- metrics ----------------------------------------------------------------------------
    def refresh_gauges(self) -> None:
        """Set the point-in-time gauges (in flight, queues, generations, breakers) for a scrape."""
        m = self.metrics
        m.in_flight.set(self.in_flight)
        loaded = self.loader.loaded()
        m.models_loaded.set(len(loaded))
        cache = self.loader.cache
        for name in self.loader.specs:
            model = cache.peek(name)
            # Unloaded models report zeros, so a gauge never sticks at its last loaded value.
            m.queue_depth.labels(name).set(getattr(model, "queue_depth", 0))
            m.active_generations.labels(name).set(getattr(model, "active_generations", 0))
            m.breaker_state.labels(name).set(
                BREAKER_STATE_VALUES.get(str(self.loader.breaker(name).state), 0)
            )
