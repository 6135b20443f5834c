"""Hand-written malformed requests: every one is a 4xx in the OpenAI shape, never a 5xx.

Extends ``tests/server/test_api.py`` (which covers bad JSON, empty bodies, text/plain, 5000-deep
arrays, bad sampling values and a few embeddings inputs) with wrong types, huge numbers,
zero/negative lengths on every endpoint, oversized messages, invalid UTF-8 inside valid JSON,
deep nesting inside an accepted field, more content types, and prompts past the context.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.hardening.conftest import error_shape

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello world"}]}
COMP = {"model": "tiny-llama", "prompt": "hello", "max_tokens": 2}
EMB = {"model": "tiny-bert", "input": "hello"}
CLS = {"model": "tiny-cls", "input": "hello"}

CASES: list[tuple[str, str, Any, int, str | None]] = [
    # wrong types
    ("chat", "/v1/chat/completions", CHAT | {"model": 123}, 400, "model"),
    # pydantic lax mode coerces numeric strings and "yes"/"no" (as many OpenAI servers do)
    ("chat", "/v1/chat/completions", CHAT | {"max_tokens": "2"}, 200, None),
    ("chat", "/v1/chat/completions", CHAT | {"max_tokens": 1.5}, 400, "max_tokens"),
    ("chat", "/v1/chat/completions", CHAT | {"temperature": "hot"}, 400, "temperature"),
    ("chat", "/v1/chat/completions", CHAT | {"stream": "no", "max_tokens": 1}, 200, None),
    ("chat", "/v1/chat/completions", CHAT | {"stop": 5}, 400, "stop"),
    ("chat", "/v1/chat/completions", {"model": "tiny-llama", "messages": [{"role": "user", "content": 5}]}, 400, None),
    ("chat", "/v1/chat/completions", {"model": "tiny-llama", "messages": [None]}, 400, "messages.0"),
    ("chat", "/v1/chat/completions", {"model": "tiny-llama", "messages": [{"content": "x"}]}, 400, None),
    ("comp", "/v1/completions", COMP | {"prompt": {"text": "x"}}, 400, "prompt"),
    ("comp", "/v1/completions", COMP | {"prompt": [1.5, 2]}, 400, "prompt"),
    ("comp", "/v1/completions", COMP | {"prompt": [[1, "a"]]}, 400, "prompt"),
    ("emb", "/v1/embeddings", EMB | {"input": 5}, 400, "input"),
    ("emb", "/v1/embeddings", EMB | {"input": [[1, 2], "mixed"]}, 400, "input"),
    ("emb", "/v1/embeddings", EMB | {"encoding_format": "int8"}, 400, "encoding_format"),
    ("cls", "/v1/classifications", CLS | {"input": [1, 2]}, 400, "input"),
    ("cls", "/v1/classifications", CLS | {"top_k": "all"}, 400, "top_k"),
    # huge numbers
    ("chat", "/v1/chat/completions", CHAT | {"max_tokens": 10**30}, 400, "max_tokens"),
    ("chat", "/v1/chat/completions", CHAT | {"max_completion_tokens": 10**30}, 400, "max_completion_tokens"),
    ("chat", "/v1/chat/completions", CHAT | {"n": 10**12}, 400, "n"),
    ("chat", "/v1/chat/completions", CHAT | {"temperature": 1e308}, 400, "temperature"),
    ("comp", "/v1/completions", COMP | {"prompt": [2**64]}, 400, "prompt"),
    ("comp", "/v1/completions", COMP | {"prompt": [-1]}, 400, "prompt"),
    ("emb", "/v1/embeddings", EMB | {"input": [[2**63]]}, 400, "input"),
    ("emb", "/v1/embeddings", EMB | {"input": [[-5]]}, 400, "input"),
    ("cls", "/v1/classifications", CLS | {"top_k": 10**20}, 200, None),
    # zero / negative lengths on every generation field
    ("comp", "/v1/completions", COMP | {"max_tokens": 0}, 400, "max_tokens"),
    ("comp", "/v1/completions", COMP | {"max_tokens": -7}, 400, "max_tokens"),
    ("chat", "/v1/chat/completions", CHAT | {"max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ("chat", "/v1/chat/completions", CHAT | {"min_tokens": -1}, 400, "min_tokens"),
    ("cls", "/v1/classifications", CLS | {"top_k": 0}, 400, "top_k"),
    ("emb", "/v1/embeddings", EMB | {"dimensions": 0}, 400, "dimensions"),
    # empty and oversized messages / inputs
    ("chat", "/v1/chat/completions", {"model": "tiny-llama", "messages": [{"role": "user", "content": ""}], "max_tokens": 1}, 200, None),
    ("chat", "/v1/chat/completions", {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}] * 2000}, 400, "messages"),
    ("comp", "/v1/completions", COMP | {"prompt": []}, 400, "prompt"),
    ("comp", "/v1/completions", COMP | {"prompt": [[]]}, 400, "prompt"),
    ("cls", "/v1/classifications", CLS | {"input": []}, 400, "input"),
    ("emb", "/v1/embeddings", EMB | {"model": ""}, 400, "model"),
    # not an object at the top level
    ("chat", "/v1/chat/completions", 42, 400, None),
    ("chat", "/v1/chat/completions", None, 400, None),
    ("emb", "/v1/embeddings", "hello", 400, None),
    # unknown fields anywhere are accepted and ignored
    ("comp", "/v1/completions", COMP | {"best_of_future": 3}, 200, None),
    ("emb", "/v1/embeddings", EMB | {"extra": {"deep": [1, 2, {"x": None}]}}, 200, None),
    ("cls", "/v1/classifications", CLS | {"x-unknown": True}, 200, None),
    ("chat", "/v1/chat/completions", {"model": "tiny-llama", "max_tokens": 1, "messages": [{"role": "user", "content": "x", "audio": None}]}, 200, None),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "path", "payload", "status", "param"), CASES)
def test_malformed_json_bodies(
    client: TestClient, kind: str, path: str, payload: Any, status: int, param: str | None
) -> None:
    response = client.post(path, json=payload)
    assert response.status_code == status, response.text
    if status >= 400:
        err = error_shape(response.json())
        assert err["type"] == "invalid_request_error"
        if param is not None:
            # Union fields name the member pydantic tried last ("prompt.str"); the field leads.
            assert err["param"] == param or err["param"].startswith(param + "."), err


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "tiny-bert", "input": "\xc3\x28"}',  # invalid 2-byte sequence inside a string
        b'{"model": "tiny-bert", "input": "\xed\xa0\x80"}',  # UTF-8-encoded surrogate
        b'\xef\xbb\xbf{"model": "tiny-bert", "input": "x"}',  # BOM: tolerated or refused, not 500
        b'{"model": "tiny-bert", "input": "\\ud800"}',  # lone surrogate escape
        b'{"model": "tiny-bert", "input": NaN}',
        b'{"model": "tiny-llama", "prompt": "x", "max_tokens": Infinity}',
        b'{"model": "tiny-llama", "prompt": "x", "temperature": NaN}',
        b'{"model": "tiny-bert", "input": "x", "input": 5}',  # duplicate keys: the last one wins
        b'{"model": "tiny-bert", "input": "x"} trailing',
        b'{"model": "tiny-bert", "input": "x", "extra": ' + b"[" * 60 + b"]" * 60 + b"}",
        b'{"model": "tiny-bert", "input": "x", "extra": ' + b"[" * 100 + b"]" * 100 + b"}",
        b'{"model": "tiny-bert", "input": "x", "extra": ' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}",
        b"\x00\x01\x02",
    ],
)  # fmt: skip
def test_raw_bodies_never_crash(client: TestClient, raw: bytes) -> None:
    path = "/v1/completions" if b"tiny-llama" in raw else "/v1/embeddings"
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        error_shape(response.json())


def test_regression_lone_surrogate_escape_was_a_500(client: TestClient) -> None:
    """A JSON "\\ud800" escape decoded to text no UTF-8 encoder accepts and crashed the route."""
    nan_temp = b'{"model": "tiny-llama", "prompt": "x", "max_tokens": 2, "temperature": NaN}'
    refused = client.post(
        "/v1/completions", content=nan_temp, headers={"content-type": "application/json"}
    )
    assert refused.status_code == 400 and error_shape(refused.json())["param"] == "temperature"
    surrogate = b'{"model": "tiny-bert", "input": "\\ud800"}'
    response = client.post(
        "/v1/embeddings", content=surrogate, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "surrogate" in error_shape(response.json())["message"]
    emoji = b'{"model": "tiny-bert", "input": "\\ud83d\\ude00 paired escapes are fine"}'
    ok = client.post("/v1/embeddings", content=emoji, headers={"content-type": "application/json"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    "ctype",
    [
        "multipart/form-data; boundary=xyz",
        "application/x-www-form-urlencoded",
        "application/xml",
        "text/html; charset=utf-8",
        "application/octet-stream",
    ],
)
def test_wrong_content_types(client: TestClient, ctype: str) -> None:
    response = client.post(
        "/v1/chat/completions", content=json.dumps(CHAT).encode(), headers={"content-type": ctype}
    )
    err = error_shape(response.json())
    assert response.status_code == 400 and "application/json" in err["message"]


def test_json_variants_of_content_type_are_accepted(client: TestClient) -> None:
    for ctype in (
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "APPLICATION/JSON",
    ):
        response = client.post(
            "/v1/chat/completions",
            content=json.dumps(CHAT | {"max_tokens": 1}).encode(),
            headers={"content-type": ctype},
        )
        assert response.status_code == 200, (ctype, response.text)


def test_prompt_past_the_context_is_a_clear_400_naming_the_limit(client: TestClient) -> None:
    model = client.app.state.hfserve.loader.cache.peek("tiny-llama")  # type: ignore[attr-defined]
    context = model.max_input_tokens
    too_long = {"model": "tiny-llama", "prompt": [5] * (context + 10), "max_tokens": 1}
    err = error_shape((r := client.post("/v1/completions", json=too_long)).json())
    assert r.status_code == 400 and err["code"] == "context_length_exceeded"
    assert f"{context} tokens" in err["message"] and f"{context + 10} tokens" in err["message"]
    # Fits alone but not with the completion asked for: still a 400, never a silent truncation.
    near = {"model": "tiny-llama", "prompt": [5] * (context - 2), "max_tokens": 5}
    err = error_shape((r := client.post("/v1/completions", json=near)).json())
    assert r.status_code == 400 and err["param"] == "max_tokens"
    assert f"maximum context length is {context} tokens" in err["message"]
    chat = CHAT | {"messages": [{"role": "user", "content": "hello " * (context * 2)}]}
    err = error_shape((r := client.post("/v1/chat/completions", json=chat)).json())
    assert r.status_code == 400 and str(context) in err["message"] and err["param"] == "messages"


def test_oversized_message_is_refused_by_the_body_limit(make_client: Any) -> None:
    client: TestClient = make_client(max_body_bytes=64 * 1024)
    huge = CHAT | {"messages": [{"role": "user", "content": "x" * (100 * 1024)}]}
    response = client.post("/v1/chat/completions", json=huge)
    assert response.status_code == 413
    assert error_shape(response.json())["code"] == "request_too_large"
