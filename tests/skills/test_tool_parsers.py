"""Tool parsers: each model family's call format, streaming hold-back and the plugin point."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hfserve.errors import InvalidRequestError
from hfserve.skills.generation import tool_parsers
from hfserve.skills.generation.tool_parsers import (
    HermesToolParser,
    Llama3JsonToolParser,
    MistralToolParser,
    ParsedOutput,
    ToolCall,
    detect_tool_format,
    get_tool_parser,
)


def args(call: ToolCall) -> Any:
    return json.loads(call.arguments)


def test_hermes_parses_blocks_after_text() -> None:
    text = 'Let me check. <tool_call>{"name": "get", "arguments": {"city": "Oslo"}}</tool_call>\n'
    text += '<tool_call>{"name": "put", "arguments": {}}</tool_call>'
    parsed = HermesToolParser().parse(text)
    assert parsed.content == "Let me check. "
    assert [c.name for c in parsed.calls] == ["get", "put"]
    assert args(parsed.calls[0]) == {"city": "Oslo"} and args(parsed.calls[1]) == {}


def test_hermes_accepts_an_unclosed_last_block_and_string_arguments() -> None:
    text = '<tool_call>{"name": "get", "arguments": "{\\"a\\": 1}"}'
    parsed = HermesToolParser().parse(text)
    assert parsed.content is None and args(parsed.calls[0]) == {"a": 1}


@pytest.mark.parametrize(
    "text",
    [
        "no calls here",
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"name": "x", "arguments": "{bad"}</tool_call>',
        "<tool_call>[1, 2]</tool_call>",
    ],
)
def test_hermes_leaves_anything_else_as_content(text: str) -> None:
    assert HermesToolParser().parse(text) == ParsedOutput(text)


def test_hermes_holds_back_a_possible_marker() -> None:
    parser = HermesToolParser()
    assert parser.hold_from("hello <tool") == len("hello ")
    assert parser.hold_from("hello <tool_call>{") == len("hello ")
    assert parser.hold_from("hello <b>") == len("hello <b>")
    assert parser.hold_from("") == 0


def test_llama3_json_parses_whole_reply_calls() -> None:
    parser = Llama3JsonToolParser()
    one = parser.parse('<|python_tag|>{"name": "get", "parameters": {"q": "x"}}')
    assert one.content is None and one.calls[0].name == "get" and args(one.calls[0]) == {"q": "x"}
    two = parser.parse(' {"name": "a", "parameters": {}}; {"name": "b", "arguments": {"n": 2}}')
    assert [c.name for c in two.calls] == ["a", "b"] and args(two.calls[1]) == {"n": 2}


@pytest.mark.parametrize("text", ["hello", '{"name": 3}', '{"name": "a"} trailing', "{broken"])
def test_llama3_json_leaves_other_replies_as_content(text: str) -> None:
    assert Llama3JsonToolParser().parse(text) == ParsedOutput(text)


def test_llama3_json_holds_while_the_reply_could_be_a_call() -> None:
    parser = Llama3JsonToolParser()
    assert parser.hold_from("  ") == 0
    assert parser.hold_from(' {"na') == 0
    assert parser.hold_from("<|python") == 0
    assert parser.hold_from("Sure, here") == len("Sure, here")


def test_mistral_parses_marker_and_bare_arrays() -> None:
    parser = MistralToolParser()
    marked = parser.parse('ok [TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}]')
    assert marked.content == "ok " and marked.calls == [ToolCall("a", '{"x": 1}')]
    bare = parser.parse('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]')
    assert bare.content is None and [c.name for c in bare.calls] == ["a", "b"]
    single = parser.parse('[TOOL_CALLS]{"name": "a", "arguments": {}}')
    assert [c.name for c in single.calls] == ["a"]


@pytest.mark.parametrize("text", ["plain", "[TOOL_CALLS]oops", "[1, 2]", "[]"])
def test_mistral_leaves_other_replies_as_content(text: str) -> None:
    assert MistralToolParser().parse(text) == ParsedOutput(text)


def test_mistral_holds_back_marker_and_arrays() -> None:
    parser = MistralToolParser()
    assert parser.hold_from("[{") == 0 and parser.hold_from(" ") == 0
    assert parser.hold_from("text [TOOL_") == len("text ")
    assert parser.hold_from("text") == len("text")


@pytest.mark.parametrize(
    ("template", "model_type", "expected"),
    [
        ("{{ '<tool_call>' }}", None, "hermes"),
        ("[TOOL_CALLS] {{ tools }}", "llama", "mistral"),
        ("<|python_tag|>", None, "llama3_json"),
        ("{% if message.role == 'ipython' %}", None, "llama3_json"),
        (None, "qwen2", "hermes"),
        ("plain", "mistral", "mistral"),
        (None, "mixtral", "mistral"),
        (None, "llama", "llama3_json"),
        (None, "gpt2", "hermes"),
        (None, None, "hermes"),
    ],
)
def test_detect_tool_format(template: str | None, model_type: str | None, expected: str) -> None:
    assert detect_tool_format(template, model_type) == expected


class _EchoParser:
    """A plugin parser: the whole reply is one call named after it."""

    name = "echo"

    def parse(self, text: str) -> ParsedOutput:
        return ParsedOutput(None, [ToolCall(text, "{}")])

    def hold_from(self, text: str) -> int:
        return 0


class _EntryPoint:
    def __init__(self, name: str, obj: Any, fail: bool = False) -> None:
        self.name, self._obj, self._fail = name, obj, fail

    def load(self) -> Any:
        if self._fail:
            raise ImportError("broken plugin")
        return self._obj


def test_plugins_come_from_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_entry_points(group: str) -> list[_EntryPoint]:
        seen.append(group)
        return [
            _EntryPoint("echo", _EchoParser),
            _EntryPoint("instance", _EchoParser()),
            _EntryPoint("broken", None, fail=True),
            _EntryPoint("junk", object()),
        ]

    monkeypatch.setattr(tool_parsers, "entry_points", fake_entry_points)
    assert get_tool_parser("hermes").name == "hermes"
    assert get_tool_parser("echo").parse("f").calls == [ToolCall("f", "{}")]
    assert get_tool_parser("instance").name == "echo"
    assert seen == ["hfserve.tool_parsers", "hfserve.tool_parsers"]
    for name in ("broken", "junk", "missing"):
        with pytest.raises(InvalidRequestError) as info:
            get_tool_parser(name)
        assert info.value.param == "tools"
