"""The one route table: the app, middleware, metrics and OpenAPI all follow it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.testclient import TestClient

from hfserve.core.keystore import KeyStore
from hfserve.errors import InvalidRequestError
from hfserve.server.app import create_app
from hfserve.server.endpoints import ENDPOINTS, OTHER_LABEL, Endpoint, EndpointIndex, OpenApi
from hfserve.server.requests import load_model, server_state
from hfserve.settings import Settings
from hfserve.skills.base import GenerationModel, GenerationRequest
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


async def _bug(request: Request) -> Response:
    raise RuntimeError("a bug, with a secret in its message")


async def _refuse(request: Request) -> Response:
    raise InvalidRequestError("'text' is required", param="text")


async def _late_failure(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first chunk"
        raise InvalidRequestError("too late to refuse")

    return StreamingResponse(chunks(), media_type="text/plain")


def _app_with(tmp_path: Path, *extra: Endpoint) -> Starlette:
    # No key file: auth is off, so the routes themselves are what the requests reach.
    settings = Settings.load(None, models=[], keys_file=tmp_path / "keys.json", device="cpu")
    return create_app(settings, endpoints=(*ENDPOINTS, *extra))


def test_directly_dispatched_routes_answer_errors_as_the_router_would(tmp_path: Path) -> None:
    # Exact paths skip Starlette's exception middleware and router; what a client sees on
    # an error must not change: the client's mistake a 4xx naming the field, a bug a 500
    # without its message, both with the request id, and both counted by their status.
    app = _app_with(
        tmp_path,
        Endpoint("/v1/bug", "POST", _bug, None),
        Endpoint("/v1/bugs/{name}", "POST", _bug, None),
        Endpoint("/v1/refuse", "POST", _refuse, None),
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        refused = client.post("/v1/refuse", headers={"x-request-id": "req-1"})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "text"
        assert refused.headers["x-request-id"] == "req-1"
        bug = client.post("/v1/bug", headers={"x-request-id": "req-2"})
        assert bug.status_code == 500
        assert bug.json()["error"]["code"] == "internal_error"
        assert "secret" not in bug.text
        assert "req-2" in bug.json()["error"]["message"]
        assert bug.headers["x-request-id"] == "req-2"
        # A templated path goes through the router: the same 500, past hfserve's layer too.
        routed = client.post("/v1/bugs/x", headers={"x-request-id": "req-3"})
        assert routed.status_code == 500
        assert routed.json()["error"]["code"] == "internal_error"
        assert "secret" not in routed.text
        assert routed.headers["x-request-id"] == "req-3"
        # Methods other than the table's still go through the router: HEAD is GET's, and
        # another method is a 405, not a 404.
        head = client.head("/v1/models")
        assert head.status_code == 200
        assert head.content == b""
        wrong = client.put("/v1/refuse")
        assert wrong.status_code == 405
        assert wrong.json()["error"]["code"] == "method_not_allowed"
        scrape = client.get("/metrics").text
    assert 'route="/v1/refuse",status="400"' in scrape
    assert 'route="/v1/bug",status="500"' in scrape


def test_an_error_after_the_response_started_is_not_answered_twice(tmp_path: Path) -> None:
    # The status line has gone out: the error cannot become a 400 any more. As with
    # Starlette's router, the exception propagates and the response is cut short.
    app = _app_with(tmp_path, Endpoint("/v1/late", "GET", _late_failure, None))
    with TestClient(app) as client, pytest.raises(RuntimeError, match="already started"):
        client.get("/v1/late")
    with TestClient(app, raise_server_exceptions=False) as client:
        client.get("/v1/late")
        scrape = client.get("/metrics").text
    assert 'route="/v1/late",status="200"' in scrape


async def _evict_mid_stream(request: Request) -> Response:
    # What a second model's load does to a streaming chat: its model leaves the cache between
    # two chunks. The stream must still end normally, and the model close only afterwards.
    state = server_state(request)
    model = await load_model(state, request, "tiny-llama", GenerationModel, "/v1/test")  # type: ignore[type-abstract]
    prompt = model.encode("the stream goes on")
    chunks = model.generate(GenerationRequest(prompt, max_new_tokens=40, ignore_eos=True))

    async def body() -> AsyncIterator[bytes]:
        last = None
        async for chunk in chunks:
            if last is None:
                assert await state.loader.evict("tiny-llama")
                yield f"evicted {state.loader.loaded()} holds {state.loader.holds(model)}\n".encode()
            last = chunk
        assert last is not None
        yield f"{last.completion_tokens} {last.finish_reason}\n".encode()

    return StreamingResponse(body(), media_type="text/plain")


def test_a_model_evicted_mid_stream_finishes_the_stream(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    route = Endpoint("/v1/test", "POST", _evict_mid_stream, OpenApi("test", "Test."))
    settings = Settings.load(
        None, models=[str(tiny_models.llama)], keys_file=tmp_path / "keys.json", device="cpu"
    )
    app = create_app(settings, endpoints=(*ENDPOINTS, route))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        loader = app.state.hfserve.loader
        model = client.portal.call(loader.get, "tiny-llama")
        answer = client.post("/v1/test")
        assert answer.status_code == 200, answer.text
        # Out of the cache during the stream, held by this one request, finished all the same.
        assert answer.text.splitlines() == ["evicted [] holds 1", "40 length"]
        assert loader.holds(model) == 0
        # Closed once the response was done: a closed engine refuses new work.
        client.portal.call(asyncio.gather, *loader._closers)
        assert not model.engine.running
