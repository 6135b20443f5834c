"""Operational routes: ``/health``, ``/ready``, ``/metrics``, ``/v1/models``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from hfserve.server.metrics import CONTENT_TYPE
from hfserve.server.requests import (
    dumps_json,
    encoded_json_response,
    json_response,
    server_state,
)

__all__ = ["get_model", "health", "list_models", "metrics", "ready"]


async def health(request: Request) -> Response:
    """Liveness: the process is up and its event loop answers."""
    return json_response({"status": "ok"})


async def ready(request: Request) -> Response:
    """Readiness: 503 until preloaded models are loaded, while draining, or after a failed preload."""
    state = server_state(request)
    checks: dict[str, Any] = {"models_loaded": state.ready, "draining": state.draining}
    if state.preload_error:
        checks["error"] = state.preload_error
    ok = state.ready and not state.draining
    if state.extra_ready_checks is not None:
        report = await state.extra_ready_checks()
        checks.update(report.checks)
        ok = ok and report.ok
    return json_response(
        {"status": "ready" if ok else "not_ready", **checks}, status=200 if ok else 503
    )


async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    state = server_state(request)
    state.refresh_gauges()
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def _model_card(state: Any, alias: str, model_state: str) -> dict[str, Any]:
    # Never the source: a path would tell every client how the server's disk is laid out.
    loader = state.loader
    return {
        "id": alias,
        "object": "model",
        "created": state.started_at,
        "owned_by": "hfserve",
        "task": loader.task_of(alias),
        "state": model_state,
        "loaded": model_state == "loaded",
        "pinned": loader.specs[alias].pinned,
    }


async def list_models(request: Request) -> Response:
    """Every offered model with its task, state (loaded, loading, available) and pin."""
    state = server_state(request)
    loader = state.loader
    loader.rescan()
    states = loader.states()
    # Clients poll this route (health checks, SDK start-up), and its body only changes when a
    # model is added, loads or is evicted: keep the response until one of those happens. A
    # Response is only read when sent, so one object serves every request meanwhile.
    fingerprint = (state.started_at, states)
    cached = state.models_listing
    if cached is None or cached[0] != fingerprint:
        data = [_model_card(state, alias, model_state) for alias, model_state in states]
        cached = (fingerprint, encoded_json_response(dumps_json({"object": "list", "data": data})))
        state.models_listing = cached
    return cached[1]


async def get_model(request: Request) -> Response:
    """One model's card; 404 ``model_not_found`` when unknown."""
    state = server_state(request)
    alias = state.loader.resolve_name(request.path_params["model"]).alias
    return json_response(_model_card(state, alias, state.loader.state(alias)))
