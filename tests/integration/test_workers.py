"""``hfserve serve --workers 2``: one socket, aggregated metrics, Redis-shared limits, drain."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hfserve.core.keystore import KeyStore
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.tiny_models import TinyModels
from tests.integration.conftest import StartServer

pytestmark = pytest.mark.integration


def _sum(metrics: str, pattern: str) -> float:
    return sum(float(v) for v in re.findall(pattern, metrics, re.M))


def test_two_workers_share_metrics_limits_and_drain(
    start_server: StartServer, redis_server: RedisServer, tiny_models: TinyModels, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    _, key = KeyStore(keys).create("workers", rpm=10)
    server = start_server(
        "--workers",
        "2",
        "--redis-url",
        redis_server.url,
        models=[f"tiny-bert={tiny_models.bert}"],
        keys_file=keys,
    )
    headers = {"Authorization": f"Bearer {key}"}
    statuses = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(14):
            # A fresh connection each time so the kernel spreads them over both workers.
            response = httpx.get(
                server.url + "/v1/models", headers=headers | {"connection": "close"}
            )
            statuses.append(response.status_code)
        metrics = client.get("/metrics").text
    assert statuses.count(200) == 10, statuses  # one budget across both workers (Redis)
    assert statuses.count(429) == 4
    served = _sum(
        metrics,
        r'^hfserve_requests_total\{model="",route="/v1/models",status="(?:200|429)"\} (\S+)$',
    )
    assert served == 14  # every worker's counts, aggregated in one scrape
    assert _sum(metrics, r"^hfserve_models_loaded (\S+)$") == 1
    assert server.stop() == 0


def test_workers_without_redis_is_refused(tiny_models: TinyModels) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hfserve",
            "serve",
            "--workers",
            "2",
            "--model",
            str(tiny_models.bert),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--workers > 1 needs --redis-url" in result.stderr
