"""Structured output and tool calls through the real app (TestClient) on the tiny models.

tiny-llama is served with the Hermes-style tool template (``chat_templates``); tiny-gpt2 keeps
the fixtures' plain template, which ignores tools. Random weights only produce valid JSON when
decoding is really constrained, so every schema here is finite (enums, booleans).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from starlette.testclient import TestClient

from hfserve.server.app import create_app
from hfserve.settings import Settings
from tests.fixtures.tiny_models import HERMES_TOOLS_TEMPLATE, TinyModels
from tests.server.conftest import wait_ready

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]}},
    "required": ["ok", "color"],
    "additionalProperties": False,
}
UNIT = {
    "type": "object",
    "properties": {"unit": {"enum": ["c", "f"]}, "now": {"type": "boolean"}},
    "required": ["unit", "now"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": UNIT}},
    {
        "type": "function",
        "function": {
            "name": "noop",
            "parameters": {"type": "object", "additionalProperties": False},
        },
    },
]
CHAT: dict[str, Any] = {
    "model": "tiny-llama",
    "messages": [{"role": "user", "content": "weather?"}],
    "max_tokens": 60,
    "temperature": 0,
}


def json_schema(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Iterator[TestClient]:
    settings = Settings.load(
        None,
        models=[f"tiny-llama={tiny_models.llama}", f"tiny-gpt2={tiny_models.gpt2}"],
        chat_templates=[f"tiny-llama={HERMES_TOOLS_TEMPLATE}"],
        keys_file=tmp_path_factory.mktemp("keys") / "keys.json",
        device="cpu",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def post(api: TestClient, payload: dict[str, Any], path: str = "/v1/chat/completions") -> Any:
    response = api.post(path, json=payload)
    assert response.status_code == 200, response.text
    return response


def events(api: TestClient, payload: dict[str, Any]) -> list[dict[str, Any]]:
    response = post(api, payload | {"stream": True})
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_json_schema_output_validates_and_streams_the_same(api: TestClient) -> None:
    whole = post(api, CHAT | {"response_format": json_schema(SCHEMA)}).json()["choices"][0]
    text = whole["message"]["content"]
    jsonschema_rs.validate(SCHEMA, json.loads(text))
    assert " " not in text and whole["finish_reason"] == "stop"
    chunks = events(api, CHAT | {"response_format": json_schema(SCHEMA)})
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_json_object_and_completions_are_constrained_too(api: TestClient) -> None:
    finite = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
    finite["additionalProperties"] = False
    completion = post(
        api,
        {"model": "tiny-llama", "prompt": "x", "max_tokens": 30, "temperature": 0}
        | {"response_format": json_schema(finite)},
        "/v1/completions",
    ).json()
    assert json.loads(completion["choices"][0]["text"]) in ({"a": True}, {"a": False})
    reply = post(api, CHAT | {"response_format": {"type": "json_object"}, "max_tokens": 3})
    text = reply.json()["choices"][0]["message"]["content"]
    assert text.startswith("{")


def test_another_schema_is_another_cache_entry(api: TestClient) -> None:
    other = dict(SCHEMA, properties={"ok": {"type": "boolean"}, "color": {"enum": ["pink"]}})
    first = post(api, CHAT | {"max_tokens": 40, "response_format": json_schema(SCHEMA)})
    again = post(api, CHAT | {"max_tokens": 40, "response_format": json_schema(SCHEMA)})
    changed = post(api, CHAT | {"max_tokens": 40, "response_format": json_schema(other)})
    assert first.headers["x-cache"] == "miss" and again.headers["x-cache"] == "hit"
    assert changed.headers["x-cache"] == "miss"
    assert json.loads(changed.json()["choices"][0]["message"]["content"])["color"] == "pink"
    tools = post(api, CHAT | {"tools": TOOLS, "tool_choice": "required", "max_tokens": 40})
    assert tools.headers["x-cache"] == "miss"


def _check_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    assert message["content"] is None and message["tool_calls"]
    for call in message["tool_calls"]:
        assert call["id"].startswith("call_") and call["type"] == "function"
        jsonschema_rs.validate(
            schemas[call["function"]["name"]], json.loads(call["function"]["arguments"])
        )
    return [c["function"] for c in message["tool_calls"]]


def _assemble_stream(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    calls: dict[int, dict[str, str]] = {}
    finish = ""
    for chunk in chunks:
        choice = chunk["choices"][0]
        finish = choice["finish_reason"] or finish
        for call in choice["delta"].get("tool_calls") or ():
            if "id" in call:
                calls[call["index"]] = {"name": call["function"]["name"], "arguments": ""}
            calls[call["index"]]["arguments"] += call["function"]["arguments"]
    return [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize(
    "choice",
    [
        {"tool_choice": "required", "parallel_tool_calls": False},
        # Parallel calls: greedy decoding of random weights keeps adding calls until max_tokens,
        # while this seed closes the array after two (same seed, same tokens).
        {"tool_choice": "required", "temperature": 1, "seed": 1},
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    ],
)
def test_forced_calls_validate_streamed_and_not(api: TestClient, choice: dict[str, Any]) -> None:
    payload = CHAT | {"tools": TOOLS, "max_tokens": 120} | choice
    whole = post(api, payload).json()["choices"][0]
    assert whole["finish_reason"] == "tool_calls"
    calls = _check_calls(whole["message"])
    if "function" in choice["tool_choice"] or "parallel_tool_calls" in choice:
        assert len(calls) == 1
    if "function" in choice["tool_choice"]:
        assert calls[0]["name"] == "get_weather"
    if "seed" in choice:
        assert len(calls) == 2
    streamed, finish = _assemble_stream(events(api, payload))
    assert finish == "tool_calls" and streamed == calls


def test_a_tool_round_trip_history_is_accepted(api: TestClient) -> None:
    history = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"unit":"c","now":true}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    reply = post(api, CHAT | {"messages": history, "tools": TOOLS, "max_tokens": 4}).json()
    plain = post(api, CHAT | {"max_tokens": 4}).json()
    assert reply["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    assert reply["choices"][0]["finish_reason"] in {"stop", "length", "tool_calls"}


def test_legacy_functions_get_function_call(api: TestClient) -> None:
    payload = CHAT | {
        "functions": [t["function"] for t in TOOLS],
        "function_call": {"name": "get_weather"},
    }
    whole = post(api, payload).json()["choices"][0]
    assert whole["finish_reason"] == "function_call"
    call = whole["message"]["function_call"]
    assert call["name"] == "get_weather"
    jsonschema_rs.validate(UNIT, json.loads(call["arguments"]))


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (CHAT | {"response_format": json_schema({"type": "objectx"})}, "response_format"),
        (CHAT | {"response_format": json_schema({"$ref": "#/nowhere"})}, "response_format"),
        (
            CHAT
            | {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": 1}}}
                ]
            }
            | {"tool_choice": "required"},
            "tools",
        ),
        (CHAT | {"model": "tiny-gpt2", "tools": TOOLS}, "tools"),
        (
            {"model": "tiny-llama", "prompt": "x", "response_format": {"type": "json_schema"}},
            "response_format.json_schema",
        ),
    ],
)
def test_refused_schemas_and_templates_are_400(
    api: TestClient, payload: dict[str, Any], param: str
) -> None:
    path = "/v1/completions" if "prompt" in payload else "/v1/chat/completions"
    response = api.post(path, json=payload)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_logprobs_of_held_tool_call_text_still_stream(api: TestClient) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    payload = CHAT | {"tools": TOOLS, "tool_choice": named, "logprobs": True}
    whole = post(api, payload).json()
    chunks = events(api, payload | {"stream_options": {"include_usage": True}})
    streamed = [
        item
        for chunk in chunks
        if chunk["choices"] and chunk["choices"][0]["logprobs"]
        for item in chunk["choices"][0]["logprobs"]["content"]
    ]
    assert len(streamed) == chunks[-1]["usage"]["completion_tokens"]
    assert streamed == whole["choices"][0]["logprobs"]["content"]
