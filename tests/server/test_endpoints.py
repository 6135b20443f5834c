"""The one route table: the app, middleware, metrics and OpenAPI all follow it."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.testclient import TestClient

from hfserve.core.keystore import KeyStore
from hfserve.server.app import create_app
from hfserve.server.endpoints import ENDPOINTS, OTHER_LABEL, Endpoint, EndpointIndex, OpenApi
from hfserve.settings import Settings
from tests.fixtures.tiny_models import TinyModels
from tests.server.conftest import wait_ready


async def _echo(request: Request) -> Response:
    return JSONResponse({"echo": (await request.json())["text"]})


def test_adding_an_endpoint_is_one_line_in_the_table(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    _, key = KeyStore(tmp_path / "keys.json").create("alice")
    echo = Endpoint("/v1/echo", "POST", _echo, OpenApi("echo", "Echo.", errors=(401,)))
    # One tiny model: the demo's SmolLM2 would spend minutes converting before /ready.
    settings = Settings.load(
        None, models=[str(tiny_models.bert)], keys_file=tmp_path / "keys.json", device="cpu"
    )
    app = create_app(settings, endpoints=(*ENDPOINTS, echo))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        # Auth follows the table: a /v1 endpoint needs a key ...
        refused = client.post("/v1/echo", json={"text": "hi"})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        ok = client.post(
            "/v1/echo", json={"text": "hi"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert ok.status_code == 200
        assert ok.json() == {"echo": "hi"}
        # ... metrics label it by its path ...
        scrape = client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).text
        assert 'route="/v1/echo"' in scrape
        # ... and OpenAPI documents it.
        doc = client.get("/openapi.json").json()
        assert doc["paths"]["/v1/echo"]["post"]["operationId"] == "echo"


def test_the_default_app_serves_exactly_the_table() -> None:
    settings = Settings.load(None, models=[], device="cpu")
    app = create_app(settings)
    served = [route.path for route in app.routes]  # type: ignore[attr-defined]
    # Every endpoint of the table, the cheap GET routes tried first, the table's order kept
    # within each method (Starlette tries routes in order: a miss costs the GETs most).
    gets = [e.path for e in ENDPOINTS if e.method == "GET"]
    assert served == gets + [e.path for e in ENDPOINTS if e.method != "GET"]
    assert served[0] == "/v1/models"
    documented = {e.path.replace(":path", "") for e in ENDPOINTS if e.openapi is not None}
    assert set(app.state.openapi["paths"]) == documented


def test_public_and_drain_exempt_endpoints_are_declared_not_hard_coded() -> None:
    public = {e.path for e in ENDPOINTS if e.public}
    assert public == {"/health", "/ready", "/openapi.json"}
    assert {e.path for e in ENDPOINTS if e.public_setting == "public_metrics"} == {"/metrics"}
    assert {e.path for e in ENDPOINTS if e.drain_exempt} == {"/health", "/ready", "/metrics"}


def test_metric_labels_have_bounded_cardinality() -> None:
    index = EndpointIndex()
    assert index.label("/v1/chat/completions") == "/v1/chat/completions"
    assert index.label("/v1/models/org/some-model") == "/v1/models/{model}"
    assert index.label("/v1/models") == "/v1/models"
    assert index.label("/nope/../etc") == OTHER_LABEL
    assert index.find("/nope") is None
