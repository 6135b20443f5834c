"""Every OpenAI field, sent through the official SDK to a real server, does what the table says."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from hfserve.server.openai_fields import OPENAI_FIELDS
from tests.integration.conftest import StartServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOOL = {"name": "f", "parameters": {"type": "object", "properties": {}}}
# One value per field that asks for what the field does (not a neutral value).
SAMPLES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "audio": {"voice": "alloy", "format": "wav"},
        "frequency_penalty": 0.5,
        "function_call": "none",
        "functions": [TOOL],
        "logit_bias": {"1": 5},
        "logprobs": True,
        "max_completion_tokens": 2,
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"k": "v"},
        "modalities": ["text", "audio"],
        "model": "tiny-llama",
        "moderation": {"input": {"mode": "block"}},
        "n": 2,
        "parallel_tool_calls": False,
        "prediction": {"type": "content", "content": "hello"},
        "presence_penalty": 0.5,
        "prompt_cache_key": "k",
        "prompt_cache_options": {"ttl": "1h"},
        "prompt_cache_retention": "24h",
        "reasoning_effort": "low",
        "response_format": {"type": "json_object"},
        "safety_identifier": "u1",
        "seed": 1,
        "service_tier": "auto",
        "stop": ["\n"],
        "store": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "tool_choice": "none",
        "tools": [{"type": "function", "function": TOOL}],
        "top_logprobs": 2,
        "top_p": 0.9,
        "user": "u",
        "verbosity": "low",
        "web_search_options": {},
    },
    "/v1/completions": {
        "best_of": 2,
        "echo": True,
        "frequency_penalty": 0.5,
        "logit_bias": {"1": 5},
        "logprobs": 2,
        "max_tokens": 2,
        "model": "tiny-llama",
        "n": 2,
        "presence_penalty": 0.5,
        "prompt": "hi",
        "seed": 1,
        "stop": ["\n"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "suffix": "x",
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "u",
    },
    "/v1/embeddings": {
        "dimensions": 8,
        "encoding_format": "base64",
        "input": "hi",
        "model": "tiny-bert",
        "user": "u",
    },
}
BASE: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
    "/v1/completions": {"model": "tiny-llama", "prompt": "hi", "max_tokens": 2},
    "/v1/embeddings": {"model": "tiny-bert", "input": "hi"},
}


def _send(client: openai.OpenAI, endpoint: str, kwargs: dict[str, Any]) -> None:
    """Send the request with the SDK's own keyword arguments, reading a stream to its end."""
    if endpoint == "/v1/embeddings":
        client.embeddings.create(**kwargs)
        return
    if kwargs.get("stream_options") is not None:
        kwargs["stream"] = True
    create = client.chat.completions.create if "messages" in kwargs else client.completions.create
    result = create(**kwargs)
    if kwargs.get("stream"):
        for _ in result:
            pass


def _outcome(client: openai.OpenAI, endpoint: str, field: str) -> str | None:
    """``None`` when the field behaves as its table entry says, else what went wrong."""
    status = OPENAI_FIELDS[endpoint][field]
    kwargs = BASE[endpoint] | {field: SAMPLES[endpoint][field]}
    if field == "top_logprobs":
        kwargs["logprobs"] = True
    try:
        _send(client, endpoint, kwargs)
    except openai.BadRequestError as exc:
        param = (exc.body or {}).get("param") if isinstance(exc.body, dict) else None
        if status == "refused":
            return None if param == field else f"400 names {param!r}, not {field!r}"
        if status == "implemented" and param == field:
            # Implemented, but not by every model (tools need a chat template that renders
            # them): refused, never ignored, and named.
            return None
        return f"{status}, but refused: {exc.message}"
    if status == "refused":
        return "refused, but the server accepted it"
    return None


def test_every_sdk_field_against_a_real_server(start_server: StartServer) -> None:
    server = start_server("--no-auth")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    wrong = {
        f"{endpoint} {field}": problem
        for endpoint, table in OPENAI_FIELDS.items()
        for field in sorted(table)
        if (problem := _outcome(client, endpoint, field)) is not None
    }
    assert wrong == {}
    assert set(SAMPLES) == set(OPENAI_FIELDS)
    for endpoint, table in OPENAI_FIELDS.items():
        assert set(SAMPLES[endpoint]) == set(table), f"a sample value per field of {endpoint}"
