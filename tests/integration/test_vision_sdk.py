"""Images in chat through a real ``hfserve serve`` and the official ``openai`` SDK."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.fixtures.tiny_models import TinyModels
from tests.fixtures.tiny_vision import png_data_url
from tests.integration.conftest import StartServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_vision_chat_with_the_openai_sdk(
    start_server: StartServer, tiny_models: TinyModels, tiny_llava: Path
) -> None:
    server = start_server(
        "--max-images-per-request",
        "2",
        models=[f"vlm={tiny_llava}", f"tiny-llama={tiny_models.llama}"],
    )
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    picture = {"type": "image_url", "image_url": {"url": png_data_url(), "detail": "low"}}
    question = {"type": "text", "text": "what colour is this?"}
    messages = [{"role": "user", "content": [picture, question]}]

    reply = client.chat.completions.create(
        model="vlm",
        messages=messages,
        max_tokens=6,
        temperature=0,  # type: ignore[arg-type]
    )
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    assert reply.choices[0].finish_reason in {"stop", "length"}
    assert isinstance(reply.choices[0].message.content, str)

    stream = client.chat.completions.create(
        model="vlm",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0.7,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert any(c.choices and c.choices[0].delta.content for c in chunks)

    corrupt = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="vlm",
            messages=[{"role": "user", "content": [question, corrupt]}],  # type: ignore[list-item]
        )
    assert bad.value.status_code == 400
    assert bad.value.body["param"] == "messages.0.content.1"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as text_only:
        client.chat.completions.create(model="tiny-llama", messages=messages)  # type: ignore[arg-type]
    assert text_only.value.body["param"] == "messages.0.content.0"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(
            model="vlm",
            messages=[{"role": "user", "content": [picture, picture, picture]}],  # type: ignore[list-item]
        )
    assert too_many.value.body["param"] == "messages"  # type: ignore[index]

    # Clients that hang up mid-stream cancel their generations.
    stream_body = {
        "model": "vlm",
        "messages": messages,
        "max_tokens": 200,
        "stream": True,
        "ignore_eos": True,
    }

    async def open_and_drop() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            async with http.stream("POST", "/v1/chat/completions", json=stream_body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if '"content"' in line and '"content":""' not in line:
                        break

    async def drop_all() -> None:
        await asyncio.gather(*(open_and_drop() for _ in range(3)))

    asyncio.run(drop_all())
    deadline = time.monotonic() + 5
    while _active(server.url) > 0:
        assert time.monotonic() < deadline, "vision generations still active after disconnect"
        time.sleep(0.02)
    assert server.proc.poll() is None


def _active(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    match = re.search(r'^hfserve_active_generations\{model="vlm"\} (\S+)$', text, re.M)
    assert match is not None
    return float(match.group(1))


def test_cli_lists_and_inspects_the_vision_skill(tiny_llava: Path) -> None:
    def hfserve(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "hfserve", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return done.stdout

    listed = json.loads(hfserve("skills", "list", "--json"))
    assert "image-text-to-text" in {s["name"] for s in listed}
    shown = json.loads(hfserve("skills", "show", "image-text-to-text", "--json"))
    assert "LlavaForConditionalGeneration" in shown["architectures"]
    assert "/v1/chat/completions" in shown["endpoints"]
    inspected = json.loads(hfserve("models", "inspect", str(tiny_llava), "--no-load", "--json"))
    assert inspected["skill"] == "image-text-to-text"
