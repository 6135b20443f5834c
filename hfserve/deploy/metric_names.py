"""The Prometheus metric names the server exports, in one place.

The server registers exactly these; the Grafana dashboard, the Prometheus alert rules and the
HorizontalPodAutoscaler's custom metric may only refer to these (tests hold all of them to it).
"""

from __future__ import annotations

__all__ = ["HISTOGRAM_METRICS", "METRIC_NAMES", "METRIC_PREFIX", "QUEUE_DEPTH_METRIC"]

METRIC_PREFIX = "hfserve_"

METRIC_NAMES: tuple[str, ...] = (
    "hfserve_requests_total",
    "hfserve_request_duration_seconds",
    "hfserve_queue_depth",
    "hfserve_queue_wait_seconds",
    "hfserve_batch_size",
    "hfserve_time_to_first_token_seconds",
    "hfserve_inter_token_latency_seconds",
    "hfserve_prompt_tokens_total",
    "hfserve_generation_tokens_total",
    "hfserve_response_cache_hits_total",
    "hfserve_response_cache_misses_total",
    "hfserve_model_loads_total",
    "hfserve_model_evictions_total",
    "hfserve_breaker_state",
    "hfserve_rate_limited_total",
    "hfserve_active_generations",
)

# Histograms are exported as <name>_bucket/_sum/_count series; queries may use those suffixes.
HISTOGRAM_METRICS: tuple[str, ...] = (
    "hfserve_request_duration_seconds",
    "hfserve_queue_wait_seconds",
    "hfserve_batch_size",
    "hfserve_time_to_first_token_seconds",
    "hfserve_inter_token_latency_seconds",
)

# The per-pod gauge the HorizontalPodAutoscaler can scale on (through a metrics adapter).
QUEUE_DEPTH_METRIC = "hfserve_queue_depth"
