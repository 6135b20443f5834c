"""deployments/scripts/smoke_test.py against a stub server on loopback."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType

import pytest

from tests.deploy.conftest import DEPLOYMENTS


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "smoke_test", DEPLOYMENTS / "scripts" / "smoke_test.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


smoke = _load_script()


class _Stub(BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, bytes]] = {}
    seen_auth: list[str | None] = []

    def do_GET(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization"))
        status, body = self.answers.get(self.path, (404, b"{}"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


HEALTHY = {
    "/health": (200, b'{"status":"ok"}'),
    "/ready": (200, b'{"status":"ready"}'),
    "/v1/models": (200, json.dumps({"data": [{"id": "m"}]}).encode()),
    "/metrics": (200, b"hfserve_requests_total 1\n"),
}


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Stub.answers = dict(HEALTHY)
    _Stub.seen_auth = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_healthy_server_passes(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert smoke.main([server + "/", "--api-key", "hf-test", "--wait", "0"]) == 0
    assert "OK" in capsys.readouterr().out
    assert "Bearer hf-test" in _Stub.seen_auth


@pytest.mark.parametrize(
    ("path", "answer", "message"),
    [
        ("/ready", (503, b"{}"), "/ready did not answer 200"),
        ("/health", (500, b"{}"), "/health answered 500"),
        ("/v1/models", (401, b"{}"), "/v1/models answered 401"),
        ("/v1/models", (200, b'{"data": []}'), "lists no model"),
        ("/metrics", (200, b"python_gc 1\n"), "without hfserve_ metrics"),
    ],
)
def test_each_failure_is_reported(
    server: str,
    capsys: pytest.CaptureFixture[str],
    path: str,
    answer: tuple[int, bytes],
    message: str,
) -> None:
    _Stub.answers[path] = answer
    assert smoke.main([server, "--wait", "0"]) == 1
    assert message in capsys.readouterr().err


def test_unreachable_server_fails_after_the_wait(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    assert smoke.main(["http://127.0.0.1:9", "--wait", "0", "--timeout", "1"]) == 1
    assert "did not answer 200" in capsys.readouterr().err
