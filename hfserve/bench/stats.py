"""Benchmark statistics, defined exactly as ``vllm bench serve`` defines them.

So that numbers compare across tools:

- request throughput = successful requests / benchmark duration;
- input / output token throughput = tokens of the successful requests / duration, and the
  total token throughput is their sum;
- E2E latency: from sending a request to its last byte;
- TTFT: from sending to the first streamed chunk that carries a token;
- TPOT (time per output token, excluding the first) = ``(e2e - ttft) / (output_tokens - 1)``
  for each request with more than one output token;
- ITL: every gap between successive token-carrying chunks, pooled over all requests.

Percentiles use linear interpolation between closest ranks, ``numpy.percentile``'s default
(``method="linear"``): the q-th percentile of sorted ``x`` (n values) sits at fractional
index ``h = (n - 1) * q / 100`` and is ``x[floor(h)] + (h - floor(h)) * (x[floor(h)+1] -
x[floor(h)])``; the median is the 50th percentile and ``std`` is the population standard
deviation (``numpy.std``, ddof 0). It is written out rather than imported so that
``hfserve bench`` does not need numpy, and the tests check it against numpy.

One deliberate difference: ``vllm bench serve`` stamps TTFT at the first chunk that has
``choices``, which for some servers is a role-only chunk sent before any token; here only
chunks with text count, which measures the same thing on vLLM and the honest thing elsewhere.
Where a metric has no samples (no streaming, no request with two tokens) it is ``None``
rather than vLLM's 0, so a missing measurement is never mistaken for a fast one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hfserve.bench.record import RequestRecord

__all__ = ["BenchMetrics", "Distribution", "compute_metrics", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by linear interpolation, like numpy.

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    ordered = sorted(values)
    h = (len(ordered) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


@dataclass(frozen=True, slots=True)
class Distribution:
    """Summary of one metric's samples, in seconds."""

    count: int
    mean: float
    std: float
    median: float
    p90: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution | None:
        """Summarise ``values``; ``None`` when there are none."""
        samples = list(values)
        if not samples:
            return None
        mean = math.fsum(samples) / len(samples)
        variance = math.fsum((v - mean) ** 2 for v in samples) / len(samples)
        return cls(
            count=len(samples),
            mean=mean,
            std=math.sqrt(variance),
            median=percentile(samples, 50),
            p90=percentile(samples, 90),
            p99=percentile(samples, 99),
            min=min(samples),
            max=max(samples),
        )


@dataclass(frozen=True, slots=True)
class BenchMetrics:
    """Everything the report shows, computed from the measured requests and the duration."""

    duration: float
    completed: int
    failed: int
    failures: dict[str, int]
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    input_throughput: float
    output_throughput: float
    total_token_throughput: float
    e2el: Distribution | None
    ttft: Distribution | None
    tpot: Distribution | None
    itl: Distribution | None

    @property
    def total(self) -> int:
        """Requests measured, successful or not."""
        return self.completed + self.failed


def compute_metrics(records: Sequence[RequestRecord], duration: float) -> BenchMetrics:
    """Aggregate measured requests over a benchmark lasting ``duration`` seconds.

    Raises:
        ValueError: ``duration`` is negative.
    """
    if duration < 0:
        raise ValueError("a duration cannot be negative")
    ok = [r for r in records if r.ok]
    failures = Counter(r.error or "unknown error" for r in records if not r.ok)
    input_tokens = sum(r.input_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)

    def per_second(amount: int) -> float:
        # A zero-length run (every request failed instantly on a fake clock) has no rate.
        return amount / duration if duration > 0 else 0.0

    return BenchMetrics(
        duration=duration,
        completed=len(ok),
        failed=sum(failures.values()),
        failures=dict(sorted(failures.items())),
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=per_second(len(ok)),
        input_throughput=per_second(input_tokens),
        output_throughput=per_second(output_tokens),
        total_token_throughput=per_second(input_tokens + output_tokens),
        e2el=Distribution.of(r.latency for r in ok),
        ttft=Distribution.of(r.ttft for r in ok if r.ttft is not None),
        tpot=Distribution.of(t for r in ok if (t := r.tpot) is not None),
        itl=Distribution.of(gap for r in ok for gap in r.itl),
    )
