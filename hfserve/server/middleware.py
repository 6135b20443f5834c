"""hfserve's middleware: one plain ASGI class (cheap: no per-request Request objects).

It handles, in order: request id, in-flight accounting, drain refusal, body size limit, auth,
rate limit; then the route (dispatched here for the table's exact paths, through Starlette's
router otherwise); then metrics and the access log. It stores what routes need in
``scope["state"]`` (``request_id``, ``api_key``, ``rate_subject``, ``rate_limits``), reads
back ``model`` for the metrics labels, and releases the models the request held once its
response is done (see ``load_model``). CORS, when enabled, wraps it (see app.py).
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hfserve.core.rate_limiter import RateDecision, RateLimits
from hfserve.errors import AuthError, HfServeError, PayloadTooLargeError, RateLimitedError
from hfserve.server.endpoints import ENDPOINTS, Endpoint, EndpointIndex, Handler
from hfserve.server.errors import error_response, unhandled_error_response
from hfserve.server.requests import RELEASES_KEY, STATE_SCOPE_KEY
from hfserve.server.state import ServerState

__all__ = ["ExceptionHandlers", "ServingMiddleware", "format_reset"]

ExceptionHandlers = Mapping[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]

access_log = logging.getLogger("hfserve.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Request ids must be unique, not secret (they are echoed in headers and logs): 64 random
# bits per process (replicas and workers apart) then a counter, 32 hex digits in all. A third
# of the cost of 128 fresh random bits per request, and never a repeat within a process.
_ID_PREFIX = f"{random.SystemRandom().getrandbits(64):016x}"
_id_counter = itertools.count(1)


class ServingMiddleware:
    """Everything hfserve does around a route, as one ASGI layer.

    In order: request id in and out, in-flight accounting, drain refusal, the body size limit
    (by header and while the body streams in), API-key auth, the per-key rate limit with
    OpenAI's ``x-ratelimit-*`` headers, then metrics and the access log once the response is
    done. One layer rather than one per concern because each layer costs a coroutine frame and
    a ``send`` wrapper on every request, and this is the whole per-request budget of a server
    whose cheapest routes answer in tens of microseconds (benchmarks/overhead.py).
    """

    def __init__(
        self,
        app: ASGIApp,
        state: ServerState,
        endpoints: tuple[Endpoint, ...] = ENDPOINTS,
        exception_handlers: ExceptionHandlers | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.max_bytes = state.settings.max_body_bytes
        settings = state.settings
        self.endpoints = EndpointIndex(endpoints)
        self.public = frozenset(
            e.path
            for e in endpoints
            if e.public or (e.public_setting is not None and getattr(settings, e.public_setting))
        )
        self.drain_exempt = frozenset(e.path for e in endpoints if e.drain_exempt)
        self.body_limits: dict[str, int] = {
            e.path: int(getattr(settings, e.body_limit_setting))
            for e in endpoints
            if e.body_limit_setting is not None
        }
        # On an upload endpoint the body is the file: a refusal names it, as OpenAI's does.
        self.uploads = frozenset(
            e.path for e in endpoints if e.openapi is not None and e.openapi.multipart
        )
        self.unlogged = frozenset(e.metric_label for e in endpoints if not e.access_log)
        self.access_log = settings.access_log
        # Metric labels of the exact paths, looked up once per request without the index.
        self.labels = {e.path: e.metric_label for e in endpoints if "{" not in e.path}
        # Exact (path, method) pairs are dispatched here, past Starlette's exception middleware
        # and router: the two layers, their send wrappers and the route scan are a measurable
        # share of a cheap route's cost. Templated paths, other methods (HEAD, 405s) and unknown
        # paths still go through the router. ``exception_handlers`` answer the client's errors
        # as Starlette's ExceptionMiddleware would; anything else is a bug, answered with the
        # same 500 as Starlette's ServerErrorMiddleware (inside this layer) gives other routes.
        self.direct: dict[tuple[str, str], Handler] = {
            (e.path, e.method): e.handler for e in reversed(endpoints) if "{" not in e.path
        }
        self.exception_handlers: ExceptionHandlers = exception_handlers or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = self.state
        ctx: dict[str, Any] = scope.setdefault("state", {})  # what Request.state reads
        scope[STATE_SCOPE_KEY] = server
        incoming, length, presented = _scan_headers(scope["headers"])
        if incoming and _REQUEST_ID.match(incoming):
            request_id = incoming
        else:
            request_id = f"{_ID_PREFIX}{next(_id_counter):016x}"
        ctx["request_id"] = request_id
        path = scope["path"]
        route = self.labels.get(path) or self.endpoints.label(path)
        # Headers every response of this request carries, whoever writes it (route or error).
        # Appending raw pairs is much cheaper than MutableHeaders' scan-and-replace; nothing
        # downstream sets these names.
        extra = [(b"x-request-id", request_id.encode())]
        status = 0  # 0 until the response starts
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        server.request_started()
        try:
            refusal, pending = self._admit(scope, ctx, path, extra, length, presented)
            if pending is not None:  # a shared (Redis) rate limiter: awaited
                refusal = self._judge(await server.rate_limiter.allow(*pending), extra)
            if refusal is not None:
                await error_response(refusal, _refusal_headers(refusal))(
                    scope, receive, send_with_headers
                )
                return
            limit = self.body_limits.get(path, self.max_bytes)
            limited = self._limited(receive, limit, path in self.uploads)
            handler = self.direct.get((path, scope["method"]))
            if handler is None:
                await self.app(scope, limited, send_with_headers)
                return
            request = Request(scope, limited)
            try:
                response = await handler(request)
                await response(scope, limited, send_with_headers)
            except Exception as exc:
                response = await self._handle(request, exc, started=status != 0)
                await response(scope, limited, send_with_headers)
        except Exception as exc:
            # A bug (here or in a route this layer dispatched): a 500 in OpenAI's shape, as
            # Starlette's ServerErrorMiddleware answers for the routes behind it, then
            # re-raised for uvicorn to log, as that layer does.
            if status == 0:
                await unhandled_error_response(Request(scope), exc)(
                    scope, receive, send_with_headers
                )
            raise
        finally:
            server.request_finished()
            releases = ctx.get(RELEASES_KEY)
            if releases is not None:
                for release in releases:
                    release()
            elapsed = time.perf_counter() - started
            status = status or 500
            model = ctx.get("model", "")
            server.metrics.observe_request(route, model, status, elapsed)
            if (
                self.access_log
                and route not in self.unlogged
                and access_log.isEnabledFor(logging.INFO)
            ):
                key = ctx.get("api_key")
                access_log.info(
                    "method=%s path=%s status=%d duration_ms=%.1f request_id=%s model=%s key_id=%s",
                    scope["method"],
                    path,
                    status,
                    elapsed * 1000,
                    request_id,
                    model or "-",
                    key.id if key is not None else "-",
                )

    async def _handle(self, request: Request, exc: Exception, *, started: bool) -> Response:
        """The response of a registered exception handler (what Starlette's would send).

        Raises:
            Exception: ``exc`` itself when no handler is registered for it (Starlette's
                ``__call__`` then answers 500), or a RuntimeError when the response
                had already started.
        """
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                break
        else:
            raise exc
        if started:
            raise RuntimeError("Caught handled exception, but response already started.") from exc
        return await handler(request, exc)

    def _admit(
        self,
        scope: Scope,
        ctx: dict[str, Any],
        path: str,
        extra: list[tuple[bytes, bytes]],
        length: str | None,
        presented: str | None,
    ) -> tuple[HfServeError | None, tuple[str, RateLimits] | None]:
        """The error that refuses this request before it reaches a route (None to admit it),
        and the rate-limit check still to await (None when decided here, as it is in memory).

        Synchronous: a coroutine per request costs a measurable share of a cheap route.
        """
        server = self.state
        if server.draining and path not in self.drain_exempt:
            try:
                server.check_accepting()
            except HfServeError as exc:
                return exc, None
        limit = self.body_limits.get(path, self.max_bytes)
        if length is not None and length.isdigit() and int(length) > limit:
            return self._too_large(limit, path in self.uploads), None
        if path in self.public or scope["method"] == "OPTIONS":
            return None, None
        key = None
        if server.auth_enabled():
            try:
                if not presented:
                    raise AuthError(
                        "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
                    )
                key = ctx["api_key"] = server.keystore.verify(presented)
            except AuthError as exc:
                server.metrics.auth_failures.inc()
                return exc, None
        if not path.startswith("/v1/"):
            return None, None
        limits = server.limits_for(key)
        if not limits.requests_per_minute and not limits.tokens_per_minute:
            return None, None
        subject = key.id if key is not None else f"ip:{(scope.get('client') or ('-', 0))[0]}"
        ctx["rate_subject"] = subject
        ctx["rate_limits"] = limits
        decision = server.rate_limiter.allow_now(subject, limits)
        if decision is None:
            return None, (subject, limits)
        return self._judge(decision, extra), None

    def _judge(
        self, decision: RateDecision, extra: list[tuple[bytes, bytes]]
    ) -> RateLimitedError | None:
        """Add the rate-limit headers; the refusal when the decision refuses."""
        extra += _rate_limit_headers(decision)
        if decision.allowed:
            return None
        server = self.state
        budget = (
            "requests" if decision.remaining_requests <= 0 < decision.limit_requests else "tokens"
        )
        server.metrics.rate_limited.labels(budget).inc()
        return RateLimitedError(
            f"rate limit reached for {budget} per minute; retry after {decision.retry_after:.1f}s",
            retry_after=decision.retry_after,
        )

    @staticmethod
    def _too_large(limit: int, upload: bool) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body is larger than the server's limit of {limit} bytes",
            param="file" if upload else None,
            code="request_too_large",
        )

    def _limited(self, receive: Receive, limit: int, upload: bool) -> Receive:
        """``receive`` that raises 413 once the streamed body passes ``limit``."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large(limit, upload)
            return message

        return limited_receive


def _refusal_headers(exc: HfServeError) -> dict[str, str] | None:
    """Headers a refusal needs beyond the error body (``WWW-Authenticate`` on a 401)."""
    return {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None


def _rate_limit_headers(decision: RateDecision) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-*`` headers for the budgets that are limited, as raw ASGI pairs."""
    # Per request: the tuple unpacked once (a NamedTuple field read is a descriptor call).
    # Remaining counts are never negative in a decision (see RateDecision).
    _, _, limit_req, left_req, reset_req, limit_tok, left_tok, reset_tok = decision
    headers: list[tuple[bytes, bytes]] = []
    if limit_req:
        headers += (
            (b"x-ratelimit-limit-requests", b"%d" % limit_req),
            (b"x-ratelimit-remaining-requests", b"%d" % left_req),
            (b"x-ratelimit-reset-requests", _reset_bytes(reset_req)),
        )
    if limit_tok:
        headers += (
            (b"x-ratelimit-limit-tokens", b"%d" % limit_tok),
            (b"x-ratelimit-remaining-tokens", b"%d" % left_tok),
            (b"x-ratelimit-reset-tokens", _reset_bytes(reset_tok)),
        )
    return headers


# Sub-second resets (nearly all of them: a bucket refills one request's worth in 60/rpm s)
# looked up rather than formatted per request.
_RESET_MS = tuple(b"%dms" % ms for ms in range(1001))


def _reset_bytes(seconds: float) -> bytes:
    if seconds < 1:
        return _RESET_MS[max(0, round(seconds * 1000))]
    return format_reset(seconds).encode()


def format_reset(seconds: float) -> str:
    """Durations as OpenAI writes them: ``250ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def _scan_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None, str | None]:
    """The request id, content length and presented API key, in one pass over the headers.

    One pass instead of one scan per header: this runs on every request. The first of
    repeated headers counts; a key in ``Authorization: Bearer`` wins over ``x-api-key``.
    """
    request_id = length = bearer = api_key = None
    for name, value in headers:
        if name == b"authorization":
            if bearer is None:
                bearer = value
        elif name == b"x-request-id":
            if request_id is None:
                request_id = value.decode("latin-1")
        elif name == b"content-length":
            if length is None:
                length = value.decode("latin-1")
        elif name == b"x-api-key" and api_key is None:
            api_key = value
    if bearer:
        scheme, _, token = bearer.partition(b" ")
        token = token.strip()
        if token and scheme.lower() == b"bearer":
            return request_id, length, token.decode("latin-1")
    if api_key:
        api_key = api_key.strip()
        if api_key:
            return request_id, length, api_key.decode("latin-1")
    return request_id, length, None
