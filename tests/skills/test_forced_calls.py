"""Grammar-forced tool calls: their JSON schema and the streaming decoder."""

from __future__ import annotations

import json

import pytest

from hfserve.skills.generation.forced_calls import (
    CallDelta,
    ForcedCallDecoder,
    decode_forced_calls,
    forced_call_schema,
)
from hfserve.skills.generation.tool_parsers import ToolCall

PARAMS = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}


def test_one_named_function_is_one_object() -> None:
    schema = forced_call_schema([("get", PARAMS)], parallel=False)
    assert schema["properties"]["name"] == {"const": "get"}
    assert schema["properties"]["arguments"] == PARAMS
    assert schema["required"] == ["name", "arguments"]
    assert schema["additionalProperties"] is False


def test_several_functions_in_parallel_are_an_array_of_alternatives() -> None:
    schema = forced_call_schema([("get", PARAMS), ("noop", None)], parallel=True)
    assert schema["type"] == "array" and schema["minItems"] == 1
    alternatives = schema["items"]["anyOf"]
    assert [a["properties"]["name"]["const"] for a in alternatives] == ["get", "noop"]
    assert alternatives[1]["properties"]["arguments"] == {"type": "object", "properties": {}}


def _stream(text: str, step: int) -> tuple[list[CallDelta], ForcedCallDecoder]:
    decoder = ForcedCallDecoder()
    deltas: list[CallDelta] = []
    for i in range(0, len(text), step):
        deltas += decoder.feed(text[i : i + step])
    return deltas, decoder


def _assemble(deltas: list[CallDelta]) -> list[tuple[str, str]]:
    calls: dict[int, list[str]] = {}
    for d in deltas:
        if d.name is not None:
            assert d.index not in calls and d.arguments == ""
            calls[d.index] = [d.name, ""]
        else:
            calls[d.index][1] += d.arguments
    return [(name, arguments) for name, arguments in calls.values()]


TRICKY = {"s": 'a}"],{\\', "n": [1, {"x": [2]}], "e": {}}
ARRAY = (
    '[{"name":"get","arguments":' + json.dumps(TRICKY, separators=(",", ":")) + "},"
    '{"name":"noop","arguments":{}},{"name":"num","arguments":3}]'
)


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_streamed_pieces_assemble_to_the_calls(step: int) -> None:
    deltas, decoder = _stream(ARRAY, step)
    expected = [
        ("get", json.dumps(TRICKY, separators=(",", ":"))),
        ("noop", "{}"),
        ("num", "3"),
    ]
    assert _assemble(deltas) == expected
    assert [(c.name, c.arguments) for c in decoder.calls()] == expected
    assert not decoder.malformed


def test_the_name_comes_before_any_argument() -> None:
    decoder = ForcedCallDecoder()
    assert decoder.feed('{"name":"ge') == []
    assert decoder.feed('t","argu') == []
    assert decoder.feed('ments":{"a"') == [
        CallDelta(0, name="get"),
        CallDelta(0, arguments='{"a"'),
    ]
    assert decoder.calls() == []
    assert decoder.feed(":true}}") == [CallDelta(0, arguments=":true}")]
    assert decoder.calls() == [ToolCall("get", '{"a":true}')]


def test_a_single_call_decodes_and_truncation_or_junk_does_not() -> None:
    assert decode_forced_calls('{"name":"get","arguments":{"a":true}}') == [
        ToolCall("get", '{"a":true}')
    ]
    assert decode_forced_calls('{"name":"get","arguments":{"a":tr') is None
    assert decode_forced_calls("[]") is None


def test_calls_skip_arguments_that_are_not_json() -> None:
    decoder = ForcedCallDecoder()
    decoder.feed('[{"name":"a","arguments":tru},{"name":"b","arguments":1}')
    assert decoder.calls() == [ToolCall("b", "1")]
    assert decoder.feed("") == []


@pytest.mark.parametrize(
    "text",
    [
        '{"nam":1}',
        'x{"name":"a"}',
        '{"name":"a","args":{}}',
        '{"name":"a","argumentz":{}}',
        '{"name":"a","arguments":{}]',
        '{"name":"a","arguments":1,"b":2}',
    ],
)
def test_malformed_text_stops_the_decoder(text: str) -> None:
    decoder = ForcedCallDecoder()
    decoder.feed(text)
    assert decoder.malformed
    assert decoder.feed("more") == []


def test_local_refs_of_parameters_still_point_at_their_definitions() -> None:
    params = {
        "$defs": {"Unit": {"enum": ["c", "f"]}},
        "type": "object",
        "properties": {"unit": {"$ref": "#/$defs/Unit"}, "self": {"$ref": "#"}},
        "x": [{"$ref": "#/$defs/Unit"}, 1],
    }
    single = forced_call_schema([("get", params)], parallel=False)
    args = single["properties"]["arguments"]
    assert args["properties"]["unit"]["$ref"] == "#/properties/arguments/$defs/Unit"
    assert args["properties"]["self"]["$ref"] == "#/properties/arguments"
    assert args["x"] == [{"$ref": "#/properties/arguments/$defs/Unit"}, 1]
    both = forced_call_schema([("get", params), ("put", params)], parallel=True)
    second = both["items"]["anyOf"][1]["properties"]["arguments"]
    assert second["properties"]["unit"]["$ref"] == "#/items/anyOf/1/properties/arguments/$defs/Unit"
    assert params["properties"]["unit"]["$ref"] == "#/$defs/Unit"
