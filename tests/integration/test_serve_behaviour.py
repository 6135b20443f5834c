"""Disconnects, overload, graceful shutdown and metrics of a real server process."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.tools import find_tool
from tests.integration.conftest import StartServer

pytestmark = pytest.mark.integration

STREAM = {
    "model": "tiny-llama",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 200,
    "stream": True,
    "ignore_eos": True,
}


def active_generations(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    match = re.search(r'^hfserve_active_generations\{model="tiny-llama"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_disconnecting_streams_cancel_generation(start_server: StartServer) -> None:
    server = start_server("--no-auth")

    async def open_and_drop() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            async with client.stream("POST", "/v1/chat/completions", json=STREAM) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if (
                        line.startswith("data: {")
                        and '"content"' in line
                        and '"content":""' not in line
                    ):
                        break  # mid-stream: got real content, now hang up

    async def main() -> None:
        await asyncio.gather(*(open_and_drop() for _ in range(8)))

    asyncio.run(main())
    dropped = time.monotonic()
    while active_generations(server.url) > 0:
        assert time.monotonic() - dropped < 1.0, "generations still active 1 s after disconnect"
        time.sleep(0.02)
    assert "hfserve_client_disconnects_total" in httpx.get(server.url + "/metrics").text


def test_flood_gets_only_200_or_503_and_health_answers(start_server: StartServer) -> None:
    server = start_server("--no-auth", "--max-queue", "8", "--max-batch-size", "4")
    statuses: list[int] = []
    retry_after_missing = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal retry_after_missing
        response = await client.post(
            "/v1/embeddings", json={"model": "tiny-bert", "input": [f"text {i} " * 20] * 4}
        )
        statuses.append(response.status_code)
        if response.status_code == 503 and "retry-after" not in response.headers:
            retry_after_missing += 1

    async def main() -> None:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            flood = asyncio.gather(*(one(client, i) for i in range(120)))
            health = await client.get("/health")
            assert health.status_code == 200
            await flood

    asyncio.run(main())
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses and 200 in statuses
    assert retry_after_missing == 0
    assert httpx.get(server.url + "/health").status_code == 200


def test_sigterm_during_stream_drains_then_exits_zero(start_server: StartServer) -> None:
    server = start_server("--no-auth", "--grace-period", "30")
    events: list[str] = []
    ready_during_drain: list[int] = []
    got_first = threading.Event()

    def stream() -> None:
        payload = STREAM | {"max_tokens": 60}
        with httpx.stream(
            "POST", server.url + "/v1/chat/completions", json=payload, timeout=60
        ) as response:
            for line in response.iter_lines():
                if line:
                    events.append(line)
                    got_first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert got_first.wait(60)
    server.proc.send_signal(15)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and reader.is_alive():
        status = httpx.get(server.url + "/ready").status_code
        ready_during_drain.append(status)
        if status == 503:
            break
        time.sleep(0.01)
    reader.join(60)
    assert events[-1] == "data: [DONE]", events[-3:]
    assert 503 in ready_during_drain
    assert server.proc.wait(60) == 0


def test_metrics_pass_promtool(start_server: StartServer, tmp_path: Path) -> None:
    promtool = find_tool("promtool")
    server = start_server("--no-auth")
    httpx.post(server.url + "/v1/chat/completions", json=STREAM | {"max_tokens": 3}, timeout=60)
    httpx.post(server.url + "/v1/embeddings", json={"model": "tiny-bert", "input": "x"}, timeout=60)
    text = httpx.get(server.url + "/metrics").text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
