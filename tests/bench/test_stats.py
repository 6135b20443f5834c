"""Benchmark statistics: exact values on synthetic samples, and numpy's percentile method."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hfserve.bench.record import RequestRecord
from hfserve.bench.stats import Distribution, compute_metrics, percentile


def test_percentile_interpolates_linearly_between_closest_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # sorted: 1 2 3 4; index h = 3 * q / 100
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([5.0], 99) == 5.0


@given(
    st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=50),
    st.floats(min_value=0, max_value=100),
)
def test_percentile_matches_numpy_default(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-9)


@pytest.mark.parametrize("q", [-1.0, 100.5])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_distribution_summarises_like_numpy() -> None:
    samples = [0.1, 0.2, 0.3, 0.4, 1.0]
    dist = Distribution.of(samples)
    assert dist is not None
    assert dist.count == 5
    assert dist.mean == pytest.approx(0.4)
    assert dist.std == pytest.approx(float(np.std(samples)))
    assert dist.median == pytest.approx(0.3)
    assert dist.p90 == pytest.approx(float(np.percentile(samples, 90)))
    assert dist.p99 == pytest.approx(float(np.percentile(samples, 99)))
    assert (dist.min, dist.max) == (0.1, 1.0)
    assert Distribution.of([]) is None


def test_tpot_excludes_the_first_token() -> None:
    record = RequestRecord(ok=True, start=0, latency=1.0, ttft=0.2, output_tokens=5)
    assert record.tpot == pytest.approx(0.2)  # (1.0 - 0.2) / (5 - 1)
    assert RequestRecord(ok=True, start=0, latency=1.0, ttft=0.2, output_tokens=1).tpot is None
    assert RequestRecord(ok=True, start=0, latency=1.0, output_tokens=5).tpot is None


def _ok(latency: float, ttft: float, itl: tuple[float, ...], tokens: int) -> RequestRecord:
    return RequestRecord(
        ok=True,
        start=0.0,
        latency=latency,
        ttft=ttft,
        itl=itl,
        input_tokens=10,
        output_tokens=tokens,
    )


def test_metrics_follow_vllm_definitions() -> None:
    records = [
        _ok(1.0, 0.2, (0.3, 0.5), 3),
        _ok(2.0, 0.4, (0.4, 0.6, 0.6), 5),
        _ok(0.5, 0.5, (), 1),  # one token: a TTFT but no TPOT
        RequestRecord(ok=False, start=0.1, latency=0.01, status=503, error="HTTP 503"),
        RequestRecord(ok=False, start=0.2, latency=0.01, status=429, error="HTTP 429"),
        RequestRecord(ok=False, start=0.3, latency=0.01, status=503, error="HTTP 503"),
        RequestRecord(ok=False, start=0.4, latency=0.02, error="ConnectError"),
    ]
    metrics = compute_metrics(records, duration=4.0)
    assert (metrics.completed, metrics.failed, metrics.total) == (3, 4, 7)
    assert metrics.failures == {"ConnectError": 1, "HTTP 429": 1, "HTTP 503": 2}
    # Throughputs count successful requests only, over the whole duration.
    assert metrics.request_throughput == pytest.approx(3 / 4.0)
    assert metrics.total_input_tokens == 30
    assert metrics.total_output_tokens == 9
    assert metrics.input_throughput == pytest.approx(30 / 4.0)
    assert metrics.output_throughput == pytest.approx(9 / 4.0)
    assert metrics.total_token_throughput == pytest.approx(39 / 4.0)
    assert metrics.e2el is not None and metrics.e2el.mean == pytest.approx(3.5 / 3)
    assert metrics.ttft is not None and metrics.ttft.median == pytest.approx(0.4)
    # TPOT per request: (1.0-0.2)/2 = 0.4 and (2.0-0.4)/4 = 0.4; the 1-token request has none.
    assert metrics.tpot is not None
    assert metrics.tpot.count == 2 and metrics.tpot.mean == pytest.approx(0.4)
    # ITL pools every gap of every request.
    assert metrics.itl is not None
    assert metrics.itl.count == 5
    assert metrics.itl.mean == pytest.approx(2.4 / 5)
    assert metrics.itl.median == pytest.approx(0.5)


def test_metrics_without_streaming_or_success_are_absent_not_zero() -> None:
    failed = [RequestRecord(ok=False, start=0, latency=0.0, error=None)]
    metrics = compute_metrics(failed, duration=0.0)
    assert metrics.failures == {"unknown error": 1}
    assert metrics.request_throughput == 0.0
    assert metrics.e2el is None and metrics.ttft is None
    assert metrics.tpot is None and metrics.itl is None
    plain = compute_metrics([RequestRecord(ok=True, start=0, latency=0.5, output_tokens=4)], 1.0)
    assert plain.e2el is not None and plain.ttft is None and plain.tpot is None


def test_metrics_reject_negative_duration() -> None:
    with pytest.raises(ValueError, match="negative"):
        compute_metrics([], duration=-1.0)


def test_std_of_constant_samples_is_zero() -> None:
    dist = Distribution.of([0.25] * 4)
    assert dist is not None and dist.std == 0.0 and not math.isnan(dist.p99)
