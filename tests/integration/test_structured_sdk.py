"""Structured output and tool calls from the official ``openai`` SDK against ``hfserve serve``.

The server runs the tiny random-weights Llama with a Hermes-style tool template given through
``--chat-template``. Random weights produce valid JSON only when decoding is really
constrained, so the schemas are finite (enums, booleans, bounded integers and arrays).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema_rs
import openai
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tests.fixtures.tiny_models import HERMES_TOOLS_TEMPLATE, TinyModels
from tests.integration.conftest import ServerProcess, spawn_server, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-llama"
MESSAGES: list[Any] = [{"role": "user", "content": "What is the weather in Oslo?"}]


class Unit(enum.Enum):
    """Temperature units."""

    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Forecast(BaseModel):
    """The structured answer parse() asks for."""

    unit: Unit
    sunny: bool
    windy: bool


class WeatherArgs(BaseModel):
    """Arguments of the get_weather tool."""

    unit: Unit
    tomorrow: bool


WEATHER_TOOL = openai.pydantic_function_tool(WeatherArgs, name="get_weather")
NOOP_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "noop",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("structured-server")
    proc = spawn_server(
        workdir,
        [f"{MODEL}={tiny_models.llama}"],
        workdir / "keys.json",
        "--chat-template",
        f"{MODEL}={HERMES_TOOLS_TEMPLATE}",
    )
    try:
        wait_ready(proc)
        yield proc
    finally:
        assert proc.stop() == 0


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_parse_returns_the_pydantic_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL, messages=MESSAGES, response_format=Forecast, temperature=0, max_tokens=60
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, Forecast)
    assert Forecast.model_validate_json(message.content or "") == message.parsed
    assert completion.choices[0].finish_reason == "stop"


def test_json_schema_is_the_same_streamed_and_validates(client: openai.OpenAI) -> None:
    schema = Forecast.model_json_schema()
    schema["additionalProperties"] = False
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "forecast", "schema": schema, "strict": True},
    }
    whole = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format=response_format,
        temperature=0,
        max_tokens=60,
    )
    text = whole.choices[0].message.content or ""
    jsonschema_rs.validate(schema, json.loads(text))
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format=response_format,
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text


def _check_call(call: Any) -> WeatherArgs | None:
    assert call.id.startswith("call_") and call.type == "function"
    if call.function.name == "noop":
        assert json.loads(call.function.arguments) == {}
        return None
    assert call.function.name == "get_weather"
    return WeatherArgs.model_validate_json(call.function.arguments)


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
)
def test_forced_calls_validate_streamed_and_not(client: openai.OpenAI, tool_choice: Any) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "tools": [WEATHER_TOOL, NOOP_TOOL],
        "tool_choice": tool_choice,
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 80,
    }
    whole = client.chat.completions.create(**kwargs)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    assert len(choice.message.tool_calls) == 1
    parsed = _check_call(choice.message.tool_calls[0])
    if isinstance(tool_choice, dict):
        assert parsed is not None

    # The SDK's own stream helper folds the deltas (id and name first, then arguments).
    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0]
    assert streamed.finish_reason == "tool_calls" and streamed.message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == [
        (c.function.name, c.function.arguments) for c in choice.message.tool_calls
    ]


def test_a_tool_round_trip_is_accepted(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    history: list[Any] = [
        *MESSAGES,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sunny": true}'},
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER_TOOL], temperature=0, max_tokens=8
    )
    assert final.choices[0].finish_reason in {"stop", "length", "tool_calls"}
    assert final.usage is not None and final.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]


def test_bad_tools_and_schemas_are_400_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "objectx"}},
            },
        )
    assert bad.value.body["param"] == "response_format"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "missing"}},
        )
    assert bad.value.body["param"] == "tool_choice"  # type: ignore[index]


# --- generated schemas -------------------------------------------------------------------

_leaf = st.one_of(
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(
        st.sampled_from(["a", "b", "yes", "no", "x y"]), min_size=1, max_size=3, unique=True
    ).map(lambda values: {"enum": values}),
    st.integers(-5, 5).map(lambda low: {"type": "integer", "minimum": low, "maximum": low + 3}),
    st.sampled_from([1, "one", True, None]).map(lambda value: {"const": value}),
)


def _object(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(["a", "b", "c"]), children, min_size=1, max_size=3).map(
        lambda props: {
            "type": "object",
            "properties": props,
            "required": sorted(props),
            "additionalProperties": False,
        }
    )


_schemas = st.recursive(
    _leaf,
    lambda children: st.one_of(
        _object(children),
        children.map(lambda item: {"type": "array", "items": item, "minItems": 1, "maxItems": 2}),
        st.lists(children, min_size=2, max_size=2).map(lambda options: {"anyOf": options}),
    ),
    max_leaves=4,
)
# Schemas a grammar engine must refuse: the server answers 400, never 500 or a hang.
_refused = st.sampled_from(
    [
        {"type": "objectx"},
        {"type": "string", "format": "not-a-format"},
        {"$ref": "#/$defs/missing"},
        {"type": "integer", "minimum": 5, "maximum": 1},
    ]
)


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schema=st.one_of(_schemas, _refused))
def test_generated_schemas_validate_or_are_refused(
    server: ServerProcess, schema: dict[str, Any]
) -> None:
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": MESSAGES,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "generated", "schema": schema, "strict": True},
            },
            "temperature": 0,
            "max_tokens": 120,
        },
        timeout=120,
    )
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        event("refused")
        assert response.json()["error"]["param"] == "response_format"
        return
    event("validated")
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema_rs.validate(schema, json.loads(choice["message"]["content"]))
