"""The middleware stack, as plain ASGI classes (cheap: no per-request Request objects).

Order, outermost first: request context (request id, in-flight, drain, metrics, access log)
-> body size limit -> auth -> rate limit -> routes. Each layer stores what later layers need
in ``scope["state"]`` (``request_id``, ``api_key``, ``rate_limits``, ``model``).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hfserve.core.rate_limiter import RateDecision
from hfserve.errors import AuthError, HfServeError, PayloadTooLargeError, RateLimitedError
from hfserve.server.errors import error_response
from hfserve.server.state import ServerState

__all__ = [
    "AuthMiddleware",
    "BodyLimitMiddleware",
    "RateLimitMiddleware",
    "RequestContextMiddleware",
    "format_reset",
    "route_label",
]

access_log = logging.getLogger("hfserve.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ALWAYS_PUBLIC = frozenset({"/health", "/ready"})
_KNOWN_ROUTES = frozenset(
    {
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/classifications",
    }
)


def route_label(path: str) -> str:
    """A bounded-cardinality label for a request path (unknown paths become ``other``)."""
    if path in _KNOWN_ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return "other"


def _state(scope: Scope) -> dict[str, Any]:
    return scope.setdefault("state", {})  # type: ignore[no-any-return]


async def _send_error(
    exc: HfServeError,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: dict[str, str] | None = None,
) -> None:
    response = error_response(exc, headers)
    await response(scope, receive, send)


class RequestContextMiddleware:
    """Request id in and out, in-flight accounting, drain refusal, metrics and the access log."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = self.state
        ctx = _state(scope)
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else secrets.token_hex(16)
        ctx["request_id"] = request_id
        path = scope["path"]
        route = route_label(path)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Appending the raw pair is much cheaper than MutableHeaders' scan-and-replace;
                # nothing downstream sets x-request-id.
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        server.request_started()
        try:
            if server.draining and path not in _ALWAYS_PUBLIC and path != "/metrics":
                try:
                    server.check_accepting()
                except HfServeError as exc:
                    await _send_error(exc, scope, receive, send_with_id)
                    return
            await self.app(scope, receive, send_with_id)
        finally:
            server.request_finished()
            elapsed = time.perf_counter() - started
            model = ctx.get("model", "")
            server.metrics.observe_request(route, model, status, elapsed)
            if server.settings.access_log and route not in {"/health", "/ready", "/metrics"}:
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


class BodyLimitMiddleware:
    """Refuse bodies over ``max_body_bytes`` with 413, by header and while streaming in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        too_large = PayloadTooLargeError(
            f"request body is larger than the server's limit of {limit} bytes",
            code="request_too_large",
        )
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_error(too_large, scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        await self.app(scope, limited_receive, send)


class AuthMiddleware:
    """API keys from ``Authorization: Bearer`` or ``x-api-key``; every route but the public ones."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        public = set(_ALWAYS_PUBLIC) | {"/openapi.json"}
        if state.settings.public_metrics:
            public.add("/metrics")
        self.public = frozenset(public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        server = self.state
        if server.auth_enabled():
            presented = _presented_key(scope)
            try:
                if not presented:
                    raise AuthError(
                        "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
                    )
                _state(scope)["api_key"] = server.keystore.verify(presented)
            except AuthError as exc:
                server.metrics.auth_failures.inc()
                await _send_error(exc, scope, receive, send, {"WWW-Authenticate": "Bearer"})
                return
        await self.app(scope, receive, send)


class RateLimitMiddleware:
    """Per-key requests/min and tokens/min, with OpenAI's ``x-ratelimit-*`` headers."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        server = self.state
        ctx = _state(scope)
        key = ctx.get("api_key")
        limits = server.limits_for(key)
        if not limits.requests_per_minute and not limits.tokens_per_minute:
            await self.app(scope, receive, send)
            return
        subject = key.id if key is not None else f"ip:{(scope.get('client') or ('-', 0))[0]}"
        ctx["rate_subject"] = subject
        ctx["rate_limits"] = limits
        decision = await server.rate_limiter.allow(subject, limits)
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            budget = (
                "requests"
                if decision.remaining_requests <= 0 < decision.limit_requests
                else "tokens"
            )
            server.metrics.rate_limited.labels(budget).inc()
            exc = RateLimitedError(
                f"rate limit reached for {budget} per minute; retry after {decision.retry_after:.1f}s",
                retry_after=decision.retry_after,
            )
            await _send_error(exc, scope, receive, send, headers)
            return

        raw = [(name.encode(), value.encode()) for name, value in headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *raw]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def rate_limit_headers(decision: RateDecision) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the budgets that are limited."""
    headers: dict[str, str] = {}
    if decision.limit_requests:
        headers["x-ratelimit-limit-requests"] = str(decision.limit_requests)
        headers["x-ratelimit-remaining-requests"] = str(max(0, decision.remaining_requests))
        headers["x-ratelimit-reset-requests"] = format_reset(decision.reset_requests)
    if decision.limit_tokens:
        headers["x-ratelimit-limit-tokens"] = str(decision.limit_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, decision.remaining_tokens))
        headers["x-ratelimit-reset-tokens"] = format_reset(decision.reset_tokens)
    return headers


def format_reset(seconds: float) -> str:
    """Durations as OpenAI writes them: ``250ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def _presented_key(scope: Scope) -> str | None:
    auth = _header(scope, b"authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = _header(scope, b"x-api-key")
    return key.strip() if key else None
