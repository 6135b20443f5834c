"""Fake OpenAI-compatible servers that the load generator is tested against.

Two shapes: :class:`ScriptedTransport`, an ``httpx.MockTransport`` whose timings come from a
``FakeClock`` (so TTFT, ITL and latency are exact numbers), and :class:`FakeServer`, a small
Starlette app served by uvicorn on a loopback port in a background thread (real sockets,
real SSE framing, no timing assertions).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hfserve.core.clock import FakeClock

MODEL = "fake-model"


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying ``data``."""
    text = data if isinstance(data, str) else json.dumps(data)
    return f"data: {text}\n\n".encode()


def chunk(endpoint: str, text: str | None, *, role: bool = False) -> dict[str, Any]:
    """A streamed chat or completion chunk carrying ``text``."""
    if endpoint == "chat":
        delta: dict[str, Any] = {"content": text}
        if role:
            delta["role"] = "assistant"
        return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
    return {"object": "text_completion", "choices": [{"index": 0, "text": text}]}


def usage(prompt: int, completion: int) -> dict[str, int]:
    """An OpenAI usage object."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def endpoint_of(path: str) -> str:
    """``chat``, ``completions`` or ``embeddings`` from a request path."""
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/embeddings"):
        return "embeddings"
    return "completions"


@dataclass
class Script:
    """How the scripted server answers one request; times are fake seconds."""

    status: int = 200
    first: float = 0.1  # until the response starts (and the first token arrives)
    gaps: tuple[float, ...] = (0.01, 0.02, 0.03)  # between successive tokens
    role_chunk_first: bool = True  # chat: a role-only chunk, as OpenAI sends, before any token
    send_usage: bool = True
    usage_tokens: int | None = None  # completion_tokens to report; default: tokens sent
    prompt_tokens: int = 7


@dataclass
class ScriptedTransport:
    """An ``httpx.MockTransport`` driven by a ``FakeClock`` and a list of scripts."""

    clock: FakeClock
    scripts: list[Script] = field(default_factory=lambda: [Script()])
    models: list[str] | None = field(default_factory=lambda: [MODEL])
    requests: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    headers: list[httpx.Headers] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        """The transport to hand to ``run_benchmark``."""
        return httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        if request.method == "GET":
            if self.models is None:
                return httpx.Response(404, text="no such route")
            return httpx.Response(200, json={"data": [{"id": m} for m in self.models]})
        body = json.loads(request.content)
        script = self.scripts[len(self.requests) % len(self.scripts)]
        self.requests.append((self.clock.now(), body))
        self.clock.advance(script.first)
        if script.status != 200:
            return httpx.Response(
                script.status, json={"error": {"message": f"scripted {script.status}"}}
            )
        endpoint = endpoint_of(request.url.path)
        tokens = len(script.gaps) + 1
        reported = script.usage_tokens if script.usage_tokens is not None else tokens
        if endpoint == "embeddings":
            return httpx.Response(
                200,
                json={"data": [{"embedding": [0.1, 0.2]}], "usage": usage(script.prompt_tokens, 0)},
            )
        if not body.get("stream"):
            self.clock.advance(sum(script.gaps))
            choice: dict[str, Any] = (
                {"message": {"role": "assistant", "content": " ".join(["word"] * tokens)}}
                if endpoint == "chat"
                else {"text": " ".join(["word"] * tokens)}
            )
            payload: dict[str, Any] = {"choices": [choice]}
            if script.send_usage:
                payload["usage"] = usage(script.prompt_tokens, reported)
            return httpx.Response(200, json=payload)

        async def events() -> AsyncIterator[bytes]:
            if endpoint == "chat" and script.role_chunk_first:
                yield sse(chunk(endpoint, "", role=True))
            yield sse(chunk(endpoint, "tok"))
            for gap in script.gaps:
                self.clock.advance(gap)
                yield sse(chunk(endpoint, "tok"))
            if script.send_usage:
                yield sse({"choices": [], "usage": usage(script.prompt_tokens, reported)})
            yield sse("[DONE]")

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())


@dataclass
class Behaviour:
    """What the loopback fake server does; tests change it between runs."""

    statuses: list[int] = field(default_factory=lambda: [200])
    tokens: int = 4
    seen: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)


def _app(behaviour: Behaviour) -> Starlette:
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def generate(request: Request) -> Response:
        body = await request.json()
        index = len(behaviour.seen)
        behaviour.seen.append(body)
        behaviour.auth.append(request.headers.get("authorization"))
        status = behaviour.statuses[index % len(behaviour.statuses)]
        if status != 200:
            return JSONResponse({"error": {"message": f"fake {status}"}}, status_code=status)
        endpoint = endpoint_of(request.url.path)
        if endpoint == "embeddings":
            return JSONResponse({"data": [{"embedding": [0.0, 1.0]}], "usage": usage(5, 0)})
        if not body.get("stream"):
            text = " ".join(["tok"] * behaviour.tokens)
            choice = {"message": {"content": text}} if endpoint == "chat" else {"text": text}
            return JSONResponse({"choices": [choice], "usage": usage(5, behaviour.tokens)})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            for _ in range(behaviour.tokens):
                yield sse(chunk(endpoint, "tok"))
            if include_usage:
                yield sse({"choices": [], "usage": usage(5, behaviour.tokens)})
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", generate, methods=["POST"]),
            Route("/v1/completions", generate, methods=["POST"]),
            Route("/v1/embeddings", generate, methods=["POST"]),
        ]
    )


class FakeServer:
    """The fake app on a loopback port, served by uvicorn in a daemon thread."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        # Bound and listening before uvicorn starts: connections made before it is ready wait
        # in the backlog instead of being refused, so no readiness polling is needed.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            _app(self.behaviour),
            lifespan="off",
            log_level="error",
            access_log=False,
            http="h11",
            ws="none",
            loop="asyncio",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL, without ``/v1``."""
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> Behaviour:
        """Forget earlier requests and restore the default behaviour."""
        fresh = Behaviour()
        for name in ("statuses", "tokens", "seen", "auth"):
            setattr(self.behaviour, name, getattr(fresh, name))
        return self.behaviour

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def refused_url() -> str:
    """A loopback URL where nothing listens (the port was just released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def serve() -> Iterator[FakeServer]:
    """Fixture body: one fake server for a whole test module."""
    with FakeServer() as server:
        yield server
