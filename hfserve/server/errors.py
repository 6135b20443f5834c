"""The one table from hfserve's exception tree to HTTP status codes and OpenAI error bodies."""

from __future__ import annotations

import logging
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from hfserve.errors import (
    AuthError,
    HfServeError,
    InferenceError,
    InvalidRequestError,
    KeyNotFoundError,
    ModelLoadError,
    ModelNotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
)

__all__ = ["error_body", "error_response", "status_for", "unhandled_error_response"]

log = logging.getLogger("hfserve.server")

# Ordered: the first matching class wins, so subclasses come before their parents.
_TABLE: tuple[tuple[type[HfServeError], int, str], ...] = (
    (PayloadTooLargeError, 413, "invalid_request_error"),
    (InvalidRequestError, 400, "invalid_request_error"),
    (AuthError, 401, "authentication_error"),
    (PermissionDeniedError, 403, "permission_error"),
    (ModelNotFoundError, 404, "invalid_request_error"),
    (KeyNotFoundError, 404, "invalid_request_error"),
    (RateLimitedError, 429, "rate_limit_error"),
    (RetryableError, 503, "server_overloaded"),
    # A model that cannot load is the server's trouble, not the request's; 503 because
    # another replica (or this one, once fixed) can serve it.
    (ModelLoadError, 503, "server_error"),
    (InferenceError, 500, "server_error"),
)


def status_for(exc: HfServeError) -> tuple[int, str]:
    """The HTTP status and OpenAI error ``type`` for an hfserve error."""
    for cls, status, kind in _TABLE:
        if isinstance(exc, cls):
            return status, kind
    return 500, "server_error"


def error_body(
    message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(exc: HfServeError, headers: dict[str, str] | None = None) -> JSONResponse:
    """Render an hfserve error as an OpenAI error response (with ``Retry-After`` when due)."""
    status, kind = status_for(exc)
    out = dict(headers or {})
    if isinstance(exc, RetryableError):
        out["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(
        error_body(exc.message, kind, param=exc.param, code=exc.code),
        status_code=status,
        headers=out,
    )


def unhandled_error_response(request: Request, exc: Exception) -> JSONResponse:
    """A 500 in OpenAI shape for a bug: logged with its traceback, never sent to the client."""
    request_id = request.scope.get("state", {}).get("request_id", "-")
    log.error(
        "unhandled error on %s %s (request id %s)",
        request.method,
        request.url.path,
        request_id,
        exc_info=exc,
    )
    return JSONResponse(
        error_body(
            f"The server had an internal error while processing the request (request id {request_id}).",
            "server_error",
            code="internal_error",
        ),
        status_code=500,
    )
