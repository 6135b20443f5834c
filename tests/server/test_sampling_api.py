"""Sampling fields through the app: the response cache key and the logprobs shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.server.test_api import CHAT

pytestmark = pytest.mark.slow


def _post(client: TestClient, extra: dict[str, Any]) -> tuple[dict[str, Any], str]:
    response = client.post("/v1/chat/completions", json=CHAT | {"temperature": 0} | extra)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["x-cache"]


@pytest.mark.parametrize(
    "extra",
    [
        {"presence_penalty": 1.0},
        {"frequency_penalty": -1.0},
        {"repetition_penalty": 1.2},
        {"logit_bias": {"5": 3}},
        {"top_k": 3},
        {"min_p": 0.1},
        {"logprobs": True},
        {"logprobs": True, "top_logprobs": 2},
    ],
)
def test_every_sampling_field_is_part_of_the_cache_key(
    client: TestClient, extra: dict[str, Any]
) -> None:
    base = {"max_tokens": 4, "messages": [{"role": "user", "content": f"cache {extra}"}]}
    _, first = _post(client, base)
    _, again = _post(client, base)
    assert (first, again) == ("miss", "hit")
    body, other = _post(client, base | extra)
    assert other == "miss"
    _, repeated = _post(client, base | extra)
    assert repeated == "hit"
    wants_logprobs = bool(extra.get("logprobs"))
    assert (body["choices"][0]["logprobs"] is not None) == wants_logprobs


def test_streamed_completion_logprobs_match_the_whole(client: TestClient) -> None:
    payload = {
        "model": "tiny-llama",
        "prompt": "the quick brown",
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": 1,
        "ignore_eos": True,
    }
    whole = client.post("/v1/completions", json=payload).json()["choices"][0]["logprobs"]
    with client.stream("POST", "/v1/completions", json=payload | {"stream": True}) as response:
        events = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")
        ]
    parts = [c["logprobs"] for e in events for c in e["choices"] if c["logprobs"]]
    assert [t for p in parts for t in p["tokens"]] == whole["tokens"]
    assert [o for p in parts for o in p["text_offset"]] == whole["text_offset"]
    assert len(whole["tokens"]) == 6
    assert all(len(top) <= 2 for top in whole["top_logprobs"])


def test_streamed_chat_logprobs_match_the_whole(client: TestClient) -> None:
    payload = CHAT | {
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
        "ignore_eos": True,
    }
    whole = client.post("/v1/chat/completions", json=payload).json()["choices"][0]["logprobs"]
    with client.stream("POST", "/v1/chat/completions", json=payload | {"stream": True}) as response:
        events = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")
        ]
    parts = [c["logprobs"]["content"] for e in events for c in e["choices"] if c["logprobs"]]
    assert [entry for part in parts for entry in part] == whole["content"]
    assert len(whole["content"]) == 5 and whole["refusal"] is None
