"""Prometheus metrics of one server (prefix ``hfserve_``, base units, ``_total`` counters).

Each app owns a ``CollectorRegistry`` so several apps (tests) never collide. The metric
objects double as the observers the runtime calls (batches, loads, evictions).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["BREAKER_STATE_VALUES", "CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """All hfserve metrics in one registry.

    With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set by ``hfserve serve
    --workers N`` before the workers start) every worker writes its values to that directory
    and a scrape of any worker aggregates all of them; gauges say how (``multiprocess_mode``).
    """

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.registry = CollectorRegistry(auto_describe=True)
        # Labelled children looked up once: labels() takes a lock and validates every call.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        r = self.registry
        self.requests = Counter(
            "hfserve_requests",
            "HTTP requests by route, model and status.",
            ["route", "model", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "hfserve_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["route", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "hfserve_requests_in_flight",
            "Requests being served now.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_depth = Gauge(
            "hfserve_queue_depth",
            "Items waiting in a model's queue.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_wait = Histogram(
            "hfserve_queue_wait_seconds",
            "Time an item waited in the queue before its batch ran.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "hfserve_batch_size",
            "Items per executed micro-batch.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "hfserve_time_to_first_token_seconds",
            "Time from request to the first generated token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "hfserve_inter_token_latency_seconds",
            "Time between successive generated tokens.",
            ["model"],
            buckets=_TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "hfserve_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "hfserve_generation_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.active_generations = Gauge(
            "hfserve_active_generations",
            "Generations being decoded or queued.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.cache_hits = Counter("hfserve_response_cache_hits", "Response cache hits.", registry=r)
        self.cache_misses = Counter(
            "hfserve_response_cache_misses", "Response cache misses.", registry=r
        )
        self.model_loads = Counter("hfserve_model_loads", "Models loaded.", ["model"], registry=r)
        self.model_load_failures = Counter(
            "hfserve_model_load_failures", "Model loads that failed.", ["model"], registry=r
        )
        self.model_load_duration = Histogram(
            "hfserve_model_load_duration_seconds",
            "Time to load a model.",
            ["model"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.model_evictions = Counter(
            "hfserve_model_evictions",
            "Models unloaded, by reason.",
            ["model", "reason"],
            registry=r,
        )
        self.models_loaded = Gauge(
            "hfserve_models_loaded", "Models in memory.", multiprocess_mode="livemax", registry=r
        )
        self.breaker_state = Gauge(
            "hfserve_breaker_state",
            "Model circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["model"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.rate_limited = Counter(
            "hfserve_rate_limited", "Requests refused by a rate limit.", ["budget"], registry=r
        )
        for budget in ("requests", "tokens"):
            self.rate_limited.labels(budget)  # exported as 0 from the start, so rate() works
        self.auth_failures = Counter(
            "hfserve_auth_failures", "Requests refused by auth.", registry=r
        )
        self.redis_errors = Counter(
            "hfserve_redis_errors",
            "Redis operations that failed, timed out or were skipped while Redis was down.",
            ["op"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "hfserve_client_disconnects",
            "Requests whose client went away before the end.",
            registry=r,
        )

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        """Count one finished request and its duration (children cached: this is per request)."""
        key = (route, model, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, model, str(status)),
                self.request_duration.labels(route, model),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    # --- observers called by the runtime ----------------------------------------------------
    def on_batch(
        self, model: str, size: int, queue_waits: Sequence[float], run_seconds: float
    ) -> None:
        """Record one executed micro-batch."""
        self.batch_size.labels(model).observe(size)
        for wait in queue_waits:
            self.queue_wait.labels(model).observe(wait)

    def on_load(self, model: str, seconds: float) -> None:
        """Record a successful model load."""
        self.model_loads.labels(model).inc()
        self.model_load_duration.labels(model).observe(seconds)

    def on_load_failure(self, model: str) -> None:
        """Record a failed model load."""
        self.model_load_failures.labels(model).inc()

    def on_evict(self, model: str, reason: str) -> None:
        """Record a model leaving memory."""
        self.model_evictions.labels(model, reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (of every worker, when several)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
