"""A key pays for the tokens it was sent, however the request ends (issue 14, item 3)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest

from hfserve.core.keystore import KeyStore
from tests.integration.conftest import StartServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A budget the stream alone overdraws: 60 tokens/min refills one token a second, so after
# the hang-up the bucket stays below zero for far longer than the follow-up request takes.
TPM = 60
RECEIVED = 70


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return sum(float(v) for v in found)


def _followup(url: str, key: str) -> httpx.Response:
    return httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})


def test_a_stream_hung_up_midway_is_charged_for_what_it_received(
    start_server: StartServer, tmp_path: Path
) -> None:
    _, key = KeyStore(tmp_path / "keys.json").create("streamer", tpm=TPM)
    server = start_server()
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
    }
    received = 0
    with (
        httpx.Client(base_url=server.url, timeout=60) as client,
        client.stream(
            "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if '"content"' in line and '"content":""' not in line:
                received += 1  # every content chunk carries at least one token
            if received == RECEIVED:
                break  # hang up mid-stream, before [DONE] and its usage
    assert received == RECEIVED
    refused = _followup(server.url, key)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["message"].startswith("rate limit reached for tokens")
    assert int(refused.headers["retry-after"]) >= 1


def test_a_non_streamed_request_hung_up_midway_is_charged(
    start_server: StartServer, tmp_path: Path
) -> None:
    _, key = KeyStore(tmp_path / "keys.json").create("waiter", tpm=TPM)
    server = start_server()
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 200,
        "ignore_eos": True,
        "n": 16,  # 3200 tokens: long enough to hang up while they are generated
    }
    before = _metric(server.url, "hfserve_generation_tokens_total")

    async def hang_up_midway() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            call = asyncio.ensure_future(
                client.post(
                    "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
            )
            deadline = time.monotonic() + 60
            while _metric(server.url, "hfserve_generation_tokens_total") - before < RECEIVED:
                assert not call.done(), "the request ended before it could be hung up"
                assert time.monotonic() < deadline, "no tokens were generated"
                await asyncio.sleep(0.02)
            call.cancel()  # closes the connection: the client hangs up
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(hang_up_midway())
    deadline = time.monotonic() + 10
    while _metric(server.url, "hfserve_client_disconnects_total") < 1:
        assert time.monotonic() < deadline, "the server never saw the hang-up"
        time.sleep(0.02)
    refused = _followup(server.url, key)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["message"].startswith("rate limit reached for tokens")
