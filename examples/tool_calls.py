"""Tool calls with the official OpenAI Python SDK: a call, the tool's answer, a final reply.

The model needs a chat template that renders tools (Qwen2.5-Instruct's does). For a model
whose own template ignores them, give it one::

    hfserve serve --model chat=PATH_OR_ID --chat-template chat=examples/chatml_tools.jinja

(examples/chatml_tools.jinja suits ChatML models such as SmolLM2-Instruct)

then::

    HFSERVE_CHAT_MODEL=chat python examples/tool_calls.py

``tool_choice="required"`` makes hfserve constrain the reply to a call whose arguments
validate against the function's schema, so this works with any model, even a random one.

Environment (all optional):
    HFSERVE_BASE_URL      default http://127.0.0.1:8000/v1
    HFSERVE_API_KEY       a key from ``hfserve keys create`` (any text when auth is off)
    HFSERVE_CHAT_MODEL    default demo-chat
"""

from __future__ import annotations

import enum
import json
import os

import openai
from openai import OpenAI
from pydantic import BaseModel


class Unit(enum.Enum):
    """Temperature units."""

    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class GetWeather(BaseModel):
    """Arguments of the get_weather tool."""

    unit: Unit
    tomorrow: bool


def get_weather(args: GetWeather) -> dict[str, object]:
    """The tool itself (a stand-in for a real weather service)."""
    return {"temperature": 21 if args.unit is Unit.CELSIUS else 70, "sky": "clear"}


def main() -> None:
    """Let the model call get_weather, run it, and send the result back for the answer."""
    client = OpenAI(
        base_url=os.environ.get("HFSERVE_BASE_URL", "http://127.0.0.1:8000/v1"),
        api_key=os.environ.get("HFSERVE_API_KEY", "not-needed-without-auth"),
    )
    model = os.environ.get("HFSERVE_CHAT_MODEL", "demo-chat")
    tools = [openai.pydantic_function_tool(GetWeather, name="get_weather")]
    messages: list = [{"role": "user", "content": "Weather in Oslo?"}]

    # 1. The model must call a tool; streaming shows the call's name, then its arguments.
    with client.chat.completions.stream(
        model=model,
        messages=messages,
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=64,
    ) as stream:
        first = stream.get_final_completion()
    choice = first.choices[0]
    print(f"finish_reason: {choice.finish_reason}")
    call = (choice.message.tool_calls or [])[0]
    args = GetWeather.model_validate_json(call.function.arguments)
    print(f"tool call: {call.function.name}({call.function.arguments}) id={call.id}")

    # 2. Run the tool and send its result back, with the call, for the final answer.
    messages.append(choice.message)
    messages.append(
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(get_weather(args))}
    )
    # No max_tokens: the reply may use what is left of the model's context.
    final = client.chat.completions.create(
        model=model, messages=messages, tools=tools, temperature=0
    )
    print(f"final answer: {final.choices[0].message.content!r}")


if __name__ == "__main__":
    main()
