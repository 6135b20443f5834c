"""``/v1/rerank`` and ``/v1/score``: cross-encoder relevance of documents to a query."""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from hfserve.errors import InvalidRequestError
from hfserve.server.requests import (
    cached_json,
    charge_tokens,
    load_model,
    now_ts,
    read_json,
    run_until_disconnect,
    server_state,
)
from hfserve.server.schemas import RerankRequest, ScoreRequest, parse_body
from hfserve.skills.base import RerankModel

__all__ = ["rerank", "score"]


def _check_count(count: int, limit: int, param: str) -> None:
    if count > limit:
        raise InvalidRequestError(
            f"too many documents: {count} (this server allows {limit})", param=param
        )


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


async def rerank(request: Request) -> Response:
    """Rank ``documents`` by relevance to ``query``, most relevant first."""
    state = server_state(request)
    body = parse_body(RerankRequest, await read_json(request))
    _check_count(len(body.documents), state.settings.max_documents, "documents")
    model = await load_model(state, request, body.model, RerankModel, "/v1/rerank")  # type: ignore[type-abstract]

    async def produce() -> dict[str, Any]:
        pairs = [(body.query, doc) for doc in body.documents]
        result = await run_until_disconnect(request, model.score(pairs))
        await charge_tokens(state, request, result.prompt_tokens)
        # Stable sort: equal scores keep the documents' order.
        order = sorted(range(len(pairs)), key=lambda i: -result.scores[i])
        if body.top_n is not None:
            order = order[: body.top_n]
        results = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": result.scores[i]}
            if body.return_documents:
                item["document"] = {"text": body.documents[i]}
            results.append(item)
        return {
            "id": _new_id("rerank"),
            "model": body.model,
            "results": results,
            "usage": _usage(result.prompt_tokens),
        }

    cache_key = {
        "endpoint": "rerank",
        "query": body.query,
        "documents": body.documents,
        "top_n": body.top_n,
        "return_documents": body.return_documents,
    }
    return await cached_json(state, body.model, cache_key, produce, _refresh_id("rerank"))


async def score(request: Request) -> Response:
    """Score each ``text_1``/``text_2`` pair (vLLM's ``/v1/score``)."""
    state = server_state(request)
    body = parse_body(ScoreRequest, await read_json(request))
    pairs = body.pairs()
    _check_count(len(pairs), state.settings.max_documents, "text_2")
    model = await load_model(state, request, body.model, RerankModel, "/v1/score")  # type: ignore[type-abstract]

    async def produce() -> dict[str, Any]:
        result = await run_until_disconnect(request, model.score(pairs))
        await charge_tokens(state, request, result.prompt_tokens)
        return {
            "id": _new_id("score"),
            "object": "list",
            "created": now_ts(),
            "model": body.model,
            "data": [
                {"index": i, "object": "score", "score": value}
                for i, value in enumerate(result.scores)
            ],
            "usage": _usage(result.prompt_tokens),
        }

    cache_key = {"endpoint": "score", "pairs": pairs}
    return await cached_json(state, body.model, cache_key, produce, _refresh_id("score"))


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _refresh_id(prefix: str) -> Any:
    def refresh(cached: dict[str, Any]) -> dict[str, Any]:
        # A cached body is a new response: it gets its own id (and time, where it has one).
        cached["id"] = _new_id(prefix)
        if "created" in cached:
            cached["created"] = now_ts()
        return cached

    return refresh
