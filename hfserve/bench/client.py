"""An HTTP client that sends one benchmark request and times it, streaming or not.

It speaks the OpenAI wire format (chat completions, completions, embeddings) over
``httpx.AsyncClient`` and turns every outcome, including transport errors, into a
:class:`RequestRecord`; only an unreachable target during the pre-flight check raises.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import httpx

from hfserve.bench.config import BenchConfig, Endpoint
from hfserve.bench.record import RequestRecord
from hfserve.bench.target import ListedModel
from hfserve.bench.workload import PreparedRequest
from hfserve.core.clock import Clock, MonotonicClock
from hfserve.errors import UnavailableError

__all__ = ["INVALID_RESPONSE", "STREAM_ERROR", "BenchClient", "iter_sse_data"]

# The pre-flight check only has to see that something answers; a long wait means it does not.
_PREFLIGHT_TIMEOUT = 10.0
_MESSAGE_LIMIT = 200
INVALID_RESPONSE = "invalid response"
STREAM_ERROR = "error in stream"


async def iter_sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """Yield the ``data`` of each server-sent event in ``lines`` (multi-line data joined)."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):  # an SSE comment, e.g. a keep-alive
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value.removeprefix(" "))
    if data:  # a server that closes without the final blank line still sent the event
        yield "\n".join(data)


