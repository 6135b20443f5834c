"""What one benchmark run does: target, workload shape and load pattern."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from hfserve.errors import ConfigError

__all__ = ["DEFAULT_REQUESTS", "BenchConfig", "Endpoint"]

# Used when neither --requests nor --duration is given: enough samples for a p99 to mean
# something, few enough to finish in seconds against a fast server.
DEFAULT_REQUESTS = 100


class Endpoint(StrEnum):
    """The OpenAI-compatible route a benchmark drives."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"

    @property
    def path(self) -> str:
        """The route below ``/v1``."""
        return {
            Endpoint.CHAT: "/chat/completions",
            Endpoint.COMPLETIONS: "/completions",
            Endpoint.EMBEDDINGS: "/embeddings",
        }[self]

    @property
    def generates(self) -> bool:
        """Whether the endpoint produces output tokens (and so can stream)."""
        return self is not Endpoint.EMBEDDINGS


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """One benchmark run; validated on construction so a bad flag fails before any request.

    Load pattern: closed loop (``concurrency`` workers, each sending its next request as soon
    as the previous one finished) unless ``rate`` is set, in which case requests arrive as a
    Poisson process at ``rate`` per second (open loop) and ``concurrency``, when given, caps
    how many are in flight (like ``vllm bench serve --max-concurrency``). The run is bounded
    by ``requests`` or by ``duration`` seconds; with neither, ``DEFAULT_REQUESTS`` are sent.

    Raises:
        ConfigError: a value is out of range or the options contradict each other.
    """

    url: str
    model: str | None = None
    endpoint: Endpoint = Endpoint.CHAT
    # True when the user named no endpoint: the run may switch to the one that fits the model.
    auto_endpoint: bool = False
    api_key: str | None = None
    concurrency: int | None = None
    requests: int | None = None
    duration: float | None = None
    rate: float | None = None
    prompt_tokens: int = 32
    max_tokens: int = 128
    stream: bool | None = None
    warmup: int = 0
    seed: int = 0
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout: float = 300.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError(
                f"--url must be an http(s) URL such as http://127.0.0.1:8000, got {self.url!r}"
            )
        if self.requests is not None and self.duration is not None:
            raise ConfigError("give --requests or --duration, not both")
        if self.requests is not None and self.requests < 1:
            raise ConfigError("--requests must be at least 1")
        if self.duration is not None and not (self.duration > 0 and math.isfinite(self.duration)):
            raise ConfigError("--duration must be a positive number of seconds")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError("--rate must be a positive number of requests per second")
        if self.prompt_tokens < 1:
            raise ConfigError("--prompt-tokens must be at least 1")
        if self.max_tokens < 1:
            raise ConfigError("--max-tokens must be at least 1")
        if self.warmup < 0:
            raise ConfigError("--warmup cannot be negative")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ConfigError("--timeout must be a positive number of seconds")
        if self.stream and not self.endpoint.generates:
            raise ConfigError("--stream applies to chat and completions, not embeddings")

    @property
    def api_base(self) -> str:
        """The ``.../v1`` base URL, whether or not ``url`` already ended in ``/v1``."""
        base = self.url.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        return base + "/v1"

    @property
    def endpoint_url(self) -> str:
        """The full URL requests are posted to."""
        return self.api_base + self.endpoint.path

    @property
    def streaming(self) -> bool:
        """Whether requests stream: the flag when given, else on for endpoints that generate."""
        return self.endpoint.generates if self.stream is None else self.stream

    @property
    def open_loop(self) -> bool:
        """Whether arrivals follow a Poisson process (``rate`` set) instead of a closed loop."""
        return self.rate is not None

    @property
    def total_requests(self) -> int | None:
        """How many measured requests to send; ``None`` when the run is bounded by duration."""
        if self.duration is not None:
            return None
        return self.requests if self.requests is not None else DEFAULT_REQUESTS

    @property
    def workers(self) -> int:
        """Closed-loop worker count (``concurrency``, default 1)."""
        return self.concurrency if self.concurrency is not None else 1

    def to_dict(self) -> dict[str, Any]:
        """The run's settings as JSON-ready data; the API key is never included."""
        return {
            "url": self.url,
            "model": self.model,
            "endpoint": self.endpoint.value,
            "concurrency": self.concurrency,
            "requests": self.total_requests,
            "duration": self.duration,
            "rate": self.rate,
            "prompt_tokens": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "stream": self.streaming,
            "warmup": self.warmup,
            "seed": self.seed,
            "extra_body": self.extra_body,
            "timeout": self.timeout,
        }
