"""The plumbing every model route shares: body parsing, model lookup, cancellation, cache."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeGuard, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from hfserve.core.response_cache import make_cache_key
from hfserve.errors import InvalidRequestError
from hfserve.server.state import ServerState

__all__ = [
    "RELEASES_KEY",
    "STATE_SCOPE_KEY",
    "ClientDisconnectedError",
    "cached_json",
    "charge_tokens",
    "dumps_json",
    "encoded_json_response",
    "json_response",
    "load_model",
    "read_json",
    "run_until_disconnect",
    "server_state",
]

T = TypeVar("T")
M = TypeVar("M")
_MAX_DEPTH = 64


# The scope key under which ServingMiddleware hands routes the ServerState.
STATE_SCOPE_KEY = "hfserve.state"
# The ``scope["state"]`` key of the releases of the models a request holds (see load_model);
# ServingMiddleware calls them once the response is done.
RELEASES_KEY = "model_releases"


class ClientDisconnectedError(Exception):
    """The client went away before its response was ready; its work was cancelled."""


def server_state(request: Request) -> ServerState:
    """The ``ServerState`` of the app serving ``request``.

    ServingMiddleware puts it in the scope of every HTTP request: a scope lookup, where
    ``request.app.state.hfserve`` costs about a microsecond per request (two properties and
    ``State.__getattr__``).
    """
    return request.scope[STATE_SCOPE_KEY]  # type: ignore[no-any-return]


async def read_json(request: Request) -> Any:
    """Decode the JSON body.

    Raises:
        InvalidRequestError: wrong content type, invalid UTF-8/JSON, or nesting deeper than 64.
    """
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", "") and not ctype.endswith("+json"):
        raise InvalidRequestError(f"unsupported content-type {ctype!r}: send application/json")
    raw = await request.body()
    if not raw:
        raise InvalidRequestError("the request body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("the request body is not valid UTF-8") from None
    if _nesting_depth(text) > _MAX_DEPTH:
        raise InvalidRequestError(f"the request body is nested deeper than {_MAX_DEPTH} levels")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    # JSON may escape a lone UTF-16 surrogate ("\ud800") that no UTF-8 text can hold; it would
    # crash the tokenizer or the response encoder later, so refuse it here (only when an escape
    # is present: paired escapes such as emoji are fine and the check costs a re-encode).
    if "\\u" in text:
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(
                "the request body contains an unpaired UTF-16 surrogate escape (e.g. \\ud800)"
            ) from None
    return data


def _nesting_depth(text: str) -> int:
    # A cheap upper bound (brackets inside strings count too): refuses pathological bodies
    # before json.loads can recurse on them.
    depth = best = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


async def load_model(
    state: ServerState, request: Request, name: str, protocol: type[M], endpoint: str
) -> M:
    """The loaded model ``name``, checked to serve ``endpoint``.

    Raises:
        ModelNotFoundError: unknown model. InvalidRequestError: it does not serve ``endpoint``.
    """
    ctx = request.scope.setdefault("state", {})
    ctx["model"] = state.loader.resolve_name(name).alias
    model = await state.loader.get(name)
    # Held until the response has been sent (ServingMiddleware releases it): an eviction in
    # the meantime closes the model only after this request, stream included, is done.
    ctx.setdefault(RELEASES_KEY, []).append(state.loader.hold(model))
    if not _serves(model, protocol):
        raise InvalidRequestError(
            f"model {name!r} ({model.info.task}) does not serve {endpoint}; "
            f"it serves {', '.join(model.info.endpoints) or 'no OpenAI endpoint'}",
            param="model",
            code="model_not_supported",
        )
    return model


# (skill class, protocol) -> whether it implements it. A runtime-checkable Protocol's
# isinstance looks up every member by name: about 9% of the event loop's time in an embeddings
# request. A skill's members are its class's, so the answer holds for every instance.
_SERVES: dict[tuple[type, type], bool] = {}


def _serves(model: object, protocol: type[M]) -> TypeGuard[M]:
    key = (type(model), protocol)
    serves = _SERVES.get(key)
    if serves is None:
        serves = _SERVES[key] = isinstance(model, protocol)
    return serves


async def run_until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it if the client disconnects first.

    Raises:
        ClientDisconnectedError: the client went away; ``work`` was cancelled.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if task.cancelled() or (not task.done()):
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnectedError
    return task.result()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A compact JSON response."""
    return encoded_json_response(dumps_json(payload), status, headers)


def encoded_json_response(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response from an already encoded body (e.g. one kept for reuse)."""
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def dumps_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON, the encoding of every JSON body the server sends."""
    try:
        # orjson: an embeddings response (384+ floats) takes ~20 us instead of ~400 us with
        # the standard library, time the event loop holds the GIL against the model thread.
        return orjson.dumps(payload)
    except TypeError:
        # What orjson refuses (integers beyond 64 bits, non-str keys) the standard library
        # writes; orjson.JSONEncodeError is a TypeError.
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# Code points JSON leaves raw but line readers split on (``str.splitlines``, and httpx's
# ``aiter_lines`` that follows it): a random or multilingual model can emit them, and a server-sent
# event's data must stay on one line for such clients. Their UTF-8 bytes occur nowhere else.
_LINE_BREAKS = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)


def sse_event(payload: Any) -> bytes:
    """One server-sent event carrying ``payload`` as JSON on a single line."""
    body = dumps_json(payload)
    for raw, escaped in _LINE_BREAKS:
        if raw in body:
            body = body.replace(raw, escaped)
    return b"data: " + body + b"\n\n"


async def cached_json(
    state: ServerState,
    model: str,
    cache_request: dict[str, Any] | None,
    produce: Callable[[], Awaitable[dict[str, Any]]],
    refresh: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Response:
    """Serve from the response cache when ``cache_request`` is given (deterministic), else run.

    Sets ``x-cache: hit|miss`` on cacheable requests. ``refresh`` rewrites volatile fields
    (ids, timestamps) of a cached body.
    """
    cache = state.response_cache
    if cache is None or cache_request is None:
        return json_response(await produce())
    key = make_cache_key(model, cache_request, namespace=state.loader.resolve_name(model).source)
    hit = await cache.get(key)
    if hit is not None:
        state.metrics.cache_hits.inc()
        body = json.loads(hit)
        return json_response(refresh(body) if refresh else body, headers={"x-cache": "hit"})
    state.metrics.cache_misses.inc()
    body = dumps_json(await produce())
    await cache.put(key, body)
    return encoded_json_response(body, headers={"x-cache": "miss"})


async def charge_tokens(state: ServerState, request: Request, tokens: int) -> None:
    """Debit the tokens a request really used from its key's tokens/min budget."""
    ctx = request.scope.get("state", {})
    limits = ctx.get("rate_limits")
    if limits is None or not limits.tokens_per_minute or tokens <= 0:
        return
    await state.rate_limiter.charge(ctx["rate_subject"], limits, tokens)


def now_ts() -> int:
    """Unix time in whole seconds, for ``created`` fields."""
    return int(time.time())