class _BadResponseError(Exception):
    """A 2xx response that is not what the OpenAI format promises."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class BenchClient:
    """Sends benchmark requests to one OpenAI-compatible server; use with ``async with``."""

    def __init__(
        self,
        config: BenchConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._config = config
        self._clock = clock if clock is not None else MonotonicClock()
        # The pool must never be the bottleneck: queueing inside the client would be counted
        # as server latency. Closed loop needs one connection per worker; open loop as many
        # as are in flight.
        cap = config.concurrency if config.open_loop else config.workers
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.AsyncClient(
            transport=transport,
            headers=headers,
            timeout=httpx.Timeout(config.timeout),
            limits=httpx.Limits(max_connections=cap, max_keepalive_connections=cap),
        )

    async def __aenter__(self) -> BenchClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def retarget(self, config: BenchConfig) -> None:
        """Send later requests as ``config`` says (the endpoint chosen after the pre-flight)."""
        self._config = config

    async def list_models(self) -> list[str]:
        """The model ids ``GET /v1/models`` lists ([] when the route answers but lists none).

        Raises:
            UnavailableError: nothing answers at the URL (refused, unresolvable, timed out).
        """
        return [model.id for model in await self.listed_models()]

    async def listed_models(self) -> list[ListedModel]:
        """The models ``GET /v1/models`` lists, with hfserve's ``task`` when it says one.

        Raises:
            UnavailableError: nothing answers at the URL (refused, unresolvable, timed out).
        """
        url = self._config.api_base + "/models"
        timeout = min(_PREFLIGHT_TIMEOUT, self._config.timeout)
        try:
            response = await self._http.get(url, timeout=timeout)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise UnavailableError(f"cannot reach {self._config.url}: {reason}") from None
        try:
            entries = response.json()["data"]
            return [
                ListedModel(str(e["id"]), e["task"] if isinstance(e.get("task"), str) else None)
                for e in entries
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            # Not every peer implements /v1/models (or it needs another key): it answered,
            # which is all the pre-flight check is for.
            return []

    async def send(self, request: PreparedRequest, origin: float = 0.0) -> RequestRecord:
        """Send one request and record its outcome; ``start`` is relative to ``origin``."""
        start = self._clock.now()
        try:
            async with self._http.stream(
                "POST", self._config.endpoint_url, json=request.body
            ) as response:
                if not response.is_success:
                    text = (await response.aread()).decode("utf-8", "replace")
                    return self._failure(
                        start,
                        origin,
                        f"HTTP {response.status_code}",
                        _error_message(text),
                        status=response.status_code,
                    )
                content_type = response.headers.get("content-type", "")
                try:
                    # Trust what the server sent, not what was asked: some ignore ``stream``.
                    if content_type.startswith("text/event-stream"):
                        return await self._read_stream(response, request, start, origin)
                    raw = await response.aread()
                    return self._read_json(raw, response, request, start, origin)
                except _BadResponseError as exc:
                    return self._failure(
                        start, origin, exc.kind, str(exc), status=response.status_code
                    )
        except httpx.HTTPError as exc:
            return self._failure(start, origin, type(exc).__name__, str(exc) or None)

    async def _read_stream(
        self,
        response: httpx.Response,
        request: PreparedRequest,
        start: float,
        origin: float,
    ) -> RequestRecord:
        ttft: float | None = None
        last = start
        gaps: list[float] = []
        chunks = 0
        usage: dict[str, Any] = {}
        async for data in iter_sse_data(response.aiter_lines()):
            if data.strip() == "[DONE]":
                break
            event = _parse_json(data)
            if "error" in event:
                raise _BadResponseError(STREAM_ERROR, _error_message(data) or "error event")
            if self._chunk_text(event):
                now = self._clock.now()
                if ttft is None:
                    ttft = now - start
                else:
                    gaps.append(now - last)
                last = now
                chunks += 1
            if isinstance(event.get("usage"), dict):
                usage = event["usage"]
        latency = self._clock.now() - start
        return RequestRecord(
            ok=True,
            start=start - origin,
            latency=latency,
            ttft=ttft,
            itl=tuple(gaps),
            input_tokens=_usage_count(usage, "prompt_tokens", request.prompt_tokens),
            output_tokens=_usage_count(usage, "completion_tokens", chunks),
            status=response.status_code,
        )

    def _chunk_text(self, event: dict[str, Any]) -> str:
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if self._config.endpoint is Endpoint.CHAT:
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
        else:
            text = choice.get("text")
        return text if isinstance(text, str) else ""

    def _read_json(
        self,
        raw: bytes,
        response: httpx.Response,
        request: PreparedRequest,
        start: float,
        origin: float,
    ) -> RequestRecord:
        latency = self._clock.now() - start
        body = _parse_json(raw)
        raw_usage = body.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        endpoint = self._config.endpoint
        if endpoint is Endpoint.EMBEDDINGS:
            data = body.get("data")
            if not isinstance(data, list) or not data:
                raise _BadResponseError(INVALID_RESPONSE, "no embeddings in the response")
            output_tokens = 0
        else:
            text = _message_text(body, endpoint)
            # Without usage, words are the best count a tokenizer-free client has.
            output_tokens = _usage_count(usage, "completion_tokens", len(text.split()))
        return RequestRecord(
            ok=True,
            start=start - origin,
            latency=latency,
            input_tokens=_usage_count(usage, "prompt_tokens", request.prompt_tokens),
            output_tokens=output_tokens,
            status=response.status_code,
        )

    def _failure(
        self,
        start: float,
        origin: float,
        error: str,
        message: str | None,
        *,
        status: int | None = None,
    ) -> RequestRecord:
        return RequestRecord(
            ok=False,
            start=start - origin,
            latency=self._clock.now() - start,
            status=status,
            error=error,
            message=message,
        )


def _parse_json(raw: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise _BadResponseError(INVALID_RESPONSE, f"not JSON: {_clip(raw)}") from None
    if not isinstance(value, dict):
        raise _BadResponseError(INVALID_RESPONSE, f"not a JSON object: {_clip(raw)}")
    return value


def _message_text(body: dict[str, Any], endpoint: Endpoint) -> str:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _BadResponseError(INVALID_RESPONSE, "no choices in the response")
    choice = choices[0]
    if endpoint is Endpoint.CHAT:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    return text if isinstance(text, str) else ""


def _usage_count(usage: dict[str, Any], key: str, fallback: int) -> int:
    value = usage.get(key)
    # bool is an int subclass; a server sending ``true`` has not counted anything.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return fallback


def _error_message(text: str) -> str | None:
    """The human part of an error body: OpenAI's ``error.message``, else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return _clip(text) or None
    if isinstance(body, dict):
        error = body.get("error", body.get("detail"))
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _clip(error["message"])
        if isinstance(error, str):
            return _clip(error)
    return _clip(text)


def _clip(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."
