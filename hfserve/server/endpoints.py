"""The one route table: every endpoint of the server, declared once.

The app (its Starlette routes), the middleware (auth, drain, rate limit, metric label, access
log) and the OpenAPI document all read :data:`ENDPOINTS`; adding an endpoint is one line here.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import compile_path

from hfserve.server.routes.audio import transcriptions, translations
from hfserve.server.routes.encoders import classifications, embeddings
from hfserve.server.routes.generation import chat_completions, completions
from hfserve.server.routes.ops import get_model, health, list_models, metrics, ready
from hfserve.server.routes.rerank import rerank, score
from hfserve.server.schemas import (
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
    EmbeddingRequest,
    RerankRequest,
    ScoreRequest,
    TranscriptionRequest,
)

__all__ = ["ENDPOINTS", "OTHER_LABEL", "Endpoint", "EndpointIndex", "OpenApi"]

Handler = Callable[[Request], Awaitable[Response]]
OTHER_LABEL = "other"
# ``{model:path}`` -> ``{model}`` in metric labels.
_PARAM_TYPE = re.compile(r":[a-z]+}")


@dataclass(frozen=True)
class OpenApi:
    """An endpoint's OpenAPI operation: its id, summary, request body and responses."""

    operation_id: str
    summary: str
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    media: str = "application/json"
    streams: bool = False
    # ``multipart/form-data`` instead of JSON for the request body (file uploads).
    multipart: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One endpoint: where it is, what runs it, and how the middleware treats it.

    ``public``: no API key needed. ``public_setting``: the name of a boolean ``Settings`` field
    that makes the endpoint public when true (``/metrics`` with ``public_metrics``).
    ``drain_exempt``: still served while the server drains (probes and scrapes).
    ``access_log``: written to the access log (probes and scrapes would drown it).
    ``label``: the metric label; defaults to the path with ``{param:type}`` as ``{param}``.
    ``body_limit_setting``: the name of an int ``Settings`` field that replaces
    ``max_body_bytes`` for this endpoint (audio uploads are larger than JSON bodies).
    """

    path: str
    method: str
    handler: Handler
    openapi: OpenApi | None
    public: bool = False
    public_setting: str | None = None
    drain_exempt: bool = False
    access_log: bool = True
    label: str = ""
    body_limit_setting: str | None = None

    @property
    def metric_label(self) -> str:
        """The bounded-cardinality label of this endpoint in metrics and logs."""
        if self.label:
            return self.label
        return _PARAM_TYPE.sub("}", self.path) if "{" in self.path else self.path

    @property
    def rate_limited(self) -> bool:
        """API endpoints (``/v1/...``) spend the caller's rate-limit budget."""
        return self.path.startswith("/v1/")


async def openapi_document(request: Request) -> Response:
    """The OpenAPI document built at start-up (``app.state.openapi``)."""
    return JSONResponse(request.app.state.openapi)


_API_ERRORS = (400, 401, 404, 413, 429, 500, 503)

# The order here is the OpenAPI document's; create_app tries the GET routes first (see there).
# One endpoint a line (formatter off so each stays one line).
# fmt: off
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/v1/chat/completions", "POST", chat_completions, OpenApi("createChatCompletion", "Create a chat completion (SSE when stream is true).", ChatCompletionRequest, _API_ERRORS, streams=True)),
    Endpoint("/v1/embeddings", "POST", embeddings, OpenApi("createEmbedding", "Create embeddings.", EmbeddingRequest, _API_ERRORS)),
    Endpoint("/v1/completions", "POST", completions, OpenApi("createCompletion", "Create a text completion.", CompletionRequest, _API_ERRORS, streams=True)),
    Endpoint("/v1/models", "GET", list_models, OpenApi("listModels", "List models.", errors=(401,))),
    Endpoint("/v1/classifications", "POST", classifications, OpenApi("createClassification", "Classify text (hfserve extension).", ClassificationRequest, _API_ERRORS)),
    Endpoint("/v1/rerank", "POST", rerank, OpenApi("createRerank", "Rank documents by relevance to a query (cross-encoder).", RerankRequest, _API_ERRORS)),
    Endpoint("/v1/score", "POST", score, OpenApi("createScore", "Score text pairs with a cross-encoder (as vLLM).", ScoreRequest, _API_ERRORS)),
    Endpoint("/v1/audio/transcriptions", "POST", transcriptions, OpenApi("createTranscription", "Transcribe audio (json, text, srt, vtt, verbose_json).", TranscriptionRequest, _API_ERRORS, multipart=True), body_limit_setting="max_audio_bytes"),
    Endpoint("/v1/audio/translations", "POST", translations, OpenApi("createTranslation", "Translate speech into English text.", TranscriptionRequest, _API_ERRORS, multipart=True), body_limit_setting="max_audio_bytes"),
    Endpoint("/v1/models/{model:path}", "GET", get_model, OpenApi("retrieveModel", "Retrieve a model.", errors=(401, 404))),
    Endpoint("/health", "GET", health, OpenApi("health", "Liveness."), public=True, drain_exempt=True, access_log=False),
    Endpoint("/ready", "GET", ready, OpenApi("ready", "Readiness.", errors=(503,)), public=True, drain_exempt=True, access_log=False),
    Endpoint("/metrics", "GET", metrics, OpenApi("metrics", "Prometheus metrics.", errors=(401,), media="text/plain"), public_setting="public_metrics", drain_exempt=True, access_log=False),
    Endpoint("/openapi.json", "GET", openapi_document, None, public=True),
)
# fmt: on


class EndpointIndex:
    """Finds the endpoint of a request path quickly: exact paths by dict, templated by regex."""

    def __init__(self, endpoints: tuple[Endpoint, ...] = ENDPOINTS) -> None:
        self._exact: dict[str, Endpoint] = {}
        self._templated: list[tuple[re.Pattern[str], Endpoint]] = []
        for endpoint in endpoints:
            if "{" in endpoint.path:
                self._templated.append((compile_path(endpoint.path)[0], endpoint))
            else:
                self._exact.setdefault(endpoint.path, endpoint)

    def find(self, path: str) -> Endpoint | None:
        """The endpoint serving ``path`` (any method), or None for an unknown path."""
        endpoint = self._exact.get(path)
        if endpoint is not None:
            return endpoint
        for pattern, candidate in self._templated:
            if pattern.match(path):
                return candidate
        return None

    def label(self, path: str) -> str:
        """The metric label of ``path``: its endpoint's, or ``other`` for an unknown path."""
        endpoint = self.find(path)
        return endpoint.metric_label if endpoint is not None else OTHER_LABEL
