"""One exception tree for hfserve.

Every error carries a stable ``code`` (used in the OpenAI error body and in logs).
The core knows nothing about HTTP: ``hfserve.server.errors`` maps these classes to
status codes, and the CLI maps them to exit codes.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CircuitOpenError",
    "ConfigError",
    "HfServeError",
    "InferenceError",
    "InvalidRequestError",
    "KeyNotFoundError",
    "ModelLoadError",
    "ModelNotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RetryableError",
    "ShuttingDownError",
    "SkillNotFoundError",
    "UnavailableError",
]


class HfServeError(Exception):
    """Base class of every error hfserve raises on purpose."""

    code: str = "hfserve_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(HfServeError):
    """The configuration (flags, env, config file) is invalid."""

    code = "config_error"


class InvalidRequestError(HfServeError):
    """The client's request is malformed or asks for something unsupported."""

    code = "invalid_request"


class PayloadTooLargeError(InvalidRequestError):
    """The request body is larger than the configured limit."""

    code = "payload_too_large"


class AuthError(HfServeError):
    """No credentials, or credentials that do not verify."""

    code = "invalid_api_key"


class PermissionDeniedError(HfServeError):
    """The credentials are valid but not allowed to do this."""

    code = "permission_denied"


class ModelNotFoundError(HfServeError):
    """The requested model is not known to this server."""

    code = "model_not_found"


class KeyNotFoundError(HfServeError):
    """No API key with this id exists in the key store."""

    code = "key_not_found"


class SkillNotFoundError(HfServeError):
    """No skill can handle this model or task."""

    code = "skill_not_found"


class ModelLoadError(HfServeError):
    """A model failed to load (bad files, out of memory, timeout...)."""

    code = "model_load_failed"


class InferenceError(HfServeError):
    """Running the model on one request failed (a server-side fault)."""

    code = "inference_failed"


class RetryableError(HfServeError):
    """An error after which the client may retry after ``retry_after`` seconds."""

    code = "retryable"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float = 1.0,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = max(0.0, float(retry_after))


class RateLimitedError(RetryableError):
    """A rate limit was exceeded."""

    code = "rate_limit_exceeded"


class OverloadedError(RetryableError):
    """A bounded queue is full; the server sheds load instead of growing memory."""

    code = "overloaded"


class CircuitOpenError(RetryableError):
    """A circuit breaker is open: the resource failed repeatedly and is refused fast."""

    code = "circuit_open"


class UnavailableError(RetryableError):
    """A dependency (e.g. Redis) or the server itself is not available right now."""

    code = "unavailable"


class ShuttingDownError(RetryableError):
    """The server is draining and accepts no new work."""

    code = "shutting_down"
