"""BenchConfig validation and URL handling; deterministic workloads."""

from __future__ import annotations

from typing import Any

import pytest

from hfserve.bench.config import DEFAULT_REQUESTS, BenchConfig, Endpoint
from hfserve.bench.workload import Workload, build_prompt
from hfserve.errors import ConfigError

URL = "http://127.0.0.1:8000"


@pytest.mark.parametrize("url", [URL, URL + "/", URL + "/v1", URL + "/v1/"])
def test_api_base_accepts_url_with_or_without_v1(url: str) -> None:
    config = BenchConfig(url=url)
    assert config.api_base == URL + "/v1"
    assert config.endpoint_url == URL + "/v1/chat/completions"


def test_endpoint_paths_and_streaming_defaults() -> None:
    assert BenchConfig(url=URL, endpoint=Endpoint.COMPLETIONS).endpoint_url.endswith(
        "/v1/completions"
    )
    embeddings = BenchConfig(url=URL, endpoint=Endpoint.EMBEDDINGS)
    assert embeddings.endpoint_url.endswith("/v1/embeddings")
    assert embeddings.streaming is False
    assert BenchConfig(url=URL).streaming is True
    assert BenchConfig(url=URL, stream=False).streaming is False


def test_bounds_and_load_pattern() -> None:
    default = BenchConfig(url=URL)
    assert (default.total_requests, default.workers, default.open_loop) == (
        DEFAULT_REQUESTS,
        1,
        False,
    )
    timed = BenchConfig(url=URL, duration=2.5, rate=4.0, concurrency=3)
    assert (timed.total_requests, timed.open_loop, timed.workers) == (None, True, 3)
    assert BenchConfig(url=URL, requests=7).total_requests == 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "localhost:8000"}, "http"),
        ({"url": "ftp://host"}, "http"),
        ({"requests": 5, "duration": 1.0}, "not both"),
        ({"requests": 0}, "--requests"),
        ({"duration": 0.0}, "--duration"),
        ({"duration": float("inf")}, "--duration"),
        ({"concurrency": 0}, "--concurrency"),
        ({"rate": 0.0}, "--rate"),
        ({"rate": float("nan")}, "--rate"),
        ({"prompt_tokens": 0}, "--prompt-tokens"),
        ({"max_tokens": 0}, "--max-tokens"),
        ({"warmup": -1}, "--warmup"),
        ({"timeout": 0.0}, "--timeout"),
        ({"endpoint": Endpoint.EMBEDDINGS, "stream": True}, "--stream"),
    ],
)
def test_invalid_settings_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("url", URL)
    with pytest.raises(ConfigError, match=message):
        BenchConfig(**kwargs)


def test_to_dict_never_contains_the_api_key() -> None:
    data = BenchConfig(url=URL, api_key="sk-secret", extra_body={"a": 1}).to_dict()
    assert "sk-secret" not in repr(data)
    assert data["endpoint"] == "chat" and data["stream"] is True and data["extra_body"] == {"a": 1}


def test_prompts_are_deterministic_distinct_and_sized() -> None:
    first = build_prompt(seed=1, index=0, words=40)
    assert first == build_prompt(seed=1, index=0, words=40)
    assert len(first.split()) == 40
    assert first != build_prompt(seed=1, index=1, words=40)
    assert first != build_prompt(seed=2, index=0, words=40)


def test_chat_body_streams_with_usage_and_extra_body_wins() -> None:
    config = BenchConfig(
        url=URL, max_tokens=16, prompt_tokens=5, extra_body={"max_tokens": 8, "ignore_eos": True}
    )
    prepared = Workload(config, "m").request(3)
    body = prepared.body
    assert body["model"] == "m"
    assert body["messages"] == [{"role": "user", "content": build_prompt(0, 3, 5)}]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["ignore_eos"]) == (8, True)
    assert prepared.prompt_tokens == 5


def test_completion_and_embedding_bodies() -> None:
    completion = Workload(BenchConfig(url=URL, endpoint=Endpoint.COMPLETIONS, stream=False), None)
    body = completion.request(0).body
    assert "model" not in body and "stream_options" not in body
    assert body["stream"] is False and isinstance(body["prompt"], str)
    embedding = Workload(BenchConfig(url=URL, endpoint=Endpoint.EMBEDDINGS), "e").request(0).body
    assert set(embedding) == {"model", "input"}
