"""Present a benchmark result: a rich table for people, a JSON-ready dict for machines.

The dict uses the flat key names of ``vllm bench serve --save-result`` (``request_throughput``,
``mean_ttft_ms``, ``p99_itl_ms`` ...) so results from both tools can be compared by script.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

from hfserve._version import __version__
from hfserve.bench.runner import BenchResult
from hfserve.bench.stats import BenchMetrics, Distribution

__all__ = ["render_report", "result_to_dict"]

# (key in the JSON, label in the table, attribute of BenchMetrics)
_LATENCIES = (
    ("e2el", "E2E latency", "e2el"),
    ("ttft", "Time to first token", "ttft"),
    ("tpot", "Time per output token", "tpot"),
    ("itl", "Inter-token latency", "itl"),
)
_STATS = ("mean", "median", "std", "p90", "p99")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _distribution(metrics: BenchMetrics, attribute: str) -> Distribution | None:
    value: Distribution | None = getattr(metrics, attribute)
    return value


def result_to_dict(result: BenchResult) -> dict[str, Any]:
    """The result as JSON-ready data: settings, totals, throughputs, latencies in ms, requests."""
    metrics = result.metrics
    messages: dict[str, str] = {}
    for record in result.records:
        if record.error is not None and record.message and record.error not in messages:
            messages[record.error] = record.message
    data: dict[str, Any] = {
        "tool": f"hfserve bench {__version__}",
        "date": dt.datetime.fromtimestamp(result.started_at, dt.UTC).isoformat(),
        "config": result.config.to_dict(),
        "model": result.model,
        "duration": metrics.duration,
        "completed": metrics.completed,
        "failed": metrics.failed,
        "failures": dict(metrics.failures),
        "failure_messages": messages,
        "warmup_failed": result.warmup_failed,
        "total_input_tokens": metrics.total_input_tokens,
        "total_output_tokens": metrics.total_output_tokens,
        "request_throughput": metrics.request_throughput,
        "input_throughput": metrics.input_throughput,
        "output_throughput": metrics.output_throughput,
        "total_token_throughput": metrics.total_token_throughput,
    }
    for key, _, attribute in _LATENCIES:
        dist = _distribution(metrics, attribute)
        for stat in _STATS:
            data[f"{stat}_{key}_ms"] = None if dist is None else _ms(getattr(dist, stat))
    data["requests"] = [
        {
            "ok": r.ok,
            "start": r.start,
            "latency": r.latency,
            "ttft": r.ttft,
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "status": r.status,
            "error": r.error,
        }
        for r in result.records
    ]
    return data


def _load_text(result: BenchResult) -> str:
    config = result.config
    if config.rate is not None:
        text = f"Poisson arrivals at {config.rate:g} req/s"
        if config.concurrency is not None:
            text += f", at most {config.concurrency} in flight"
        return text
    return f"closed loop, concurrency {config.workers}"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def render_report(result: BenchResult) -> RenderableType:
    """Two tables: what was run and how many requests succeeded, then the latencies in ms."""
    config, metrics = result.config, result.metrics
    summary = Table(title="hfserve bench", show_header=False, title_justify="left")
    summary.add_column("what", style="bold")
    summary.add_column("value", justify="right")
    summary.add_row("Target", f"{config.endpoint_url} ({result.model or 'server default model'})")
    summary.add_row("Load", _load_text(result))
    summary.add_row("Streaming", "yes" if config.streaming else "no")
    summary.add_row("Duration (s)", f"{metrics.duration:,.2f}")
    summary.add_row("Requests ok", f"[green]{metrics.completed}[/green]")
    if metrics.failures:
        for kind, count in metrics.failures.items():
            summary.add_row(f"Requests failed: {kind}", f"[red]{count}[/red]")
    else:
        summary.add_row("Requests failed", "0")
    if result.warmup_failed:
        summary.add_row("Warmup requests failed", f"[yellow]{result.warmup_failed}[/yellow]")
    summary.add_row("Request throughput (req/s)", _cell(metrics.request_throughput))
    summary.add_row("Input token throughput (tok/s)", _cell(metrics.input_throughput))
    if config.endpoint.generates:
        summary.add_row("Output token throughput (tok/s)", _cell(metrics.output_throughput))
        summary.add_row("Total token throughput (tok/s)", _cell(metrics.total_token_throughput))

    latency = Table(title="Latency (ms)", title_justify="left")
    latency.add_column("metric", style="bold")
    for heading in ("mean", "p50", "p90", "p99"):
        latency.add_column(heading, justify="right")
    for _, label, attribute in _LATENCIES:
        dist = _distribution(metrics, attribute)
        if dist is None:
            latency.add_row(label, "-", "-", "-", "-")
        else:
            latency.add_row(
                label, *(_cell(_ms(v)) for v in (dist.mean, dist.median, dist.p90, dist.p99))
            )
    return Group(summary, latency)
