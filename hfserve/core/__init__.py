"""Plain-Python building blocks of hfserve (standard library only; Redis imported lazily)."""

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
