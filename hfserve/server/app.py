"""``create_app(settings)``: the Starlette app, its middleware stack and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from hfserve.core.keystore import KeyStore
from hfserve.core.rate_limiter import RateLimiter
from hfserve.core.response_cache import ResponseCache
from hfserve.errors import HfServeError
from hfserve.runtime.loader import ModelLoader, runtime_options_from
from hfserve.server.endpoints import ENDPOINTS, Endpoint
from hfserve.server.errors import error_body, error_response, unhandled_error_response
from hfserve.server.metrics import Metrics
from hfserve.server.middleware import ExceptionHandlers, ServingMiddleware
from hfserve.server.openapi import build_openapi
from hfserve.server.requests import ClientDisconnectedError, json_response, server_state
from hfserve.server.shared_state import SharedState
from hfserve.server.state import ServerState
from hfserve.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("hfserve.server")


def create_app(
    settings: Settings,
    *,
    loader: ModelLoader | None = None,
    keystore: KeyStore | None = None,
    rate_limiter: RateLimiter | None = None,
    response_cache: ResponseCache | None = None,
    endpoints: tuple[Endpoint, ...] = ENDPOINTS,
) -> Starlette:
    """Build the app. Does no I/O: models load in the lifespan, keys are read on demand.

    ``endpoints`` is the route table (:data:`hfserve.server.endpoints.ENDPOINTS`); routes,
    middleware and the OpenAPI document all come from it.
    """
    metrics_ = Metrics()
    if loader is None:
        options = runtime_options_from(settings, batch_observer=metrics_)
        loader = ModelLoader(settings, observer=metrics_, runtime_options=options)
    # Memory backends, or Redis ones shared with replicas when settings.redis_url is set.
    shared = SharedState.from_settings(settings, metrics=metrics_)
    if keystore is None:
        revoked = shared.revoked_ids if shared.shared else None
        keystore = KeyStore(settings.keys_file, revoked_ids=revoked)
    state = ServerState(
        settings=settings,
        loader=loader,
        keystore=keystore,
        rate_limiter=rate_limiter if rate_limiter is not None else shared.rate_limiter,
        response_cache=response_cache if response_cache is not None else shared.response_cache,
        metrics=metrics_,
        extra_ready_checks=shared.ready_report if shared.shared else None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.started_at = int(time.time())
        await shared.start()
        state.spawn(_preload(state))
        if settings.model_idle_ttl > 0:
            state.spawn(state.loader.sweep_idle())
        if metrics_.multiprocess_dir is not None:
            state.spawn(_sample_gauges(state))
        try:
            yield
        finally:
            state.begin_drain()
            await state.cancel_tasks()
            await state.loader.aclose()
            await shared.aclose()

    # Starlette tries routes in order, and each miss costs about a microsecond. A model route
    # spends milliseconds, so a few misses do not show there; the GET routes (model list,
    # probes, metrics) are nearly all overhead, so they are tried first (stable sort: the
    # table's order otherwise; no GET path overlaps a POST path).
    routes = [
        Route(e.path, e.handler, methods=[e.method], include_in_schema=e.openapi is not None)
        for e in sorted(endpoints, key=lambda e: e.method != "GET")
    ]
    # The client's errors; ServingMiddleware answers them itself on the routes it dispatches.
    handlers: ExceptionHandlers = {
        HfServeError: _hfserve_error,
        HTTPException: _http_error,
        ClientDisconnectedError: _client_gone,
    }
    # Outermost first. CORS answers preflights itself and adds its headers to every response,
    # refusals (401, 429, 413) and 500s included, so browsers can read those errors. Then
    # hfserve's own layer, outside Starlette's ServerErrorMiddleware: it answers a bug in the
    # routes it dispatches itself, and the 500 of any other route passes through it (request
    # id, metrics, access log) like every other response.
    outer = []
    if settings.cors_origins:
        outer.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["authorization", "content-type", "x-api-key", "x-request-id"],
                expose_headers=["x-request-id", "retry-after", "x-cache"],
            )
        )
    outer.append(
        Middleware(ServingMiddleware, state=state, endpoints=endpoints, exception_handlers=handlers)
    )
    app = _App(
        outer=outer,
        routes=routes,
        lifespan=lifespan,
        # Exception: a bug, answered by Starlette's ServerErrorMiddleware (inside ours).
        exception_handlers={**handlers, Exception: unhandled_error_response},
    )
    app.state.hfserve = state
    app.state.openapi = build_openapi(
        secured=True, public_metrics=settings.public_metrics, endpoints=endpoints
    )
    return app


class _App(Starlette):
    """Starlette with ``outer`` middleware outside its ServerErrorMiddleware.

    Starlette puts user middleware inside its ServerErrorMiddleware, so every request would
    pass through that layer's coroutine and ``send`` wrapper before reaching hfserve's. The
    routes ServingMiddleware dispatches itself never reach the layers inside it, and it
    answers their bugs itself, so outside is where it costs nothing.
    """

    def __init__(self, *, outer: list[Middleware], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._outer = outer

    def build_middleware_stack(self) -> ASGIApp:
        """Starlette's stack, wrapped in ``outer`` (the first one outermost)."""
        app = super().build_middleware_stack()
        for cls, args, kwargs in reversed(self._outer):
            app = cls(app, *args, **kwargs)
        return app


async def _sample_gauges(state: ServerState, interval: float = 1.0) -> None:
    # With several workers a scrape reaches one of them, so each keeps its own gauges
    # (queue depth, active generations, breakers) fresh in the shared directory.
    while True:
        state.refresh_gauges()
        await asyncio.sleep(interval)


async def _preload(state: ServerState) -> None:
    try:
        await state.loader.preload()
    except HfServeError as exc:
        state.preload_error = exc.message
        log.error("preloading models failed: %s", exc.message)
    except Exception as exc:
        state.preload_error = f"{type(exc).__name__}: {exc}"
        log.exception("preloading models failed")
    else:
        state.ready = True
        log.info("models ready: %s", ", ".join(state.loader.loaded()) or "none")


async def _hfserve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HfServeError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"unknown endpoint {request.method} {request.url.path}"
        body = error_body(message, "invalid_request_error", code="not_found")
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        body = error_body(message, "invalid_request_error", code="method_not_allowed")
    else:
        body = error_body(str(exc.detail), "invalid_request_error", code=None)
    return json_response(body, status=exc.status_code, headers=dict(exc.headers or {}))


async def _client_gone(request: Request, exc: Exception) -> Response:
    state = server_state(request)
    state.metrics.client_disconnects.inc()
    # Nobody reads this; 499 (nginx's "client closed request") keeps logs and metrics honest.
    return Response(status_code=499)
