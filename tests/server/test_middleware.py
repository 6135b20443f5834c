"""ServingMiddleware's per-request work: what its fast paths must keep doing on every request.

An app with no models (nothing to load), a real keys file and real rate limits, through
Starlette's TestClient: auth, the per-key rate limit, request ids and metrics are checked
exactly as a client sees them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from hfserve.core.clock import FakeClock
from hfserve.core.keystore import KeyStore
from hfserve.core.rate_limiter import (
    RateLimiter,
    RateLimits,
)
from hfserve.server import state as state_module
from hfserve.server.app import create_app
from hfserve.server.middleware import _reset_bytes, _scan_headers, format_reset
from hfserve.settings import Settings
from tests.fixtures.rate_limits import CountingBackend


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def client(keys_file: Path, clock: FakeClock) -> TestClient:
    settings = Settings.load(None, models=[], device="cpu", keys_file=keys_file)
    # The server's own store, on a fake clock: it re-reads the file only when told time passed.
    keystore = KeyStore(keys_file, clock=clock, reload_interval=0.25)
    # No lifespan (nothing to preload): only the request path is under test here.
    return TestClient(create_app(settings, keystore=keystore))


def _counter(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{wanted}}}" if labels else name) + r" (\S+)"
    match = re.search("^" + pattern + "$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_every_request_is_counted_and_limited_per_key(client: TestClient, keys_file: Path) -> None:
    store = KeyStore(keys_file)
    _, first = store.create("first", rpm=3)
    _, second = store.create("second", rpm=3)
    statuses = [
        client.get("/v1/models", headers={"Authorization": f"Bearer {first}"}).status_code
        for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    # Another key has its own budget.
    other = client.get("/v1/models", headers={"x-api-key": second})
    assert other.status_code == 200
    assert other.headers["x-ratelimit-remaining-requests"] == "2"
    assert other.headers["x-ratelimit-reset-requests"] == "20s"
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer hf-not-a-key"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/models").status_code == 401

    metrics = client.get("/metrics").text
    route = {"route": "/v1/models", "model": ""}
    assert _counter(metrics, "hfserve_requests_total", **route, status="200") == 4
    assert _counter(metrics, "hfserve_requests_total", **route, status="429") == 1
    assert _counter(metrics, "hfserve_requests_total", **route, status="401") == 2
    assert _counter(metrics, "hfserve_auth_failures_total") == 2
    assert _counter(metrics, "hfserve_rate_limited_total", budget="requests") == 1
    assert _counter(metrics, "hfserve_request_duration_seconds_count", **route) == 7


def test_a_revoked_key_is_refused_once_the_reload_interval_passed(
    client: TestClient, keys_file: Path, clock: FakeClock
) -> None:
    # Another process (``hfserve keys revoke``) writes the file; the server re-reads it at
    # most every 0.25 s of its clock, so the revocation holds from then on.
    store = KeyStore(keys_file)
    record, key = store.create("soon revoked")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    store.revoke(record.id)
    clock.advance(0.25)
    refused = client.get("/v1/models", headers=headers)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]


def test_generated_request_ids_are_unique_hex_and_valid_ones_are_kept(
    client: TestClient,
) -> None:
    ids = {client.get("/health").headers["x-request-id"] for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)
    kept = client.get("/health", headers={"x-request-id": "trace-1.2:3"})
    assert kept.headers["x-request-id"] == "trace-1.2:3"
    replaced = client.get("/health", headers={"x-request-id": "not ok!"})
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])


@given(st.floats(min_value=-1.0, max_value=10_000.0, allow_nan=False))
def test_reset_headers_are_formatted_as_format_reset_says(seconds: float) -> None:
    assert _reset_bytes(seconds) == format_reset(seconds).encode()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], (None, None, None)),
        ([(b"authorization", b"Bearer  hf-a ")], (None, None, "hf-a")),
        ([(b"x-api-key", b" hf-b ")], (None, None, "hf-b")),
        # Bearer wins over x-api-key, whichever comes first.
        ([(b"x-api-key", b"hf-b"), (b"authorization", b"bearer hf-a")], (None, None, "hf-a")),
        # Another scheme, or an empty token, falls back to x-api-key.
        ([(b"authorization", b"Basic abc"), (b"x-api-key", b"hf-b")], (None, None, "hf-b")),
        ([(b"authorization", b"Bearer  "), (b"x-api-key", b"  ")], (None, None, None)),
        # The first of repeated headers counts.
        (
            [
                (b"x-request-id", b"one"),
                (b"content-length", b"12"),
                (b"authorization", b"Bearer hf-1"),
                (b"x-request-id", b"two"),
                (b"content-length", b"99"),
                (b"authorization", b"Bearer hf-2"),
                (b"x-api-key", b"hf-3"),
                (b"x-api-key", b"hf-4"),
            ],
            ("one", "12", "hf-1"),
        ),
    ],
)
def test_one_header_scan_finds_id_length_and_key(
    headers: list[tuple[bytes, bytes]], expected: tuple[str | None, ...]
) -> None:
    assert _scan_headers(headers) == expected


def test_limits_are_shared_per_shape_and_the_cache_is_bounded(
    client: TestClient, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = client.app.state.hfserve  # type: ignore[attr-defined]
    record, _ = KeyStore(keys_file).create("k", rpm=5, tpm=7)
    limits = server.limits_for(record)
    assert limits == RateLimits(requests_per_minute=5, tokens_per_minute=7)
    assert server.limits_for(replace(record, id="key_other")) is limits
    # Unset limits fall back to the configured defaults.
    defaults = server.limits_for(None)
    assert defaults == RateLimits(server.settings.default_rpm, server.settings.default_tpm)
    assert server.limits_for(replace(record, rpm=None, tpm=None)) is defaults
    monkeypatch.setattr(state_module, "_MAX_LIMIT_SHAPES", 2)
    assert server.limits_for(replace(record, rpm=1)) == RateLimits(1, 7)
    assert len(server._limits) == 1


def test_a_shared_rate_limiter_is_awaited_with_the_same_outcome(keys_file: Path) -> None:
    backend = CountingBackend()
    settings = Settings.load(None, models=[], device="cpu", keys_file=keys_file)
    app = create_app(settings, rate_limiter=RateLimiter(backend))
    _, key = KeyStore(keys_file).create("shared", rpm=2)
    client = TestClient(app)
    headers = {"Authorization": f"Bearer {key}"}
    responses = [client.get("/v1/models", headers=headers) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].headers["x-ratelimit-remaining-requests"] == "1"
    assert responses[2].headers["retry-after"]
    assert backend.acquired == 3
