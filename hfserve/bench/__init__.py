"""Load generator for OpenAI-compatible servers, used by ``hfserve bench`` and ``benchmarks/``.

Example::

    result = await run_benchmark(BenchConfig(url="http://127.0.0.1:8000", concurrency=8))
    print(result.metrics.request_throughput, result.metrics.ttft)
"""

from __future__ import annotations

from hfserve.bench.config import BenchConfig, Endpoint
from hfserve.bench.record import RequestRecord
from hfserve.bench.report import render_report, result_to_dict
from hfserve.bench.runner import BenchResult, run_benchmark
from hfserve.bench.stats import BenchMetrics, Distribution, compute_metrics, percentile

__all__ = [
    "BenchConfig",
    "BenchMetrics",
    "BenchResult",
    "Distribution",
    "Endpoint",
    "RequestRecord",
    "compute_metrics",
    "percentile",
    "render_report",
    "result_to_dict",
    "run_benchmark",
]
