"""Security: key files, secrets in logs, auth on every route, limits, CORS, bandit.

Constant-time comparison is proven at the unit level in
``tests/core/test_keystore.py::test_verify_compares_hashes_in_constant_time`` (``KeyStore.verify``
goes through ``hmac.compare_digest``) and its refusal twin
``test_a_failed_constant_time_compare_refuses``; here we prove the server only ever verifies
keys through ``KeyStore.verify``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from hfserve.core.keystore import KeyStore
from tests.hardening.conftest import KeyedServer, error_shape

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello world"}]}
REPO = Path(__file__).resolve().parents[2]


def _walk_routes(app: Any) -> list[tuple[str, str]]:
    """Every (method, concrete path) the app routes, with path parameters filled in."""
    out = []
    for route in app.routes:
        assert isinstance(route, Route), route
        path = route.path.replace("{model:path}", "tiny-bert")
        for method in sorted(route.methods or {"GET"}):
            if method != "HEAD":
                out.append((method, path))
    return out


@pytest.mark.integration
def test_cli_creates_the_keys_file_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    keys_file = tmp_path / "conf" / "keys.json"
    code = (
        "import os, sys; os.umask(0); from hfserve.cli.main import main; "
        "sys.argv = ['hfserve', 'keys', 'create', '--name', 'ci', '--keys-file', sys.argv[1]]; "
        "main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(keys_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_file.parent.stat().st_mode) == 0o700


@pytest.mark.integration
def test_keys_never_appear_in_a_debug_log(keyed_server: KeyedServer) -> None:
    key = keyed_server.key
    wrong = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    with httpx.Client(base_url=keyed_server.url, timeout=60) as http:
        ok = http.post(
            "/v1/chat/completions", json=CHAT | {"max_tokens": 2}, headers=keyed_server.headers
        )
        assert ok.status_code == 200, ok.text
        assert http.get("/v1/models", headers={"x-api-key": key}).status_code == 200
        assert (
            http.get("/v1/models", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        )
        assert http.get("/v1/models", headers={"x-api-key": wrong}).status_code == 401
        assert http.get("/v1/models", headers={"Authorization": wrong}).status_code == 401
        # A key pasted into the places a confused client might put one.
        assert http.get(f"/v1/models?api_key={wrong}").status_code == 401
        bad_body = http.post(
            "/v1/chat/completions",
            json={"model": key, "messages": [{"role": "user", "content": key}]},
            headers=keyed_server.headers,
        )
        # Echoed back to its own sender (as OpenAI does), but it must not reach the log.
        assert bad_body.status_code == 404
        http.get("/metrics")
    log = keyed_server.log()
    assert "method=GET path=/v1/models status=401" in log, "the access log did not run"
    assert "DEBUG" in log or "debug" in log
    secret_part = key.split("-", 1)[-1]
    for needle in (key, secret_part, wrong, wrong.split("-", 1)[-1]):
        assert needle not in log


def test_every_non_public_route_requires_a_key_including_new_ones(
    make_client: Any, keys_path: Path
) -> None:
    _, key = KeyStore(keys_path).create("ci")
    client: TestClient = make_client()
    app: Any = client.app

    async def brand_new(request: Any) -> Any:
        raise AssertionError("a new route ran without auth")

    # A route added after create_app, the way a future endpoint would be: protected by default.
    app.router.routes.append(Route("/v1/brand-new", brand_new, methods=["POST"]))
    public = {"/health", "/ready", "/metrics", "/openapi.json"}
    checked = 0
    for method, path in _walk_routes(app):
        response = client.request(method, path, json={})
        if path in public:
            assert response.status_code != 401, (method, path)
            continue
        error_shape(response.json())
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        checked += 1
    assert checked >= 7
    ok = client.get("/v1/models/tiny-bert", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200


def test_metrics_can_be_made_private(make_client: Any, keys_path: Path) -> None:
    KeyStore(keys_path).create("ci")
    client: TestClient = make_client(public_metrics=False)
    assert client.get("/metrics").status_code == 401
    assert client.get("/health").status_code == 200


def test_regression_openapi_declared_public_metrics_as_secured(
    make_client: Any, keys_path: Path
) -> None:
    """Schemathesis caught /metrics documented as needing a key while it answered without one."""
    KeyStore(keys_path).create("ci")
    for public in (True, False):
        client: TestClient = make_client(public_metrics=public)
        doc = client.get("/openapi.json").json()
        documented_public = doc["paths"]["/metrics"]["get"].get("security") == []
        served_public = client.get("/metrics").status_code == 200
        assert documented_public is served_public is public


def test_server_verifies_keys_only_through_the_keystore(
    make_client: Any, keys_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = KeyStore(keys_path).create("ci")
    client: TestClient = make_client()
    seen: list[str] = []
    real = KeyStore.verify

    def spy(self: KeyStore, presented: str) -> Any:
        seen.append(presented)
        return real(self, presented)

    monkeypatch.setattr(KeyStore, "verify", spy)
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v1/models", headers={"x-api-key": "hf-nope"}).status_code == 401
    assert seen == [key, "hf-nope"]


@pytest.mark.parametrize(
    ("setting", "value", "method", "path", "payload", "status", "needle"),
    [
        ("max_body_bytes", 2048, "POST", "/v1/embeddings",
         {"model": "tiny-bert", "input": "x" * 3000}, 413, "2048 bytes"),
        ("max_tokens_limit", 8, "POST", "/v1/chat/completions",
         CHAT | {"max_tokens": 9}, 400, "(8)"),
        ("max_tokens_limit", 8, "POST", "/v1/completions",
         {"model": "tiny-llama", "prompt": "hi", "max_tokens": 9}, 400, "(8)"),
        ("max_inputs", 2, "POST", "/v1/embeddings",
         {"model": "tiny-bert", "input": ["a", "b", "c"]}, 400, "allows 2"),
        ("max_inputs", 2, "POST", "/v1/classifications",
         {"model": "tiny-cls", "input": ["a", "b", "c"]}, 400, "allows 2"),
        ("max_inputs", 2, "POST", "/v1/completions",
         {"model": "tiny-llama", "prompt": ["a", "b", "c"], "max_tokens": 1}, 400, "allows 2"),
        ("max_prompt_tokens", 4, "POST", "/v1/completions",
         {"model": "tiny-llama", "prompt": [1, 2, 3, 4, 5], "max_tokens": 1}, 400, "allows 4"),
        ("max_prompt_tokens", 4, "POST", "/v1/chat/completions",
         CHAT | {"max_tokens": 1}, 400, "allows 4"),
    ],
)  # fmt: skip
def test_limits_come_from_settings(
    make_client: Any,
    setting: str,
    value: int,
    method: str,
    path: str,
    payload: dict[str, Any],
    status: int,
    needle: str,
) -> None:
    client: TestClient = make_client(**{setting: value})
    refused = client.request(method, path, json=payload)
    assert refused.status_code == status, refused.text
    assert needle in error_shape(refused.json())["message"]
    # The same request under the default settings is served: the limit, not the input, refused it.
    default: TestClient = make_client()
    assert default.request(method, path, json=payload).status_code == 200


PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_cors_is_off_by_default(client: TestClient) -> None:
    preflight = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_configured_origins(make_client: Any) -> None:
    client: TestClient = make_client(cors_origins=["https://app.example"])
    allowed = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = client.options(
        "/v1/chat/completions", headers=PREFLIGHT | {"Origin": "https://evil.example"}
    )
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    simple = client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert simple.headers["access-control-allow-origin"] == "https://app.example"


def test_cors_preflight_never_bypasses_auth(make_client: Any, keys_path: Path) -> None:
    KeyStore(keys_path).create("ci")
    client: TestClient = make_client(cors_origins=["https://app.example"])
    # A preflight carries no key and must succeed, but it only answers CORS questions...
    assert client.options("/v1/chat/completions", headers=PREFLIGHT).status_code == 200
    # ...and an OPTIONS that is not a preflight reaches no model.
    plain = client.options("/v1/chat/completions")
    assert plain.status_code in (401, 405)
    assert (
        client.post(
            "/v1/chat/completions", json=CHAT, headers={"Origin": "https://app.example"}
        ).status_code
        == 401
    )


def test_bandit_is_clean() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bandit",
            "-c",
            "pyproject.toml",
            "-r",
            "hfserve",
            "-q",
            "-f",
            "json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout)
    findings = [
        f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}"
        for r in report["results"]
    ]
    assert findings == [] and result.returncode == 0, "\n".join(findings) or result.stderr
    assert report["metrics"]["_totals"]["loc"] > 1000, "bandit scanned nothing"
    assert os.path.exists(REPO / "SECURITY.md")
