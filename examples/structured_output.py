"""Structured output with the official OpenAI Python SDK: ``parse()`` and a streamed schema.

hfserve constrains decoding to the schema, so even a tiny random-weights model answers with
JSON that validates. Start a server first (``hfserve serve`` serves the offline demo models),
then::

    python examples/structured_output.py

Environment (all optional):
    HFSERVE_BASE_URL      default http://127.0.0.1:8000/v1
    HFSERVE_API_KEY       a key from ``hfserve keys create`` (any text when auth is off)
    HFSERVE_CHAT_MODEL    default demo-chat
"""

from __future__ import annotations

import enum
import json
import os

from openai import OpenAI
from pydantic import BaseModel


class Mood(enum.Enum):
    """What the reply may say about the mood."""

    HAPPY = "happy"
    SAD = "sad"
    NEUTRAL = "neutral"


class Review(BaseModel):
    """The structured answer: finite fields, so any model fills them in a few tokens."""

    mood: Mood
    recommended: bool


def main() -> None:
    """Ask for a Review with parse(), then stream the same schema as raw JSON."""
    client = OpenAI(
        base_url=os.environ.get("HFSERVE_BASE_URL", "http://127.0.0.1:8000/v1"),
        api_key=os.environ.get("HFSERVE_API_KEY", "not-needed-without-auth"),
    )
    model = os.environ.get("HFSERVE_CHAT_MODEL", "demo-chat")
    messages: list = [{"role": "user", "content": "Review: the pasta was great. Summarise it."}]

    # 1. parse(): the SDK sends the model's strict JSON schema and parses the reply back.
    completion = client.chat.completions.parse(
        model=model, messages=messages, response_format=Review, temperature=0, max_tokens=64
    )
    review = completion.choices[0].message.parsed
    assert review is not None
    print(f"parsed: mood={review.mood.value} recommended={review.recommended}")

    # 2. The same schema as response_format json_schema, streamed: the chunks join into JSON.
    schema = Review.model_json_schema()
    schema["additionalProperties"] = False
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "review", "schema": schema, "strict": True},
        },
        temperature=0,
        max_tokens=64,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    print(f"streamed JSON: {json.loads(text)}")


if __name__ == "__main__":
    main()
