"""``hfserve bench``: load-test any OpenAI-compatible server and report vLLM-comparable numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from hfserve.bench import BenchResult, RequestRecord

__all__ = ["bench_command"]


def _parse_extra_body(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--extra-body") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--extra-body")
    return value


def bench_command(
    url: str = typer.Option(
        "http://127.0.0.1:8000", "--url", help="Server base URL, with or without /v1."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Model to request (default: the first in GET /v1/models that serves the endpoint).",
    ),
    endpoint: Literal["chat", "completions", "embeddings"] | None = typer.Option(
        None,
        "--endpoint",
        "-e",
        help="API to drive (default: chat, or the API that fits --model or the listed models).",
        show_default=False,
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar=["HFSERVE_API_KEY", "OPENAI_API_KEY"],
        show_envvar=True,
        help="Bearer token sent with every request.",
    ),
    concurrency: int | None = typer.Option(
        None,
        "--concurrency",
        "-c",
        min=1,
        help="Closed loop: requests in flight (default: 1). With --rate: the most in flight.",
    ),
    requests: int | None = typer.Option(
        None, "--requests", "-n", min=1, help="Measured requests (default: 100 unless --duration)."
    ),
    duration: float | None = typer.Option(
        None, "--duration", "-d", help="Send requests for this many seconds instead."
    ),
    rate: float | None = typer.Option(
        None,
        "--rate",
        "-r",
        help="Open loop: Poisson arrivals at this many requests/s (default: closed loop).",
    ),
    prompt_tokens: int = typer.Option(
        32, "--prompt-tokens", min=1, help="Prompt length in words (about one token each)."
    ),
    max_tokens: int = typer.Option(128, "--max-tokens", min=1, help="max_tokens per request."),
    stream: bool | None = typer.Option(
        None, "--stream/--no-stream", help="Stream responses (default: on for chat, completions)."
    ),
    warmup: int = typer.Option(0, "--warmup", min=0, help="Unmeasured requests sent first."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompts and Poisson arrivals."),
    extra_body: str | None = typer.Option(
        None,
        "--extra-body",
        help="JSON object merged into every request, e.g. '{\"ignore_eos\": true}'.",
    ),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds one request may take."),
    json_file: str | None = typer.Option(
        None, "--json", metavar="FILE", help="Also write the full result as JSON to this file."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Benchmark an OpenAI-compatible server: throughput, E2E latency, TTFT, TPOT and ITL."""
    from rich.console import Console

    from hfserve.bench import BenchConfig, Endpoint, run_benchmark

    json_path = Path(json_file).expanduser() if json_file is not None else None
    if json_path is not None and json_path.is_dir():
        # Checked before the run: a typo should not cost a whole benchmark's results.
        raise typer.BadParameter(f"{json_file} is a directory", param_hint="--json")
    config = BenchConfig(
        url=url,
        model=model,
        endpoint=Endpoint(endpoint or "chat"),
        auto_endpoint=endpoint is None,
        api_key=api_key,
        concurrency=concurrency,
        requests=requests,
        duration=duration,
        rate=rate,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        stream=stream,
        warmup=warmup,
        seed=seed,
        extra_body=_parse_extra_body(extra_body),
        timeout=timeout,
    )
    console = Console()
    with _progress(console, disable=quiet or not console.is_terminal) as progress:
        task = progress.add_task("benchmarking", total=config.total_requests)

        def on_record(record: RequestRecord) -> None:
            progress.advance(task)

        import asyncio

        result = asyncio.run(run_benchmark(config, on_record=on_record))
    _finish(console, result, json_path)


def _finish(console: Console, result: BenchResult, json_path: Path | None) -> None:
    """Print the report, write the JSON, and fail the command when nothing succeeded."""
    from hfserve.bench import render_report, result_to_dict

    console.print(render_report(result))
    if json_path is not None:
        _write_json(json_path, result_to_dict(result))
    if result.all_failed:
        typer.secho(f"error: {_failure_summary(result)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        typer.secho(f"error: cannot write {path}: {exc.strerror or exc}", fg="red", err=True)
        raise typer.Exit(1) from None


def _progress(console: Console, *, disable: bool) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
        transient=True,
    )


def _failure_summary(result: BenchResult) -> str:
    kinds = ", ".join(f"{kind} x{count}" for kind, count in result.metrics.failures.items())
    first = next((r.message for r in result.records if r.message), None)
    text = f"every request failed ({kinds or 'no requests were sent'})"
    return f"{text}: {first}" if first else text
