"""The report: vLLM-style JSON keys and a table with every metric."""

from __future__ import annotations

import json

from rich.console import Console

from hfserve.bench.config import BenchConfig, Endpoint
from hfserve.bench.record import RequestRecord
from hfserve.bench.report import render_report, result_to_dict
from hfserve.bench.runner import BenchResult
from hfserve.bench.stats import compute_metrics

RECORDS = (
    RequestRecord(
        ok=True,
        start=0.0,
        latency=1.0,
        ttft=0.2,
        itl=(0.4, 0.4),
        input_tokens=4,
        output_tokens=3,
        status=200,
    ),
    RequestRecord(ok=False, start=0.5, latency=0.1, status=503, error="HTTP 503", message="busy"),
    RequestRecord(ok=False, start=0.6, latency=0.1, status=503, error="HTTP 503", message="later"),
    RequestRecord(ok=False, start=0.7, latency=0.1, error="ReadTimeout"),
)


def _result(
    config: BenchConfig, records: tuple[RequestRecord, ...] = RECORDS, **kw: int
) -> BenchResult:
    return BenchResult(
        config=config,
        model="m",
        records=records,
        metrics=compute_metrics(records, duration=2.0),
        started_at=0.0,
        **kw,
    )


def _text(result: BenchResult) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(render_report(result))
    return console.export_text()


def test_json_uses_vllm_key_names_in_milliseconds() -> None:
    data = result_to_dict(_result(BenchConfig(url="http://x", api_key="sk-no")))
    json.dumps(data)  # JSON-ready
    assert data["date"] == "1970-01-01T00:00:00+00:00"
    assert data["completed"] == 1 and data["failed"] == 3
    assert data["failures"] == {"HTTP 503": 2, "ReadTimeout": 1}
    assert data["failure_messages"] == {"HTTP 503": "busy"}
    assert data["request_throughput"] == 0.5
    assert data["output_throughput"] == 1.5 and data["total_token_throughput"] == 3.5
    assert data["mean_ttft_ms"] == 200.0 and data["p99_e2el_ms"] == 1000.0
    assert data["median_tpot_ms"] == 400.0 and data["mean_itl_ms"] == 400.0
    assert data["std_itl_ms"] == 0.0 and data["p90_tpot_ms"] == 400.0
    assert len(data["requests"]) == 4 and data["requests"][1]["status"] == 503
    assert "sk-no" not in json.dumps(data)


def test_json_latencies_are_null_when_not_measured() -> None:
    plain = (RequestRecord(ok=True, start=0, latency=0.5, input_tokens=3),)
    data = result_to_dict(_result(BenchConfig(url="http://x", stream=False), plain))
    assert data["mean_e2el_ms"] == 500.0
    assert data["mean_ttft_ms"] is None and data["p99_itl_ms"] is None


def test_table_shows_counts_throughput_and_latencies() -> None:
    text = _text(_result(BenchConfig(url="http://x", concurrency=4), warmup_failed=2))
    for expected in (
        "http://x/v1/chat/completions (m)",
        "closed loop, concurrency 4",
        "Requests failed: HTTP 503",
        "Requests failed: ReadTimeout",
        "Warmup requests failed",
        "Output token throughput (tok/s)",
        "Time to first token",
        "200.00",
        "Inter-token latency",
    ):
        assert expected in text


def test_table_for_open_loop_embeddings_without_failures() -> None:
    ok = (RequestRecord(ok=True, start=0, latency=0.5, input_tokens=3),)
    config = BenchConfig(url="http://x", endpoint=Endpoint.EMBEDDINGS, rate=2.5, concurrency=8)
    text = _text(_result(config, ok))
    assert "Poisson arrivals at 2.5 req/s, at most 8 in flight" in text
    assert "Requests failed" in text and "Output token throughput" not in text
    assert "Warmup" not in text
    assert "Time to first token" in text and " - " in text
    uncapped = _text(_result(BenchConfig(url="http://x", rate=1.0), ok))
    assert "Poisson arrivals at 1 req/s" in uncapped and "at most" not in uncapped
