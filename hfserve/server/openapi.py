"""The OpenAPI 3.1 document of the server, generated from the pydantic request schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from hfserve._version import __version__
from hfserve.server.schemas import (
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
    EmbeddingRequest,
)

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
_POSTS: dict[str, tuple[type[BaseModel], str, str]] = {
    "/v1/chat/completions": (
        ChatCompletionRequest,
        "createChatCompletion",
        "Create a chat completion (SSE when stream is true).",
    ),
    "/v1/completions": (CompletionRequest, "createCompletion", "Create a text completion."),
    "/v1/embeddings": (EmbeddingRequest, "createEmbedding", "Create embeddings."),
    "/v1/classifications": (
        ClassificationRequest,
        "createClassification",
        "Classify text (hfserve extension).",
    ),
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


def build_openapi(*, secured: bool, public_metrics: bool = False) -> dict[str, Any]:
    """The document served at ``/openapi.json``; ``public_metrics`` marks /metrics keyless."""
    schemas: dict[str, Any] = {"Error": _ERROR}
    paths: dict[str, Any] = {}
    for path, (model, op_id, summary) in _POSTS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        responses = _ok("Success") | _errors(400, 401, 404, 413, 429, 500, 503)
        if path in ("/v1/chat/completions", "/v1/completions"):
            responses["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
        paths[path] = {
            "post": {
                "operationId": op_id,
                "summary": summary,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                        }
                    },
                },
                "responses": responses,
            }
        }
    paths["/v1/models"] = {
        "get": {
            "operationId": "listModels",
            "summary": "List models.",
            "responses": _ok("Models") | _errors(401),
        }
    }
    paths["/v1/models/{model}"] = {
        "get": {
            "operationId": "retrieveModel",
            "summary": "Retrieve a model.",
            "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": _ok("Model") | _errors(401, 404),
        }
    }
    public: dict[str, Any] = {"security": []}
    paths["/health"] = {
        "get": {"operationId": "health", "summary": "Liveness.", "responses": _ok("Alive")} | public
    }
    paths["/ready"] = {
        "get": {
            "operationId": "ready",
            "summary": "Readiness.",
            "responses": _ok("Ready") | _errors(503),
        }
        | public
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics.",
            "responses": _ok("Metrics", "text/plain") | _errors(401),
        }
        | (public if public_metrics else {})
    }
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
