"""``/v1/embeddings`` and ``/v1/classifications``: micro-batched, deterministic, cacheable."""

from __future__ import annotations

import base64
import struct
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from hfserve.errors import InvalidRequestError
from hfserve.server.requests import (
    cached_json,
    charge_tokens,
    load_model,
    read_json,
    run_until_disconnect,
    server_state,
)
from hfserve.server.schemas import ClassificationRequest, EmbeddingRequest, parse_body
from hfserve.skills.base import ClassificationModel, EmbeddingModel

__all__ = ["classifications", "embeddings"]


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise InvalidRequestError(
            f"too many inputs: {count} (this server allows {limit})", param="input"
        )


async def embeddings(request: Request) -> Response:
    """Create embeddings for one or more inputs."""
    state = server_state(request)
    body = parse_body(EmbeddingRequest, await read_json(request))
    inputs = body.inputs()
    _check_count(len(inputs), state.settings.max_inputs)
    model = await load_model(state, request, body.model, EmbeddingModel, "/v1/embeddings")  # type: ignore[type-abstract]
    for item in inputs:
        if isinstance(item, list) and len(item) > model.max_input_tokens:
            raise InvalidRequestError(
                f"an input has {len(item)} tokens; this model accepts at most {model.max_input_tokens}",
                param="input",
            )

    async def produce() -> dict[str, Any]:
        result = await run_until_disconnect(request, model.embed(inputs))
        await charge_tokens(state, request, result.prompt_tokens)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(vec, body.encoding_format)}
            for i, vec in enumerate(result.vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }

    cache_key = {"endpoint": "embeddings", "input": inputs, "encoding_format": body.encoding_format}
    return await cached_json(state, body.model, cache_key, produce)


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


async def classifications(request: Request) -> Response:
    """Classify one or more inputs: labels with scores, highest first (hfserve extension)."""
    state = server_state(request)
    body = parse_body(ClassificationRequest, await read_json(request))
    inputs = body.inputs()
    _check_count(len(inputs), state.settings.max_inputs)
    model = await load_model(state, request, body.model, ClassificationModel, "/v1/classifications")  # type: ignore[type-abstract]

    async def produce() -> dict[str, Any]:
        result = await run_until_disconnect(request, model.classify(inputs))
        await charge_tokens(state, request, result.prompt_tokens)
        data = []
        for i, scores in enumerate(result.items):
            ranked = scores[: body.top_k] if body.top_k else scores
            data.append(
                {
                    "object": "classification",
                    "index": i,
                    "label": ranked[0].label if ranked else None,
                    "score": ranked[0].score if ranked else None,
                    "labels": [{"label": s.label, "score": s.score} for s in ranked],
                }
            )
        return {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }

    cache_key = {"endpoint": "classifications", "input": inputs, "top_k": body.top_k}
    return await cached_json(state, body.model, cache_key, produce)
