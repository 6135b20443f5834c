"""Two ``hfserve serve`` replicas sharing one real redis-server behave as one server.

Each replica has its own copy of the keys file (as pods with their own Secret would), so a
revocation can only reach them through Redis. The servers start once for the whole module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from hfserve.cli.main import app as cli_app
from hfserve.cli.main import main as cli_main
from hfserve.core.keystore import KeyStore
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.tiny_models import TinyModels
from tests.integration.conftest import ServerProcess, free_port, wait_ready

pytestmark = pytest.mark.integration

EMBED = {"model": "tiny-bert", "input": ["replicas share this answer"]}


@dataclass
class Cluster:
    """Two fail-open replicas and one fail-closed one, the admin's keys file and the keys."""

    a: ServerProcess
    b: ServerProcess
    closed: ServerProcess
    admin_keys: Path
    keys: dict[str, tuple[str, str]]  # name -> (id, plaintext)
    redis: RedisServer

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name][1]}"}


def _launch(
    workdir: Path, name: str, keys_file: Path, models: list[str], env: dict[str, str]
) -> ServerProcess:
    port = free_port()
    log_path = workdir / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "hfserve",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--keys-file",
        str(keys_file),
    ]
    for model in models:
        cmd += ["--model", model]
    full_env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"} | env
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    return ServerProcess(proc, port, log_path)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models: TinyModels,
    redis_server_module: RedisServer,
) -> Iterator[Cluster]:
    """Start the replicas once (in parallel) and stop them at the end."""
    workdir = tmp_path_factory.mktemp("scaleout")
    admin_keys = workdir / "admin-keys.json"
    store = KeyStore(admin_keys)
    keys: dict[str, tuple[str, str]] = {}
    for name, rpm in (("limited", 10), ("victim", None), ("cache", None), ("faulty", 5)):
        record, plaintext = store.create(name, rpm=rpm)
        keys[name] = (record.id, plaintext)
    env = {
        "HFSERVE_REDIS_URL": redis_server_module.url,
        # Loopback Redis answers in well under a millisecond, but a busy 2-core CI box can stall
        # a replica's event loop; a spurious timeout would fail open and blur an exact count.
        # (tests/core/test_redis_backends.py holds the timeout bound itself.)
        "HFSERVE_REDIS_TIMEOUT_MS": "2000",
    }
    models = [f"tiny-bert={tiny_models.bert}"]
    servers = []
    for name, extra in (("a", {}), ("b", {}), ("closed", {"HFSERVE_RATE_LIMIT_FAIL_OPEN": "0"})):
        replica_keys = workdir / f"{name}-keys.json"
        shutil.copyfile(admin_keys, replica_keys)
        servers.append(_launch(workdir, name, replica_keys, models, env | extra))
    try:
        for server in servers:
            wait_ready(server)
        yield Cluster(*servers, admin_keys=admin_keys, keys=keys, redis=redis_server_module)
    finally:
        for server in servers:
            server.stop()


