"""A real ``hfserve serve`` process driven by the official, unmodified ``openai`` SDK."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from hfserve.core.keystore import KeyStore
from tests.integration.conftest import StartServer

pytestmark = pytest.mark.integration


def sdk(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_sdk_end_to_end(start_server: StartServer, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    store = KeyStore(keys)
    _, key = store.create("sdk", rpm=1000)
    _, small = store.create("small", rpm=2)
    server = start_server(keys_file=keys)
    client = sdk(server.url, key)

    assert {m.id for m in client.models.list()} == {"tiny-llama", "tiny-bert", "tiny-cls"}

    chat = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        temperature=0,
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.completion_tokens <= 5

    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(text, str)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6

    completion = client.completions.create(model="tiny-llama", prompt="the quick", max_tokens=3)
    assert completion.choices[0].finish_reason in {"stop", "length"}

    floats = client.embeddings.create(model="tiny-bert", input=["a", "b"], encoding_format="float")
    b64 = client.embeddings.create(model="tiny-bert", input=["a", "b"])  # the SDK asks for base64
    assert len(floats.data) == 2 and len(floats.data[0].embedding) == 32
    assert b64.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)

    with pytest.raises(openai.AuthenticationError):
        sdk(server.url, "hf-not-a-key").models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]

    limited = sdk(server.url, small)
    limited.models.list()
    limited.models.list()
    with pytest.raises(openai.RateLimitError):
        limited.models.list()
    assert server.stop() == 0


def test_revocation_through_cli_takes_effect_within_a_second(
    start_server: StartServer, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    record, key = KeyStore(keys).create("to-revoke")
    server = start_server(keys_file=keys)
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(server.url + "/v1/models", headers=headers).status_code == 200
    subprocess.run(
        [sys.executable, "-m", "hfserve", "keys", "revoke", record.id, "--keys-file", str(keys)],
        check=True,
        capture_output=True,
    )
    revoked_at = time.monotonic()
    while httpx.get(server.url + "/v1/models", headers=headers).status_code != 401:
        assert time.monotonic() - revoked_at < 1.0, "revocation not seen within 1 s"
        time.sleep(0.02)
    assert key not in server.log()
