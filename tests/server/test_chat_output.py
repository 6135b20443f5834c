"""OpenAI message and streamed deltas for content, forced and parsed tool calls, legacy calls."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from hfserve.errors import InvalidRequestError
from hfserve.server.chat_output import OutputPlan, plan_output
from hfserve.server.structured import OutputRequest
from hfserve.skills.generation.tool_parsers import HermesToolParser, MistralToolParser

FORCED = OutputRequest(schema={"type": "array"}, param="tools", tool_mode="forced", tools=[])
AUTO = OutputRequest(tool_mode="auto", tools=[])
HERMES = HermesToolParser()


def assemble(plan: OutputPlan, pieces: list[str], reason: str) -> tuple[dict[str, Any], str | None]:
    """Stream ``pieces`` and fold the deltas the way the openai SDK does."""
    stream = plan.stream()
    deltas = [d for piece in pieces for d in stream.feed(piece)]
    last, finish = stream.finish(reason)
    message: dict[str, Any] = {"role": "assistant", "content": None}
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas + last:
        if "content" in delta:
            message["content"] = (message["content"] or "") + delta["content"]
        for call in delta.get("tool_calls", ()):
            slot = calls.setdefault(call["index"], {"function": {"arguments": ""}})
            if "id" in call:
                assert call["function"]["arguments"] == "" and "name" in call["function"]
                slot |= {"id": call["id"], "type": call["type"]}
                slot["function"]["name"] = call["function"]["name"]
            slot["function"]["arguments"] += call["function"]["arguments"]
        if "function_call" in delta:
            fc = message.setdefault("function_call", {"arguments": ""})
            fc["arguments"] += delta["function_call"]["arguments"]
            if "name" in delta["function_call"]:
                fc["name"] = delta["function_call"]["name"]
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, finish


def without_ids(message: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(message)
    if "tool_calls" in out:
        out["tool_calls"] = [{k: v for k, v in c.items() if k != "id"} for c in out["tool_calls"]]
    return out


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_plain_text_is_content() -> None:
    plan = OutputPlan(OutputRequest())
    assert plan.matcher() is None
    assert plan.message("hi", "length") == ({"role": "assistant", "content": "hi"}, "length")
    stream = plan.stream()
    assert stream.feed("hi") == [{"content": "hi"}] and stream.feed("") == []
    assert stream.finish("stop") == ([], "stop")


FORCED_TEXT = '[{"name":"get","arguments":{"a":true}},{"name":"noop","arguments":{}}]'


@pytest.mark.parametrize("size", [1, 3, 100])
def test_forced_calls_stream_the_same_calls_as_the_whole_reply(size: int) -> None:
    plan = OutputPlan(FORCED)
    whole, finish = plan.message(FORCED_TEXT, "stop")
    assert finish == "tool_calls" and whole["content"] is None
    assert [c["function"] for c in whole["tool_calls"]] == [
        {"name": "get", "arguments": '{"a":true}'},
        {"name": "noop", "arguments": "{}"},
    ]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in whole["tool_calls"])
    streamed, streamed_finish = assemble(plan, chunks(FORCED_TEXT, size), "stop")
    assert streamed_finish == "tool_calls"
    assert without_ids(streamed) == without_ids(whole)


def test_a_forced_call_cut_short_is_content_with_the_engine_reason() -> None:
    plan = OutputPlan(FORCED)
    assert plan.message('[{"na', "length") == (
        {"role": "assistant", "content": '[{"na'},
        "length",
    )
    assert assemble(plan, ['[{"na'], "length") == (
        {"role": "assistant", "content": '[{"na'},
        "length",
    )
    assert plan.stream().finish("length") == ([], "length")
    message, finish = assemble(plan, ['[{"name":"get","arguments":{"a":'], "length")
    assert finish == "length" and message["tool_calls"][0]["function"]["name"] == "get"


def test_auto_calls_are_parsed_and_text_before_them_streams_as_content() -> None:
    plan = OutputPlan(AUTO, parser=HERMES)
    text = 'Checking. <tool_call>{"name": "get", "arguments": {"a": 1}}</tool_call>'
    whole, finish = plan.message(text, "stop")
    assert finish == "tool_calls" and whole["content"] == "Checking. "
    assert whole["tool_calls"][0]["function"] == {"name": "get", "arguments": '{"a": 1}'}
    for size in (1, 4, 200):
        streamed, streamed_finish = assemble(plan, chunks(text, size), "stop")
        assert streamed_finish == "tool_calls" and without_ids(streamed) == without_ids(whole)


def test_auto_text_that_was_not_a_call_is_released_at_the_end() -> None:
    plan = OutputPlan(AUTO, parser=HERMES)
    text = "a <tool_call>not json"
    assert plan.message(text, "length") == ({"role": "assistant", "content": text}, "length")
    stream = plan.stream()
    assert stream.feed("a <tool") == [{"content": "a "}]
    assert stream.feed("_call>not json") == []
    assert stream.finish("length") == ([{"content": "<tool_call>not json"}], "length")
    plain = plan.stream()
    assert plain.feed("plain") == [{"content": "plain"}]
    assert plain.finish("stop") == ([], "stop")


def test_legacy_requests_get_function_call() -> None:
    plan = OutputPlan(OutputRequest(schema={}, param="functions", tool_mode="forced", legacy=True))
    text = '{"name":"get","arguments":{"a":false}}'
    whole, finish = plan.message(text, "stop")
    assert finish == "function_call" and "tool_calls" not in whole
    assert whole["function_call"] == {"name": "get", "arguments": '{"a":false}'}
    assert assemble(plan, chunks(text, 2), "stop") == (whole, "function_call")

    auto = OutputPlan(OutputRequest(tool_mode="auto", legacy=True), parser=HERMES)
    two = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>'
    message, reason = auto.message(two, "stop")
    assert reason == "function_call" and message["function_call"]["name"] == "a"
    assert assemble(auto, [two], "stop") == (message, "function_call")


class _Grammar:
    def __init__(self) -> None:
        self.made = 0

    def matcher(self) -> Any:
        self.made += 1
        return ("matcher", self.made)


class _Structured:
    """Just enough of a StructuredGenerationModel for plan_output."""

    info: Any = None
    model_id = device = dtype = "x"
    max_input_tokens = 10
    active_generations = 0
    tool_format = "hermes"

    def __init__(self) -> None:
        self.compiled: list[tuple[str, str]] = []

    def memory_bytes(self) -> int:
        return 0

    def count_tokens(self, text: str) -> int:
        return 0

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def render_chat(self, messages: Any, tools: Any = None) -> str:
        return ""

    def encode(self, text: str) -> list[int]:
        return []

    def generate(self, request: Any) -> Any:
        raise NotImplementedError

    async def compile_grammar(self, schema: Mapping[str, Any], *, param: str) -> _Grammar:
        self.compiled.append((json.dumps(schema), param))
        return _Grammar()


class _Plain(_Structured):
    compile_grammar = None  # type: ignore[assignment]


async def test_plan_output_compiles_schemas_and_picks_the_parser() -> None:
    model = _Structured()
    assert (await plan_output(OutputRequest(), model)).grammar is None
    plan = await plan_output(FORCED, model)
    assert model.compiled == [('{"type": "array"}', "tools")] and plan.parser is None
    assert plan.matcher() == ("matcher", 1) and plan.matcher() == ("matcher", 2)
    auto = await plan_output(AUTO, model)
    assert auto.grammar is None and auto.parser is not None and auto.parser.name == "hermes"


async def test_plan_output_refuses_models_without_grammars() -> None:
    assert (await plan_output(OutputRequest(), _Plain())).grammar is None
    with pytest.raises(InvalidRequestError) as info:
        await plan_output(OutputRequest(schema={}, param="response_format"), _Plain())
    assert info.value.param == "response_format"
    with pytest.raises(InvalidRequestError) as info:
        await plan_output(AUTO, _Plain())
    assert info.value.param == "tools"


def test_held_text_before_parsed_calls_is_sent_as_content_at_the_end() -> None:
    plan = OutputPlan(AUTO, parser=MistralToolParser())
    text = '[x] so [TOOL_CALLS][{"name": "a", "arguments": {}}]'
    streamed, finish = assemble(plan, chunks(text, 5), "stop")
    whole, _ = plan.message(text, "stop")
    assert finish == "tool_calls" and streamed["content"] == "[x] so "
    assert without_ids(streamed) == without_ids(whole)