def _statuses(urls: list[str], headers: dict[str, str], n: int) -> list[int]:
    """``n`` concurrent GET /v1/models spread over ``urls``."""
    results: list[int] = [0] * n

    def one(i: int) -> None:
        results[i] = httpx.get(urls[i % len(urls)] + "/v1/models", headers=headers).status_code

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_one_budget_across_replicas(cluster: Cluster) -> None:
    """A key limited to 10 requests/min gets exactly 10 successes across both replicas."""
    started = time.monotonic()
    statuses = _statuses([cluster.a.url, cluster.b.url], cluster.auth("limited"), 24)
    elapsed = time.monotonic() - started
    assert sorted(set(statuses)) == [200, 429]
    # 10/min refills one request every 6 s: exactly 10 unless this box took that long.
    assert 10 <= statuses.count(200) <= 10 + int(elapsed // 6), (statuses, elapsed)
    for server in (cluster.a, cluster.b):
        # No rate-limit call failed, so no request was admitted by the fail-open policy instead.
        scrape = httpx.get(server.url + "/metrics").text
        assert 'hfserve_redis_errors_total{op="rate_limit"}' not in scrape, server.log()[-3000:]


def test_cached_response_is_shared(cluster: Cluster) -> None:
    """A response one replica computed is a cache hit on the other, byte for byte the same."""
    headers = cluster.auth("cache")
    first = httpx.post(cluster.a.url + "/v1/embeddings", json=EMBED, headers=headers)
    second = httpx.post(cluster.b.url + "/v1/embeddings", json=EMBED, headers=headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit"
    assert second.json()["data"] == first.json()["data"]


def test_cli_revocation_reaches_every_replica_within_a_second(cluster: Cluster) -> None:
    """`hfserve keys revoke --redis-url` on the admin's file: both replicas refuse within 1 s."""
    key_id = cluster.keys["victim"][0]
    headers = cluster.auth("victim")
    urls = [cluster.a.url, cluster.b.url]
    assert [httpx.get(u + "/v1/models", headers=headers).status_code for u in urls] == [200, 200]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hfserve",
            "keys",
            "revoke",
            key_id,
            "--keys-file",
            str(cluster.admin_keys),
            "--redis-url",
            cluster.redis.url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    published = time.monotonic()
    refused: dict[str, float] = {}
    while len(refused) < len(urls) and time.monotonic() - published < 3.0:
        for url in urls:
            if url not in refused:
                response = httpx.get(url + "/v1/models", headers=headers)
                if response.status_code == 401:
                    assert "revoked" in response.json()["error"]["message"]
                    refused[url] = time.monotonic() - published
    assert set(refused) == set(urls)
    assert max(refused.values()) < 1.0, refused


def test_cli_reports_a_failed_publish(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis unreachable: the file is revoked, and the CLI says the replicas were not told."""
    store = KeyStore(tmp_path / "keys.json")
    record, _ = store.create("x")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["keys", "revoke", record.id, "--keys-file", str(store.path), "--redis-url", dead])
    assert exit_info.value.code == 6
    assert "publishing it to Redis failed" in capsys.readouterr().err
    assert store.get(record.id).revoked_at is not None


def test_redis_outage_mid_load_then_recovery(cluster: Cluster) -> None:
    """Kill Redis under load: no 5xx, fail-open admits and fail-closed refuses with 429;
    restart it on the same port: the budget applies again, with no hfserve restart."""
    headers = cluster.auth("faulty")
    urls = [cluster.a.url, cluster.b.url]
    # A revocation every replica has seen (idempotent if an earlier test already made it).
    victim_id = cluster.keys["victim"][0]
    revoke = ["keys", "revoke", victim_id, "--keys-file", str(cluster.admin_keys)]
    assert CliRunner().invoke(cli_app, [*revoke, "--redis-url", cluster.redis.url]).exit_code == 0
    victim = cluster.auth("victim")
    deadline = time.monotonic() + 2
    while httpx.get(cluster.a.url + "/v1/models", headers=victim).status_code != 401:
        assert time.monotonic() < deadline, "revocation never arrived"
        time.sleep(0.05)
    assert _statuses(urls, headers, 8).count(200) == 5  # the budget is spent

    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            for url in urls:
                statuses.append(httpx.get(url + "/v1/models", headers=headers).status_code)

    def answered(count: int) -> None:
        """Wait (bounded) until the load thread has ``count`` answers in total."""
        deadline = time.monotonic() + 10
        while len(statuses) < count:
            assert time.monotonic() < deadline, "the load thread stopped getting answers"
            time.sleep(0.01)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        answered(2 * len(urls))  # traffic flows through both replicas before the outage
        cluster.redis.stop()
        # Wait (bounded) until both replicas have seen the outage; from then on requests flow
        # on the fail-open policy.
        deadline = time.monotonic() + 10
        for server in (cluster.a, cluster.b):
            while (
                'hfserve_redis_errors_total{op="rate_limit"}'
                not in httpx.get(server.url + "/metrics").text
            ):
                assert time.monotonic() < deadline, "replica never noticed Redis was down"
                time.sleep(0.05)
        # Requests already waiting on a Redis timeout finish within the next full round.
        answered(len(statuses) + len(urls))
        during = len(statuses)
        answered(during + 10)  # then watch ten more answers during the outage
    finally:
        stop.set()
        loader.join()
    assert all(s < 500 for s in statuses), sorted(set(statuses))
    assert set(statuses[during:]) == {200}, "fail-open replicas must admit while Redis is down"
    closed = [
        httpx.get(cluster.closed.url + "/v1/models", headers=headers).status_code for _ in range(3)
    ]
    assert closed == [429, 429, 429]
    for server in (cluster.a, cluster.b, cluster.closed):
        ready = httpx.get(server.url + "/ready")
        assert ready.json()["redis"] is False
    assert httpx.get(cluster.a.url + "/ready").status_code == 200
    assert httpx.get(cluster.closed.url + "/ready").status_code == 503
    metrics = httpx.get(cluster.a.url + "/metrics").text
    assert 'hfserve_redis_errors_total{op="rate_limit"}' in metrics

    cluster.redis.start()  # same port, empty (no persistence): a fresh budget of 5
    deadline = time.monotonic() + 10
    for server in (cluster.a, cluster.b):
        while httpx.get(server.url + "/ready").json().get("redis") is not True:
            assert time.monotonic() < deadline, "replica never saw Redis come back"
            time.sleep(0.1)
    after = _statuses(urls, headers, 9)
    assert after.count(200) == 5
    assert after.count(429) == 4
    # Revocations seen before the outage survive Redis coming back empty.
    assert httpx.get(cluster.a.url + "/v1/models", headers=victim).status_code == 401
