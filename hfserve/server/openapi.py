"""The OpenAPI 3.1 document of the server, generated from the pydantic request schemas."""

from __future__ import annotations

import re
from typing import Any

from hfserve._version import __version__
from hfserve.server.endpoints import ENDPOINTS, Endpoint, OpenApi

__all__ = ["build_openapi"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": "Error in the OpenAI shape",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def _ok(description: str, media: str = "application/json") -> dict[str, Any]:
    return {"200": {"description": description, "content": {media: {"schema": {"type": "object"}}}}}


def _operation(endpoint: Endpoint, spec: OpenApi, schemas: dict[str, Any]) -> dict[str, Any]:
    responses = _ok("Success" if spec.body else spec.summary.rstrip("."), spec.media)
    responses |= _errors(*spec.errors)
    if spec.streams:
        responses["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    operation: dict[str, Any] = {"operationId": spec.operation_id, "summary": spec.summary}
    params = re.findall(r"{(\w+)(?::\w+)?}", endpoint.path)
    if params:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in params
        ]
    if spec.body is not None:
        schema = spec.body.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[spec.body.__name__] = schema
        media = "multipart/form-data" if spec.multipart else "application/json"
        ref = {"$ref": f"#/components/schemas/{spec.body.__name__}"}
        operation["requestBody"] = {"required": True, "content": {media: {"schema": ref}}}
    operation["responses"] = responses
    return operation


def build_openapi(
    *,
    secured: bool,
    public_metrics: bool = False,
    endpoints: tuple[Endpoint, ...] = ENDPOINTS,
) -> dict[str, Any]:
    """The document served at ``/openapi.json``, built from the route table.

    ``public_metrics`` marks endpoints made public by that setting (``/metrics``) keyless.
    """
    schemas: dict[str, Any] = {"Error": _ERROR}
    paths: dict[str, Any] = {}
    settings = {"public_metrics": public_metrics}
    for endpoint in endpoints:
        spec = endpoint.openapi
        if spec is None:
            continue
        operation = _operation(endpoint, spec, schemas)
        setting = endpoint.public_setting
        if endpoint.public or (setting is not None and settings.get(setting, False)):
            operation["security"] = []
        path = re.sub(r":\w+}", "}", endpoint.path)
        paths.setdefault(path, {})[endpoint.method.lower()] = operation
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "hfserve",
            "version": __version__,
            "description": "OpenAI-compatible API of hfserve.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
