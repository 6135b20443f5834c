"""Map the hfserve exception tree to exit codes and one-line messages."""

from __future__ import annotations

from hfserve.errors import (
    AuthError,
    ConfigError,
    HfServeError,
    InvalidRequestError,
    KeyNotFoundError,
    ModelLoadError,
    ModelNotFoundError,
    PermissionDeniedError,
    RetryableError,
    SkillNotFoundError,
)

__all__ = ["exit_code_for"]

# Ordered: the first matching class wins, so subclasses come before their parents.
_EXIT_CODES: tuple[tuple[type[HfServeError], int], ...] = (
    (ConfigError, 2),
    (InvalidRequestError, 2),
    (AuthError, 3),
    (PermissionDeniedError, 3),
    (KeyNotFoundError, 4),
    (ModelNotFoundError, 4),
    (SkillNotFoundError, 4),
    (ModelLoadError, 5),
    (RetryableError, 6),
)


def exit_code_for(exc: HfServeError) -> int:
    """The process exit code for an hfserve error (1 when nothing more specific applies)."""
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1
