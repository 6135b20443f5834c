"""Plain-Python building blocks of hfserve (standard library only; Redis imported lazily).

Names are imported on first use: the CLI imports single modules (the key store) without
paying for asyncio and the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hfserve.core.batcher import BatchObserver, MicroBatcher
    from hfserve.core.breaker import BreakerState, CircuitBreaker
    from hfserve.core.clock import Clock, FakeClock, MonotonicClock, WallClock
    from hfserve.core.keystore import ApiKey, KeyStore
    from hfserve.core.model_cache import CacheStats, ModelCache
    from hfserve.core.rate_limiter import (
        MemoryRateLimitBackend,
        RateDecision,
        RateLimitBackend,
        RateLimiter,
        RateLimits,
    )
    from hfserve.core.response_cache import (
        MemoryResponseBackend,
        ResponseCache,
        ResponseCacheBackend,
        make_cache_key,
    )

__all__ = [
    "ApiKey",
    "BatchObserver",
    "BreakerState",
    "CacheStats",
    "CircuitBreaker",
    "Clock",
    "FakeClock",
    "KeyStore",
    "MemoryRateLimitBackend",
    "MemoryResponseBackend",
    "MicroBatcher",
    "ModelCache",
    "MonotonicClock",
    "RateDecision",
    "RateLimitBackend",
    "RateLimiter",
    "RateLimits",
    "ResponseCache",
    "ResponseCacheBackend",
    "WallClock",
    "make_cache_key",
]

_LAZY = {
    "BatchObserver": "batcher",
    "MicroBatcher": "batcher",
    "BreakerState": "breaker",
    "CircuitBreaker": "breaker",
    "Clock": "clock",
    "FakeClock": "clock",
    "MonotonicClock": "clock",
    "WallClock": "clock",
    "ApiKey": "keystore",
    "KeyStore": "keystore",
    "CacheStats": "model_cache",
    "ModelCache": "model_cache",
    "MemoryRateLimitBackend": "rate_limiter",
    "RateDecision": "rate_limiter",
    "RateLimitBackend": "rate_limiter",
    "RateLimiter": "rate_limiter",
    "RateLimits": "rate_limiter",
    "MemoryResponseBackend": "response_cache",
    "ResponseCache": "response_cache",
    "ResponseCacheBackend": "response_cache",
    "make_cache_key": "response_cache",
}


def __getattr__(name: str) -> Any:
    """Import public names on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'hfserve.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hfserve.core.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
