"""The structured-output and tool fields of a request, reduced to one OutputRequest."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hfserve.errors import InvalidRequestError
from hfserve.server.schemas import ChatCompletionRequest, CompletionRequest, parse_body

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
PARAMS = {"type": "object", "properties": {"a": {"type": "boolean"}}}
TOOLS = [
    {"type": "function", "function": {"name": "get", "parameters": PARAMS}},
    {"type": "function", "function": {"name": "noop", "description": "nothing"}},
]


def chat(**fields: Any) -> ChatCompletionRequest:
    return parse_body(ChatCompletionRequest, BASE | fields)


def refused(param: str, **fields: Any) -> str:
    with pytest.raises(InvalidRequestError) as info:
        chat(**fields)
    assert info.value.param == param, info.value.message
    return info.value.message


def test_text_and_no_format_constrain_nothing() -> None:
    assert chat().output().schema is None
    assert chat(response_format={"type": "text"}).output().schema is None


def test_json_formats_become_schemas() -> None:
    assert chat(response_format={"type": "json_object"}).output().schema == {"type": "object"}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": PARAMS, "strict": True}}
    out = chat(response_format=fmt).output()
    assert out.schema == PARAMS and out.param == "response_format" and out.tool_mode is None
    no_schema = {"type": "json_schema", "json_schema": {"name": "x"}}
    assert chat(response_format=no_schema).output().schema == {"type": "object"}
    completion = parse_body(
        CompletionRequest, {"model": "m", "prompt": "p"} | {"response_format": fmt}
    )
    assert completion.output().schema == PARAMS


def test_json_schema_needs_its_object() -> None:
    refused("response_format.json_schema", response_format={"type": "json_schema"})


def test_auto_and_default_choice_parse_calls_from_text() -> None:
    for choice in (None, "auto"):
        out = chat(tools=TOOLS, tool_choice=choice).output()
        assert out.tool_mode == "auto" and out.schema is None
        assert out.tools is not None and [t["function"]["name"] for t in out.tools] == [
            "get",
            "noop",
        ]


def test_none_renders_tools_but_reads_no_calls() -> None:
    out = chat(tools=TOOLS, tool_choice="none", response_format={"type": "json_object"}).output()
    assert out.tool_mode is None and out.tools is not None and out.schema == {"type": "object"}


def test_required_forces_an_array_of_any_function_unless_parallel_is_off() -> None:
    out = chat(tools=TOOLS, tool_choice="required").output()
    assert out.tool_mode == "forced" and out.param == "tools"
    assert out.schema is not None and out.schema["type"] == "array"
    single = chat(tools=TOOLS, tool_choice="required", parallel_tool_calls=False).output()
    assert single.schema is not None and "anyOf" in single.schema


def test_a_named_function_forces_exactly_that_call() -> None:
    named = {"type": "function", "function": {"name": "get"}}
    out = chat(tools=TOOLS, tool_choice=named).output()
    assert out.schema is not None and out.schema["properties"]["name"] == {"const": "get"}
    assert out.schema["properties"]["arguments"] == PARAMS


def test_legacy_functions_are_aliases_answered_in_the_legacy_shape() -> None:
    functions = [t["function"] for t in TOOLS]
    auto = chat(functions=functions).output()
    assert auto.legacy and auto.tool_mode == "auto"
    named = chat(functions=functions, function_call={"name": "noop"}).output()
    assert named.legacy and named.tool_mode == "forced" and named.param == "functions"
    assert named.schema is not None and named.schema["properties"]["name"] == {"const": "noop"}
    assert chat(functions=functions, function_call="none").output().tool_mode is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": []}, "tools"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": TOOLS, "functions": [TOOLS[0]["function"]]}, "functions"),
        ({"tool_choice": "auto", "function_call": "auto"}, "function_call"),
        ({"function_call": {"name": "x"}}, "function_call"),
        ({"functions": [{"name": "bad name"}]}, "functions.0.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "a", "parameters": 3}}]},
            "tools.0.function.parameters",
        ),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_contradictions_are_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    refused(param, **fields)


def test_history_messages_reach_the_template_in_its_shape() -> None:
    body = chat(
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get", "arguments": '{"a": true}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get", "arguments": "not json"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "function_call": {"name": "noop", "arguments": "{}"}},
            {"role": "function", "name": "noop", "content": "done"},
        ]
    )
    rendered = [m.to_template() for m in body.messages]
    assert rendered[1]["content"] == ""
    assert rendered[1]["tool_calls"][0]["function"] == {"name": "get", "arguments": {"a": True}}
    assert rendered[1]["tool_calls"][1]["function"]["arguments"] == "not json"
    assert rendered[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert rendered[3]["tool_calls"][0]["function"] == {"name": "noop", "arguments": {}}
    assert rendered[4] == {"role": "tool", "content": "done", "name": "noop"}
    json.dumps(rendered)
